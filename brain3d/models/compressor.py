"""Token compression to K visual tokens.

`seq_pool` (the paper): AdaptiveAvgPool1d over the z-major token sequence. Each output token averages a
run of consecutive tokens, i.e. whole slices, so the left and right halves of a slice are mixed.
`grid_pool` (this project's ablation): AdaptiveAvgPool3d over the (D', h, w) token grid to e.g. 2x4x4,
so each visual token covers one region and left/right survive as token positions.
`perceiver` (what the MedGemma-style model card describes, not what the paper's code does): a 2-layer
Perceiver resampler, K learned latent queries cross-attending to the token grid. Attention is blind to token
order, so a 3D Fourier position code of each token's (z, y, x) grid position is added before it: without it a
mirrored volume would give the same K tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

COMPRESSORS = ("seq_pool", "grid_pool", "perceiver")


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


def grid_positions(grid: tuple[int, int, int], n_freqs: int, device=None) -> torch.Tensor:
    """(D*h*w, 6 * n_freqs) Fourier features of each grid cell's (z, y, x), each coordinate scaled to [-1, 1],
    z-major like the token sequence: sin and cos of pi * 2^k * coordinate, k < n_freqs. Defined at any grid
    size, so one resampler serves the demo's and the paper's token grids."""
    axes = [
        torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device) for n in grid
    ]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
    angles = coords[..., None] * (math.pi * 2.0 ** torch.arange(n_freqs, device=device))  # (N, 3, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, 6F)


class PerceiverLayer(nn.Module):
    """Flamingo's resampler block (pre-norm): the latents attend to [tokens; latents], then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm_tokens, self.norm_latents = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
        )

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_tokens(tokens), q], dim=1)
        latents = latents + self.attention(q, kv, kv, need_weights=False)[0]
        return latents + self.mlp(latents)


class PerceiverResampler(nn.Module):
    """K learned latent queries, `layers` PerceiverLayers over the tokens plus their position code, a final
    LayerNorm: (B, N, C) -> (B, K, C). Heads: the largest of 16, 8, 4, 2, 1 that divides the width."""

    def __init__(self, n_tokens: int, width: int, layers: int = 2, n_freqs: int = 8):
        super().__init__()
        self.n_tokens, self.n_freqs = n_tokens, n_freqs
        heads = next(h for h in (16, 8, 4, 2, 1) if width % h == 0)
        self.latents = nn.Parameter(0.02 * torch.randn(n_tokens, width))
        self.position = nn.Linear(6 * n_freqs, width)
        self.layers = nn.ModuleList(PerceiverLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pos = grid_positions(grid, self.n_freqs, tokens.device).to(tokens.dtype)
        tokens = tokens + self.position(pos)  # (B, N, C) + (N, C)
        latents = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, tokens)
        return self.norm(latents)


def build_compressor(kind: str, *, n_tokens: int, grid: tuple[int, int, int], width: int) -> nn.Module:
    """`model.compressor` with `model.n_tokens` tokens (`model.grid` for grid_pool, whose product must match;
    `width`, the encoder's, for the perceiver's weights)."""
    if kind == "perceiver":
        return PerceiverResampler(n_tokens, width)
    if kind == "seq_pool":
        return SeqPool(n_tokens)
    if kind == "grid_pool":
        pool = GridPool(tuple(grid))
        if pool.n_tokens != n_tokens:
            raise ValueError(
                f"model.grid {tuple(grid)} gives {pool.n_tokens} tokens, model.n_tokens is {n_tokens}"
            )
        return pool
    raise ValueError(f"unknown compressor '{kind}'; choose one of {COMPRESSORS}")
