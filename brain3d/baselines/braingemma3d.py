"""The authors' released BrainGemma3D (brain3d/models/release.py) as a baseline: its reports for our test
subjects, decoded with its own generate_report defaults, from a local snapshot of the release.

Its input, `baselines.braingemma3d_release.loader`:
- `project` (default, what the table uses): this project's preprocessed volumes (skull strip, RAS, brain-mask
  percentiles, brain-centred grid), resampled trilinearly to the release's `volume_shape`;
- `reference`: the raw files read as the release's own NIfTI loader reads them (`reference_volume`): closest
  canonical orientation, (x, y, z) -> (z, y, x), except a path containing "healthy", which is flipped on its
  second axis instead of transposed (the release's defect, kept), 1st-99th percentile min-max over the whole
  volume (background included) clipped to [0, 1], trilinear resize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brain3d import config
from brain3d.baselines import NotRunnable
from brain3d.models import release

LOADERS = ("project", "reference")


@dataclass
class ReleaseBaselineConfig:
    """The `baselines.braingemma3d_release` params section (no defaults: params.yaml holds the values)."""

    path: str
    loader: str
    volume_shape: tuple[int, int, int]

    @classmethod
    def from_params(cls, section: dict) -> ReleaseBaselineConfig:
        return config.from_section(cls, {**section, "volume_shape": tuple(section["volume_shape"])})


def resize(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resize (F.interpolate, align_corners=False, as the release resizes) of a (D, H, W) volume."""
    if tuple(volume.shape) == tuple(shape):
        return np.asarray(volume, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def reference_volume(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A raw NIfTI read with the release's own loader semantics (module docstring), at `shape`."""
    import nibabel as nib

    data = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, dtype=np.float32)
    data = np.flip(data, axis=1) if "healthy" in str(path) else data.transpose(2, 1, 0)
    lo, hi = np.percentile(data, [1, 99])
    scaled = np.clip((data - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(data)
    return resize(scaled, shape)


def check_runnable(cfg: ReleaseBaselineConfig) -> Path:
    """The release folder, or NotRunnable saying why the baseline cannot run here."""
    path = Path(cfg.path)
    if not release.is_release(path):
        raise NotRunnable(
            f"not run: no release snapshot at {path} (`hf download {release.REPO} --local-dir {path}`)"
        )
    return path


def load(cfg: ReleaseBaselineConfig, device: str) -> tuple[torch.nn.Module, dict]:
    """(the release as a Brain3D at `cfg.volume_shape`, its card)."""
    from brain3d.models.model import Brain3D

    card = release.read_card(check_runnable(cfg))
    card["model"]["volume_shape"] = cfg.volume_shape
    return Brain3D.from_card(card, device), card


def volumes(
    cfg: ReleaseBaselineConfig, preprocessed: list[np.ndarray], raw_paths: list[Path]
) -> list[np.ndarray]:
    """The model's input for each test subject, by `cfg.loader` (`preprocessed` and `raw_paths` in one order)."""
    if cfg.loader == "reference":
        return [reference_volume(p, cfg.volume_shape) for p in raw_paths]
    if cfg.loader == "project":
        return [resize(v, cfg.volume_shape) for v in preprocessed]
    raise ValueError(f"baselines.braingemma3d_release.loader must be one of {', '.join(LOADERS)}")


def provenance(cfg: ReleaseBaselineConfig, card: dict) -> dict:
    """What the baseline's record says about the weights and inputs it used."""
    return {
        "repo": card["repo"],
        "revision": card["revision"],
        "sha256": card["sha256"],
        "loader": cfg.loader,
        "volume_shape": list(cfg.volume_shape),
        "decoding": card["decoding"],
        "lora": card["adapter"] is not None,
    }
