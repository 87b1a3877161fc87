"""The card of a trained Brain3D's directory (written and read by `Brain3D.save_pretrained` /
`Brain3D.from_pretrained`, brain3d/models/model.py): one directory whose card, `<dir>/brain3d.json`, names
the backbones, the model config and the weight files (paths relative to the card), so `--model
models/phase2b` is self-describing.

Like a PEFT adapter naming its base model, a phase's directory refers to what it did not train instead of
copying it: the backbones (models/foundation, or the hub snapshots on the paper profile) and, for phases 2A
and 2B, phase 1's visual weights (the encoder is frozen after phase 1; at MedSigLIP's size a copy per phase
would be 0.8 GB each).

The card pins every file the model loads, its own and the ones it refers to, by sha256 (`sha256`: {path
relative to the card: hex}); `verify` refuses a directory whose files changed since it was written (phase 1
re-run alone, a copied directory pointing at other backbones), naming the file and what to do."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path

from brain3d import fileio

CARD = "brain3d.json"


def _rel(path: str | Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), start.resolve())


def write_card(
    out_dir: Path,
    *,
    phase: str,
    model_cfg,
    backbones: dict,
    visual: str | Path,
    projector: str | Path | None,
    adapter: str | Path | None = None,
    findings: str | Path | None = None,
    detector: tuple[str | Path, dict] | None = None,
    extra: dict | None = None,
) -> None:
    """Record what `Brain3D.from_pretrained` needs (`model_cfg`: the ModelConfig) and the sha256 of every file
    it will load; file paths may be anywhere, they are stored relative to `out_dir`."""
    out_dir = Path(out_dir)
    loaded = [
        *backbone_files(backbones["vision"]),
        *backbone_files(backbones["lm"]),
        visual,
        *([projector] if projector else []),
        *([findings] if findings else []),
        *([detector[0]] if detector else []),
        *(sorted(p for p in Path(adapter).rglob("*") if p.is_file()) if adapter else []),
    ]
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
        "findings": _rel(findings, out_dir) if findings else None,
        "detector": _rel(detector[0], out_dir) if detector else None,
        "detector_arch": detector[1] if detector else None,  # LateralityCNN's arguments
        "sha256": {_rel(f, out_dir): fileio.sha256_file(f) for f in loaded},
        **(extra or {}),
    }
    fileio.write_json(out_dir / CARD, card)
    fileio.write_text(out_dir / "README.md", model_card(card))


def model_card(card: dict) -> str:
    """The directory's human-readable model card (README.md), written from its card: what the model is, what
    it was built from, how to load it, and what it may be used for."""
    m, bb = card["model"], card["backbones"]
    demo = bb.get("source") == "standins"
    lines = [
        f"# Brain3D, {card['phase']}",
        "",
        "A 3D brain MRI (FLAIR) report generator: an inflated SigLIP 3D encoder, "
        f"{m['n_tokens']} visual tokens ({m['compressor']}, {m['inflation']} inflation, "
        f"{m.get('variant', 'paper')} variant), an MLP projector and a "
        "Gemma 3 language model prompted with them.",
        "",
        f"- vision backbone: `{bb['vision']}`; language model: `{bb['lm']}` ({bb.get('dtype', 'float32')}"
        + (", 4-bit" if bb.get("load_in_4bit") else "")
        + ")",
        f"- volume shape (D, H, W): {tuple(m['volume_shape'])}; prompt: {m['prompt'].strip()!r}",
        "- weights: "
        + ", ".join(
            f"{k} `{card[k]}`"
            for k in ("visual", "projector", "adapter", "findings", "detector")
            if card.get(k)
        ),
        "",
        "Load with `Brain3D.from_pretrained(<this directory>)`, or `brain3d report --model <this directory> SCAN`.",
        "",
        "Research use only: not a medical device.",
    ]
    if demo:
        lines += [
            "",
            "Demo profile: the backbones are small stand-ins trained by the pipeline on synthetic phantoms; this "
            "model has never seen a real scan, and its reports say nothing about one.",
        ]
    return "\n".join(lines) + "\n"


def backbone_files(folder: str | Path) -> list[Path]:
    """What loading a Hugging Face checkpoint folder reads: its top-level files (weights, configs, tokenizer),
    not hidden ones (hub download metadata) nor its README."""
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"
    )


def verify(model_dir: str | Path, card: dict) -> None:
    """Refuse (fileio.IntegrityError) a model whose pinned files changed, are missing, or lack a pin; a card
    written before files were pinned loads with a warning."""
    model_dir = Path(model_dir)
    pins = card.get("sha256")
    if pins is None:
        warnings.warn(f"{model_dir}: its card pins no file hashes (written before pinning)", stacklevel=2)
        return
    remedy = (
        f"the {card.get('phase', 'model')} model in {model_dir} was trained with the recorded file: restore it, "
        f"or retrain this model on the new one (`dvc repro {card.get('phase', '<stage>')}` in its checkout)"
    )
    unpinned = [
        card[k]
        for k in ("visual", "projector", "findings", "detector")
        if card.get(k) and _rel(card[k], model_dir) not in pins
    ]
    if unpinned:
        raise fileio.IntegrityError(f"{model_dir}: its card loads {unpinned[0]} but pins no hash for it")
    for rel, expected in sorted(pins.items()):
        fileio.verify_sha256((model_dir / rel).resolve(), expected, remedy)


def read_card(model_dir: str | Path) -> dict:
    """The card with absolute file paths (`dir`: the directory's), and its `model` section as ModelConfig's
    keyword arguments. A folder of the authors' released BrainGemma3D, which has no card, gets one made in
    memory (brain3d.models.release)."""
    model_dir = Path(model_dir)
    card_path = model_dir / CARD
    if not card_path.exists():
        from brain3d.models import release

        if release.is_release(model_dir):
            return release.read_card(model_dir)
        raise FileNotFoundError(
            f"{model_dir} is not a Brain3D model directory ({CARD} missing) nor a BrainGemma3D release "
            f"({', '.join(release.LAYOUT)})"
        )
    card = {**fileio.read_json(card_path), "dir": str(model_dir.resolve())}
    for key in ("visual", "projector", "adapter", "findings", "detector"):
        if card.get(key):
            card[key] = str((model_dir / card[key]).resolve())
    for key in ("vision", "lm"):
        card["backbones"][key] = str((model_dir / card["backbones"][key]).resolve())
    # The backward-compatible reads: a card written before `model.inflation` existed was trained with the
    # paper's RGB-averaged inflation, so it loads as "mean"; one written before `model.variant` existed is this
    # project's model, "paper". Every other key must be on the card.
    m = {"inflation": "mean", "variant": "paper", **card["model"]}
    card["model"] = {**m, "volume_shape": tuple(m["volume_shape"]), "grid": tuple(m["grid"])}
    return card
