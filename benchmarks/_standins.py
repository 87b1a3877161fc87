"""Shared by the model benchmarks: random (untrained) stand-in backbones of the demo sizes in params.yaml
(`profiles.demo.foundation`), saved in a temporary directory in the same Hugging Face formats as the
`foundation` stage writes, and loaded back through the project's own loaders."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def demo_params(path: Path = ROOT / "params.yaml") -> dict:
    """The effective configuration of the demo profile, whatever `profile` params.yaml selects."""
    from brain3d.config import resolve

    params = yaml.safe_load(path.read_text())
    params["profile"] = "demo"
    return resolve(params)


def threads(default: int = 2) -> int:
    import torch

    n = int(os.environ.get("BRAIN3D_THREADS", default))
    torch.set_num_threads(n)
    return n


def reports(n: int, seed: int) -> list[str]:
    import random

    from bootstrap import report

    rng = random.Random(seed)
    return [report(rng) for _ in range(n)]


def build(out: Path, cfg: dict, seed: int = 0) -> tuple[Path, Path]:
    """Random SigLIP (image = the volume's in-plane size, demo patch) and Gemma 3 checkpoints under `out`."""
    import torch

    from brain3d.models.foundation import (
        build_gemma3,
        build_siglip,
        save_gemma3,
        save_siglip,
        train_tokenizer,
    )

    f = cfg["foundation"]
    s, g = f["siglip"], f["gemma"]
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(reports(400, seed) + [cfg["model"]["prompt"]], f["tokenizer_vocab"])
    image_size = int(cfg["preprocess"]["shape"][-1])
    siglip = build_siglip(tokenizer, s, image_size)
    save_siglip(siglip, tokenizer, out / "siglip")
    gemma = build_gemma3(tokenizer, siglip.config.vision_config.to_dict(), g)
    gemma.model.vision_tower.load_state_dict(siglip.vision_model.state_dict())
    save_gemma3(gemma, tokenizer, out / "gemma3")
    return out / "siglip", out / "gemma3"


def quiet() -> None:
    """Silence the load-time chatter of transformers (weights reports, processor fallbacks)."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
