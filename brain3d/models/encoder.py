"""The 3D vision encoder: a pretrained 2D SigLIP vision transformer inflated to volumes (SPEC §4).

Patch embedding Conv2d(3->C, k=p, s=p) becomes Conv3d(1->C, k=(kd,p,p), s=(sd,p,p), pad=(pd,0,0)). The RGB
kernels W (C, 3, p, p) become one grey kernel by `model.inflation`:
- `mean` (the paper's): mean_c(W) / kd replicated over the kd depth frames. A grey volume then gives one
  third of the patch response the 2D model saw for the same grey image replicated to RGB, so the position
  embeddings dominate the tokens.
- `sum`: sum_c(W) / kd replicated: a volume constant in depth gives exactly the 2D response to its grey
  slice replicated to RGB (the scale the 2D model was pretrained at).
- `center` (the model card's centre-frame initialisation): sum_c(W) at frame kd // 2, zeros elsewhere:
  every token starts as the 2D response to one slice (RGB-replicated), whatever its neighbours hold.
Positions are decomposed,
P3D(z, y, x) = P_depth(z) (learnable, zero at start) + P_spatial(y, x) (the pretrained 2D grid,
interpolated to the volume's in-plane grid and broadcast over depth).

`model.variant` (VARIANTS) says what reaches the patch embedding and which positions are added:
- `paper` (this project's): radiological slices, SigLIP's pixel normalisation, P3D above;
- `reference` (the authors' released BrainGemma3D, SPEC §4b): the [0, 1] volume as it is (no flip, no
  normalisation) and a fixed code instead of P3D (`ReferencePositionCode`); the 2D position table is unused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from brain3d.data.views import radiological

#: SigLIP's pixel normalisation (MedSigLIP's and Gemma 3's vision tower's): [0, 1] -> [-1, 1]. The stand-in
#: pretraining, the processors saved with the stand-ins and the 3D encoder all read it: they cannot disagree.
PIXEL_MEAN = PIXEL_STD = 0.5


def normalise_pixels(x):
    """Intensities in [0, 1] (a tensor) as the SigLIP vision tower expects them."""
    return (x - PIXEL_MEAN) / PIXEL_STD


def vision_transformer(model: nn.Module) -> nn.Module:
    """The module holding embeddings/encoder/post_layernorm in a SigLIP vision or image-text model."""
    for candidate in (model, getattr(model, "vision_model", None)):
        if candidate is not None and hasattr(candidate, "embeddings") and hasattr(candidate, "encoder"):
            return candidate
    raise TypeError(f"{type(model).__name__} is not a SigLIP vision model")


def token_grid(
    volume_shape: tuple[int, int, int], patch: int, kd: int, depth_stride: int, depth_pad: int
) -> tuple[int, int, int]:
    """(D', h, w) token grid of the inflated patch embedding, e.g. (65, 9, 9) for 64x128x128, p=14, kd=2."""
    d, h, w = volume_shape
    return ((d + 2 * depth_pad - kd) // depth_stride + 1, h // patch, w // patch)


INFLATIONS = ("mean", "sum", "center")
VARIANTS = ("paper", "reference")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"model.variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    return variant


def inflate_kernel(w2d: torch.Tensor, kd: int, inflation: str) -> torch.Tensor:
    """(C, 3, p, q) RGB patch kernel -> (C, 1, kd, p, q) grey depth kernel; `inflation` as in the module doc."""
    if inflation not in INFLATIONS:
        raise ValueError(f"model.inflation must be one of {', '.join(INFLATIONS)}, not {inflation!r}")
    grey = (
        w2d.mean(dim=1, keepdim=True) if inflation == "mean" else w2d.sum(dim=1, keepdim=True)
    )  # (C, 1, p, q)
    if inflation == "center":
        w3d = torch.zeros_like(grey).unsqueeze(2).repeat(1, 1, kd, 1, 1)  # (C, 1, kd, p, q)
        w3d[:, :, kd // 2] = grey
        return w3d
    return grey.unsqueeze(2).repeat(1, 1, kd, 1, 1) / kd  # (C, 1, kd, p, q)


class InflatedPatchEmbed(nn.Module):
    """Conv3d patch embedding inflated from a pretrained Conv2d. (B, 1, D, H, W) -> (B, C, D', h, w).
    `kd`, `depth_stride`, `depth_pad`, `inflation`: the `model` params."""

    def __init__(self, conv2d: nn.Conv2d, *, kd: int, depth_stride: int, depth_pad: int, inflation: str):
        super().__init__()
        c_out, _, p, q = conv2d.weight.shape
        w3d = inflate_kernel(conv2d.weight.detach(), kd, inflation)  # before building: a bad name fails first
        # in the backbone's dtype: a float32 patch embedding in front of bf16 layers fails outside autocast
        self.proj = nn.Conv3d(
            1,
            c_out,
            kernel_size=(kd, p, q),
            stride=(depth_stride, p, q),
            padding=(depth_pad, 0, 0),
            bias=conv2d.bias is not None,
            dtype=conv2d.weight.dtype,
        )
        with torch.no_grad():
            self.proj.weight.copy_(w3d)
            if conv2d.bias is not None:
                self.proj.bias.copy_(conv2d.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PositionalEmbedding3D(nn.Module):
    """P_depth(z) + P_spatial(y, x); input/output (B, D', h, w, C)."""

    def __init__(self, pos2d: torch.Tensor, grid: tuple[int, int, int]):
        super().__init__()
        n, c = pos2d.shape
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f"2D position table of {n} entries is not a square grid")
        d, h, w = grid
        table = pos2d.detach().float().reshape(1, side, side, c).permute(0, 3, 1, 2)  # (1, C, s, s)
        if (side, side) != (h, w):
            table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        self.spatial = nn.Parameter(table[0].permute(1, 2, 0).contiguous().to(pos2d.dtype))  # (h, w, C)
        self.depth = nn.Parameter(torch.zeros(d, c, dtype=pos2d.dtype))  # (D', C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.depth[None, :, None, None, :] + self.spatial[None, None]


class ReferencePositionCode(nn.Module):
    """The released model's fixed position code (SPEC §4b); input/output (B, D', h, w, C). Every channel gets
    linspace(-1, 1, D')[z]; channel 0 also linspace(-1, 1, h)[y], channel 1 also linspace(-1, 1, w)[x]. Made in
    float32, added in the tokens' dtype. Nothing learned, nothing saved."""

    def __init__(self, grid: tuple[int, int, int], width: int):
        super().__init__()
        d, h, w = grid
        code = torch.linspace(-1.0, 1.0, d)[:, None, None, None].repeat(1, h, w, width)  # (D', h, w, C)
        code[..., 0] += torch.linspace(-1.0, 1.0, h)[None, :, None]
        code[..., 1] += torch.linspace(-1.0, 1.0, w)[None, None, :]
        self.register_buffer("code", code, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.code.to(x.dtype)


class VolumeEncoder(nn.Module):
    """Inflated SigLIP: (B, 1, D, H, W) in [0, 1] -> tokens (B, D'*h*w, C) in z-major order.

    Slices are fed in the radiological view (`brain3d.data.views`), so token column 0 is the subject's
    right; laterality is a property of the token grid either way. `kd`, `depth_stride`, `depth_pad`,
    `inflation`, `variant`: the `model` params (no defaults: `ModelConfig` carries them); the `reference`
    variant feeds the volume as it is and adds the fixed ReferencePositionCode (module docstring).
    """

    def __init__(
        self,
        vision: nn.Module,
        volume_shape: tuple[int, int, int],
        *,
        kd: int,
        depth_stride: int,
        depth_pad: int,
        inflation: str,
        variant: str,
    ):
        super().__init__()
        self.variant = check_variant(variant)
        vt = vision_transformer(vision)
        conv = vt.embeddings.patch_embedding
        self.patch_size = conv.kernel_size[0]
        self.grid = token_grid(volume_shape, self.patch_size, kd, depth_stride, depth_pad)
        self.volume_shape = tuple(volume_shape)
        self.patch_embed = InflatedPatchEmbed(
            conv, kd=kd, depth_stride=depth_stride, depth_pad=depth_pad, inflation=inflation
        )
        self.pos = (
            PositionalEmbedding3D(vt.embeddings.position_embedding.weight, self.grid)
            if variant == "paper"
            else ReferencePositionCode(self.grid, conv.out_channels)
        )
        self.encoder = vt.encoder
        self.post_layernorm = vt.post_layernorm
        self.hidden_size = conv.out_channels

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.dim() == 4:
            volume = volume.unsqueeze(1)
        x = volume
        if self.variant == "paper":
            x = normalise_pixels(radiological(x))  # slices as the 2D backbone was pretrained on them
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))  # (B, C, D', h, w)
        x = self.pos(x.permute(0, 2, 3, 4, 1))  # (B, D', h, w, C)
        x = x.flatten(1, 3)  # (B, N = D'*h*w, C), z-major
        x = self.encoder(inputs_embeds=x).last_hidden_state
        return self.post_layernorm(x)
