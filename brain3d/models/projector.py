"""Projector from the vision width to the LM width, with the learnable scalar gate `vis_scale`.

Z_cond = vis_scale * MLP(z) * embed_scale. Gemma multiplies its token embeddings by sqrt(hidden) inside
the embedding layer; soft tokens given as inputs_embeds skip that layer, so the same factor is applied
here, and `calibrate` sets vis_scale once so that the visual tokens start at the RMS of the text tokens.
(The authors' released model, the `reference` variant, applies no such factor: Brain3D builds its projector
with embed_scale 1.) vis_scale is applied in the MLP's dtype.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, vision_width: int, lm_width: int, embed_scale: float = 1.0):
        super().__init__()
        self.fc1 = nn.Linear(vision_width, lm_width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(lm_width, lm_width)
        self.vis_scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("embed_scale", torch.tensor(float(embed_scale)), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, K, Cv) -> (B, K, Cl)
        h = self.fc2(self.act(self.fc1(z.to(self.fc1.weight.dtype))))
        return self.vis_scale.to(h.dtype) * h * self.embed_scale

    @torch.no_grad()
    def calibrate(self, z: torch.Tensor, target_rms: float) -> float:
        """Set vis_scale so that the projected `z` has RMS `target_rms`; returns the new value."""
        self.vis_scale.fill_(1.0)
        rms = self(z).float().pow(2).mean().sqrt().item()
        self.vis_scale.fill_(target_rms / max(rms, 1e-8))
        return float(self.vis_scale)
