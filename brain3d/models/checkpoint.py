"""Saving and loading a trained Brain3D: `<dir>/brain3d.json` names the backbones, the model config and
the weight files (paths relative to the JSON), so `--model models/phase2b` is self-describing."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from brain3d import io
from brain3d.models.backbones import load_vision_model, record_language_model, torch_dtype
from brain3d.models.model import Brain3D, ModelConfig, VisualTokenizer

CARD = "brain3d.json"


def _rel(path: str | Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), start.resolve())


def write_card(
    out_dir: Path,
    *,
    phase: str,
    model_cfg: ModelConfig,
    backbones: dict,
    visual: str | Path,
    projector: str | Path | None,
    adapter: str | Path | None = None,
    extra: dict | None = None,
) -> None:
    """Record what `load` needs; file paths may be anywhere, they are stored relative to `out_dir`."""
    out_dir = Path(out_dir)
    card = {
        "phase": phase,
        "model": asdict(model_cfg),
        "backbones": {
            **backbones,
            "vision": _rel(backbones["vision"], out_dir),
            "lm": _rel(backbones["lm"], out_dir),
        },
        "visual": _rel(visual, out_dir),
        "projector": _rel(projector, out_dir) if projector else None,
        "adapter": _rel(adapter, out_dir) if adapter else None,
        **(extra or {}),
    }
    io.write_json(out_dir / CARD, card)


def read_card(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    card_path = model_dir / CARD
    if not card_path.exists():
        raise FileNotFoundError(f"{model_dir} is not a Brain3D model directory ({CARD} missing)")
    card = io.read_json(card_path)
    for key in ("visual", "projector", "adapter"):
        if card.get(key):
            card[key] = str((model_dir / card[key]).resolve())
    for key in ("vision", "lm"):
        card["backbones"][key] = str((model_dir / card["backbones"][key]).resolve())
    # The one backward-compatible read: a card written before `model.inflation` existed was trained with the
    # paper's RGB-averaged inflation, so it loads as "mean"; every other key must be on the card.
    m = {"inflation": "mean", **card["model"]}
    card["model_config"] = ModelConfig(
        **{**m, "volume_shape": tuple(m["volume_shape"]), "grid": tuple(m["grid"])}
    )
    return card


def load(model_dir: str | Path, device: str | torch.device = "cpu") -> Brain3D:
    """A Brain3D (with its visual tokenizer) ready for inference, from a phase output directory."""
    from safetensors.torch import load_file

    card = read_card(model_dir)
    bb = card["backbones"]
    dtype = torch_dtype(bb.get("dtype", "float32"))
    cfg: ModelConfig = card["model_config"]
    visual = VisualTokenizer(load_vision_model(bb["vision"], dtype=dtype), cfg)
    visual.load_state_dict(load_file(card["visual"]))
    lm = record_language_model(bb)
    if card.get("adapter"):
        from peft import PeftModel

        PeftModel.from_pretrained(lm.full, card["adapter"])  # injects the LoRA layers into lm.full in place
    model = Brain3D(lm, visual.width, cfg.prompt, visual=visual)
    model.projector.load_state_dict(load_file(card["projector"]))
    return model.to(device).eval()
