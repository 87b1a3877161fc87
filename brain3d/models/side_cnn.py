"""A small supervised 3D CNN that reads a lesion's presence and side (left, right, bilateral, none) from the volume.

Two uses. Trained on the train split only, it is the ceiling for the laterality probes
(interpretability/probe.py): the linear probes say how much side information the frozen visual tokens carry,
this network how much the volumes allow when a model is trained for exactly that question. Trained in phase 1
on the train split and the corpus (their ground-truth sides), it is the model's side detector
(`detector` params; `Brain3D.detector`): findings-consistent decoding with `generate.guide: detector` keeps
the sampled report that agrees with it instead of with the token read-out (issue 31, a departure from the paper).

Each half of the volume (W is the subject's left -> right axis) goes through the same input max-pooling and
three conv blocks, the right half mirrored so that both are read as "one hemisphere", and the opposite half,
mirrored onto it, as a second channel (a lesion stands out against the same place of the other hemisphere). The
pooled features of the two halves meet in a head that is mirror-consistent by construction: mirroring the
volume swaps the "left" and "right" logits and leaves "bilateral" and "none" unchanged. Training mirrors
each volume with p = 0.5 and swaps its left/right label; seeds fix the weights, the data order and the flips.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from brain3d import config
from brain3d.data.findings import SIDES as CLASSES  # left, right, bilateral, none: the probe's classes

#: The class index of each class after mirroring along W.
_SWAP = torch.tensor([CLASSES.index(c) for c in ("right", "left", "bilateral", "none")])


@dataclass
class CnnSettings:
    """The `lime.cnn` and `detector` params sections; no defaults: params.yaml holds the values."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    channels: list[int]
    downsample: int  # max-pool the input by this factor first (small bright lesions survive): the CPU budget

    @classmethod
    def from_params(cls, section: dict) -> CnnSettings:
        return config.from_section(cls, section)


class LateralityCNN(nn.Module):
    """(B, 1, D, H, W) volume -> (B, 4) logits over CLASSES (left, right, bilateral, none)."""

    def __init__(self, channels: Sequence[int], downsample: int):
        super().__init__()
        blocks, c_in = [nn.MaxPool3d(downsample, ceil_mode=True)], 2  # a half and its mirrored counterpart
        for c in channels:
            blocks += [
                nn.Conv3d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm3d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(2, ceil_mode=True),
            ]
            c_in = c
        self.trunk = nn.Sequential(*blocks)
        features = 2 * c_in  # max- and mean-pooled
        self.own = nn.Linear(features, 1)  # a side's logit from its own half ...
        self.other = nn.Linear(features, 1, bias=False)  # ... and from the opposite half
        self.both = nn.Linear(2 * features, 2)  # bilateral, none: from symmetric functions of the two halves

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled trunk features of the left half and of the mirrored right half, each read with the other
        half (mirrored onto it) as a second channel, so a lesion stands out against the same place of the
        other hemisphere: (B, F) each."""
        half = x.shape[-1] // 2
        left, right = x[..., :half], x[..., x.shape[-1] - half :].flip(-1)  # (B, 1, D, H, W//2) each
        pairs = torch.cat([torch.cat([left, right], 1), torch.cat([right, left], 1)])  # (2B, 2, D, H, W//2)
        maps = self.trunk(pairs)  # (2B, C, d, h, w)
        pooled = torch.cat([maps.amax((2, 3, 4)), maps.mean((2, 3, 4))], 1)  # (2B, F)
        return pooled[: len(x)], pooled[len(x) :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.halves(x)
        sides = [self.own(left) + self.other(right), self.own(right) + self.other(left)]  # (B, 1) each
        rest = self.both(torch.cat([left + right, (left - right).abs()], 1))  # (B, 2)
        return torch.cat([*sides, rest], 1)  # (B, 4) in CLASSES order


def _stack(volumes: Sequence[np.ndarray]) -> torch.Tensor:
    x = np.stack([np.asarray(v, dtype=np.float32) for v in volumes])  # (N, D, H, W)
    return torch.from_numpy(x)[:, None]  # (N, 1, D, H, W)


def train_cnn(
    volumes: Sequence[np.ndarray],
    labels: Sequence[str],
    settings: CnnSettings,
    seed: int,
    device: str = "cpu",
    log: Callable[[dict, int], None] | None = None,
) -> LateralityCNN:
    """Fit a LateralityCNN for `settings.epochs` epochs, AdamW with a cosine decay (no early stopping: nothing
    but the training subjects is seen). `log(metrics, epoch)` gets the mean training loss and the seconds
    so far."""
    x = _stack(volumes)
    y = torch.tensor([CLASSES.index(label) for label in labels])
    torch.manual_seed(seed)
    model = LateralityCNN(settings.channels, settings.downsample).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * -(-len(x) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)  # lr -> 0: the last epoch settles
    g = torch.Generator().manual_seed(seed)  # data order and flips
    t0 = time.perf_counter()
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        model.train()
        for epoch in range(1, settings.epochs + 1):
            order, flips = torch.randperm(len(x), generator=g), torch.rand(len(x), generator=g) < 0.5
            total = 0.0
            for idx in order.split(settings.batch_size):
                xb, yb, fb = x[idx], y[idx], flips[idx]
                xb = torch.where(fb[:, None, None, None, None], xb.flip(-1), xb)  # mirror along W ...
                yb = torch.where(fb, _SWAP[yb], yb)  # ... and swap left <-> right
                loss = nn.functional.cross_entropy(model(xb.to(device)), yb.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
            if log is not None:
                log({"cnn_train_loss": total / len(x), "cnn_seconds": time.perf_counter() - t0}, epoch)
    return model.eval()


@torch.no_grad()
def predict(model: LateralityCNN, volumes: Sequence[np.ndarray], batch_size: int) -> list[str]:
    """The most likely class of each volume."""
    device = next(model.parameters()).device
    x = _stack(volumes)
    logits = torch.cat([model.eval()(xb.to(device)).cpu() for xb in x.split(batch_size)])  # (N, 4)
    return [CLASSES[i] for i in logits.argmax(1).tolist()]
