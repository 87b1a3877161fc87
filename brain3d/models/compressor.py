"""Token compression to K visual tokens.

`seq_pool` (the paper): AdaptiveAvgPool1d over the z-major token sequence. Each output token averages a
run of consecutive tokens, i.e. whole slices, so the left and right halves of a slice are mixed.
`grid_pool` (this project's ablation): AdaptiveAvgPool3d over the (D', h, w) token grid to e.g. 2x4x4,
so each visual token covers one region and left/right survive as token positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COMPRESSORS = ("seq_pool", "grid_pool")


class SeqPool(nn.Module):
    def __init__(self, n_tokens: int):
        super().__init__()
        self.n_tokens = n_tokens

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        # (B, N, C) -> (B, K, C)
        return F.adaptive_avg_pool1d(tokens.transpose(1, 2), self.n_tokens).transpose(1, 2)


class GridPool(nn.Module):
    def __init__(self, out_grid: tuple[int, int, int]):
        super().__init__()
        self.out_grid = tuple(out_grid)
        self.n_tokens = out_grid[0] * out_grid[1] * out_grid[2]

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b, n, c = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, c, *grid)  # (B, C, D', h, w)
        x = F.adaptive_avg_pool3d(x, self.out_grid)  # (B, C, gd, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, K, C), z-major


def build_compressor(kind: str, *, n_tokens: int, grid: tuple[int, int, int]) -> nn.Module:
    """`model.compressor` with `model.n_tokens` tokens (`model.grid` for grid_pool, whose product must match)."""
    if kind == "seq_pool":
        return SeqPool(n_tokens)
    if kind == "grid_pool":
        pool = GridPool(tuple(grid))
        if pool.n_tokens != n_tokens:
            raise ValueError(f"model.grid {tuple(grid)} gives {pool.n_tokens} tokens, model.n_tokens is {n_tokens}")
        return pool
    raise ValueError(f"unknown compressor '{kind}'; choose one of {COMPRESSORS}")
