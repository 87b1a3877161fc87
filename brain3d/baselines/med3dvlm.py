"""Med3DVLM baseline (MagicXin/Med3DVLM-Qwen-2.5-7B), opt-in.

Its model code is remote (`trust_remote_code`) and pins transformers 4.48.3, so it never runs inside the
project's environment: when enabled, a pinned revision is present locally and remote code is allowed,
the stage builds an isolated virtual environment (.cache/brain3d/envs/med3dvlm) and runs
`med3dvlm_worker.py` there on inputs prepared here. The vision tower weights (`vision_tower.bin`) are
loaded separately (the reference evaluation forgot them). Input: 1x128x256x256 in [0, 1], slices in the
radiological / DICOM-LPS voxel order its loaders read with SimpleITK (`brain3d.data.views`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain3d import config
from brain3d.baselines import NotRunnable
from brain3d.data.views import radiological
from brain3d.models.backbones import snapshot_revision

INPUT_SHAPE = (128, 256, 256)
WORKER = Path(__file__).with_name("med3dvlm_worker.py")
ENV_REQUIREMENTS = [
    "transformers==4.48.3",
    "accelerate<1.5",
    "numpy<2.3",
    "sentencepiece",
    "protobuf",
    "einops",
    "monai<1.5",
]


def prepare_input(volume: np.ndarray, shape: tuple[int, int, int] = INPUT_SHAPE) -> np.ndarray:
    """(D, H, W) project-convention volume -> (1, 128, 256, 256) float32 in [0, 1], radiological order."""
    from skimage.transform import resize

    view = radiological(np.asarray(volume, dtype=np.float32))
    out = resize(view, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return out[None]


@dataclass
class Med3DVLMConfig:
    """The `baselines.med3dvlm` params section (no defaults for what params.yaml holds) and where its
    isolated environment lives."""

    path: str
    revision: str | None
    allow_remote_code: bool
    question: str
    max_new_tokens: int
    env_dir: str = ".cache/brain3d/envs/med3dvlm"

    @classmethod
    def from_params(cls, section: dict) -> Med3DVLMConfig:
        return config.from_section(cls, section)


def check_runnable(cfg: Med3DVLMConfig) -> Path:
    """The snapshot directory, or NotRunnable saying exactly why the baseline cannot run here."""
    if not cfg.allow_remote_code:
        raise NotRunnable(
            "not run: remote code not allowed (set baselines.med3dvlm.allow_remote_code: true "
            "after reviewing the pinned revision's code)"
        )
    if not cfg.revision:
        raise NotRunnable(
            "not run: no revision pinned (set baselines.med3dvlm.revision to the commit you reviewed)"
        )
    path = Path(cfg.path)
    missing = [f for f in ("config.json", "vision_tower.bin") if not (path / f).exists()]
    if missing:
        raise NotRunnable(
            f"not run: checkpoint not available ({path} lacks {', '.join(missing)}; "
            f"`hf download MagicXin/Med3DVLM-Qwen-2.5-7B --revision {cfg.revision} --local-dir {path}`)"
        )
    found = snapshot_revision(path)
    if found is not None and found != cfg.revision:
        raise NotRunnable(f"not run: snapshot revision {found} differs from the pinned {cfg.revision}")
    return path


def env_commands(env_dir: Path) -> list[list[str]]:
    """Commands that build the isolated environment (torch as installed here, the rest pinned)."""
    import torch

    python = str(env_dir / "bin" / "python")
    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    return [
        [sys.executable, "-m", "venv", str(env_dir)],
        [python, "-m", "pip", "install", "-q", torch_spec],
        [python, "-m", "pip", "install", "-q", *ENV_REQUIREMENTS],
    ]


def ensure_env(env_dir: Path) -> Path:
    python = env_dir / "bin" / "python"
    stamp = env_dir / ".brain3d-ready"
    if not stamp.exists():
        for cmd in env_commands(env_dir):
            subprocess.run(cmd, check=True)
        stamp.write_text("ok\n")
    return python


def predict(cfg: Med3DVLMConfig, volumes: list[np.ndarray]) -> list[str]:
    """Reports for `volumes`, generated in the isolated environment (raises NotRunnable when gated)."""
    path = check_runnable(cfg)
    python = ensure_env(Path(cfg.env_dir))
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, np.stack([prepare_input(v) for v in volumes]))
        out = Path(tmp) / "predictions.json"
        subprocess.run(
            [
                str(python),
                str(WORKER),
                "--model",
                str(path),
                "--inputs",
                str(inputs),
                "--out",
                str(out),
                "--question",
                cfg.question,
                "--max-new-tokens",
                str(cfg.max_new_tokens),
            ],
            check=True,
        )
        return json.loads(out.read_text())
