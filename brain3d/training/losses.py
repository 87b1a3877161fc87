"""Symmetric InfoNCE (phase 1 contrastive grounding), gathered across processes once, here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process, keeping this process's gradient (no-op when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class InfoNCE(nn.Module):
    """Symmetric InfoNCE with a fixed temperature (`phase1.temperature`; no default). A batch of one has a
    loss of exactly zero (the reference implementation's phase-1 no-op), so it is refused."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image, text = _gather(F.normalize(image, dim=-1)), _gather(F.normalize(text, dim=-1))
        n = image.shape[0]
        if n < 2:
            raise ValueError("InfoNCE needs at least 2 samples per (global) batch: with 1 the loss is 0")
        logits = image @ text.T / self.temperature  # (N, N)
        targets = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
