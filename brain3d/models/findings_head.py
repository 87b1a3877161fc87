"""The findings head: what the K visual tokens say a report should assert, read by a linear layer.

Phase 1 trains it beside the contrastive loss (`phase1.findings_weight`), on targets the negation-aware
extractor reads from the training reports (brain3d.data.findings): presence, side, anatomy, pathology. A
trained model carries it (the card's `findings`), and findings-consistent decoding (`generate.select:
findings`, Brain3D.generate) keeps the sampled report whose findings agree with it.
"""

from __future__ import annotations

import torch
from torch import nn

from brain3d.data.findings import ANATOMY, PATHOLOGY, SIDES

ONE_SIDED = ("left", "right", "bilateral")  # the sides a report of a lesion can name (SIDES without "none")


class FindingsHead(nn.Module):
    """(B, K, Cv) visual tokens -> findings logits, reading each token at its position: a linear layer over the
    flattened, per-token normalised tokens (no mean over K, which would average left and right away)."""

    SIZES = {"presence": 1, "side": len(SIDES), "anatomy": len(ANATOMY), "pathology": len(PATHOLOGY)}

    def __init__(self, n_tokens: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(n_tokens * width, sum(self.SIZES.values()))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(
            self.norm(tokens.to(self.linear.weight.dtype)).flatten(1)
        )  # (B, K*Cv) -> (B, 19)
        return dict(zip(self.SIZES, logits.split(list(self.SIZES.values()), dim=1)))

    @torch.no_grad()
    def decide(self, tokens: torch.Tensor) -> list[str]:
        """What each volume's report should assert about a lesion: "none" (presence p <= .5), else the most
        probable of left / right / bilateral."""
        logits = self(tokens)
        present = torch.sigmoid(logits["presence"][:, 0].float()) > 0.5
        one_sided = logits["side"][:, [SIDES.index(s) for s in ONE_SIDED]].argmax(1)
        return [ONE_SIDED[int(s)] if p else "none" for p, s in zip(present, one_sided)]
