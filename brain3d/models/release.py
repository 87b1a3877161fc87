"""The authors' released BrainGemma3D (Hugging Face `praiselab-picuslab/BrainGemma3D`, SPEC §4b), loaded from
the folder as it is published:

    vision_model/            a SigLIP AutoModel snapshot (vision + text towers)
    language_model/          MedGemma-1.5-4B-IT (a multimodal Gemma 3 checkpoint)
    projector_vis_scale.pt   torch.save({"vision_projector": <Sequential state_dict: 0.weight, 0.bias, 2.weight,
                             2.bias>, "vis_scale": <float, tensor or None>})
    lora_adapters/           optional: PEFT save_pretrained of the LM's LoRA

The folder has no brain3d.json: `read_card` makes its card in memory, so `Brain3D.from_pretrained(folder)` and
`brain3d report --model folder` take it as it is. The card holds the `reference` model variant (the release's
inference: no pixel normalisation, no radiological flip, a fixed position code, no embedding scale on the
projector; brain3d/models/encoder.py), the release's volume shape, prompt and generate_report defaults, and the
sha256 of every file of the folder with the hub revision when the snapshot records one.

Safety: projector_vis_scale.pt is a pickle. It is read with torch.load(weights_only=True) only, which refuses
any pickled object but tensors, numbers and containers without running it; what it holds is then checked key
by key, shape by shape. Anything else is refused in one line (`ReleaseError`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from brain3d.fileio import sha256_file
from brain3d.models.backbones import LanguageModel, snapshot_revision

FORMAT = "braingemma3d-release"  # the card's `format`; Brain3D.from_card reads the files below by it
REPO = "praiselab-picuslab/BrainGemma3D"
PROJECTOR = "projector_vis_scale.pt"
LORA = "lora_adapters"
LAYOUT = ("vision_model/", "language_model/", PROJECTOR)
# the release's own inference (SPEC §4b): its prompt (a space before the newline), and its trained volume shape
# (its model card's; its quick start resizes to 32 x 128 x 128)
PROMPT = "Generate a radiology report for this brain MRI FLAIR scan. \n"
VOLUME_SHAPE = (64, 128, 128)
MODEL = dict(
    volume_shape=VOLUME_SHAPE,
    kd=2,
    depth_stride=1,
    depth_pad=1,
    inflation="mean",  # RGB kernel averaged, repeated over depth 2, divided by 2
    compressor="seq_pool",
    n_tokens=32,
    grid=(2, 4, 4),  # unused by seq_pool
    prompt=PROMPT,
    variant="reference",
)
# its generate_report defaults: the plain repetition penalty (nothing exempt), a no-repeat trigram
DECODING = dict(
    temperature=0.1,
    top_p=0.9,
    repetition_penalty=1.2,
    repetition_exempt=[],
    no_repeat_ngram_size=3,
    min_new_tokens=10,
    max_new_tokens=128,
    select="plain",  # its own decoder: the release has no findings head nor side detector
    guide="head",  # (read by findings decoding only)
    candidates=0,
    candidate_temperature=1.0,
)
# the reference loads the LM in 4-bit NF4 with bf16 compute, and the vision encoder and projector in bf16; where
# 4-bit cannot run (no CUDA) the LM loads unquantised in bf16, said on stderr (runtime.precision_fallback)
BACKBONES = dict(source="release", dtype="bfloat16", load_in_4bit=True, allow_cpu_fallback=True)
TRAINED_ON = f"the authors' released weights ({REPO}), not trained by this pipeline"
PROJECTOR_KEYS = ("0.weight", "0.bias", "2.weight", "2.bias")


class ReleaseError(ValueError):
    """A release file Brain3D refuses to load; the message is one line."""


def is_release(path: str | Path) -> bool:
    """Whether `path` looks like a BrainGemma3D release folder (it holds projector_vis_scale.pt)."""
    return (Path(path) / PROJECTOR).is_file()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (symlinks followed, as the hub cache's are), by POSIX path relative to
    `root`; `hf download`'s bookkeeping under .cache/ is left out."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != ".cache")
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def read_card(path: str | Path) -> dict:
    """The card of a release folder, as `checkpoint.read_card` returns a Brain3D directory's (absolute paths,
    the `model` section as ModelConfig's keyword arguments), plus the release's `decoding` (the `generate`
    keys it sets), `revision` (the hub commit, or None) and `sha256` (every file, by relative path)."""
    root = Path(path).resolve()
    missing = [p for p in LAYOUT if not (root / p).exists()]
    missing += [
        f"{d}/config.json"
        for d in ("vision_model", "language_model")
        if not (root / d / "config.json").exists()
    ]
    if missing:
        raise FileNotFoundError(f"{root}: a BrainGemma3D release lacks {', '.join(dict.fromkeys(missing))}")
    lora = root / LORA
    return {
        "dir": str(root),
        "format": FORMAT,
        "phase": "release",
        "repo": REPO,
        "revision": snapshot_revision(root, PROJECTOR),
        "model": dict(MODEL),
        "backbones": {**BACKBONES, "vision": str(root / "vision_model"), "lm": str(root / "language_model")},
        "visual": None,  # the 3D patch embedding is inflated at load time: the release never saved one
        "projector": str(root / PROJECTOR),
        "adapter": str(lora) if (lora / "adapter_config.json").exists() else None,
        "decoding": dict(DECODING),
        "sha256": file_hashes(root),
    }


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {str(obj.dtype).removeprefix('torch.')} tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))}"
    return f"a {type(obj).__name__}"


def safe_load(path: Path):
    """torch.load(weights_only=True): tensors, numbers and containers, or ReleaseError; no pickled code runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only's refusal (UnpicklingError), a truncated or foreign file
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = (
            f"it names {named.group(1)}, which is not a tensor or a number" if named else type(exc).__name__
        )
        raise ReleaseError(
            f"{path}: refused: torch.load(weights_only=True) cannot read it ({what}); Brain3D never unpickles "
            "anything else"
        ) from None


def _scale(value, path: Path) -> float:
    """vis_scale as a float: None (no gate) is 1; a number or a one-element float tensor; finite."""
    if value is None:
        return 1.0
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() == 1:
        value = value.item()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not torch.isfinite(torch.tensor(value))
    ):
        raise ReleaseError(
            f"{path}: refused: vis_scale must be a finite number or None, got {_describe(value)}"
        )
    return float(value)


def read_projector(path: str | Path, vision_width: int, lm_width: int) -> dict[str, torch.Tensor]:
    """projector_vis_scale.pt as the state dict of brain3d.models.projector.Projector (fc1, fc2, vis_scale),
    checked against the vision and LM widths; anything but the published dict is a ReleaseError."""
    path = Path(path)
    obj = safe_load(path)
    if (
        not isinstance(obj, dict)
        or "vision_projector" not in obj
        or set(obj) - {"vision_projector", "vis_scale"}
    ):
        raise ReleaseError(
            f"{path}: refused: expected a dict with keys vision_projector and vis_scale, got {_describe(obj)}"
        )
    sd = obj["vision_projector"]
    if not isinstance(sd, dict) or set(sd) != set(PROJECTOR_KEYS):
        raise ReleaseError(
            f"{path}: refused: vision_projector must be the state dict of Linear-GELU-Linear "
            f"({', '.join(PROJECTOR_KEYS)}), got {_describe(sd)}"
        )
    shapes = dict(
        zip(PROJECTOR_KEYS, [(lm_width, vision_width), (lm_width,), (lm_width, lm_width), (lm_width,)])
    )
    for key, shape in shapes.items():
        t = sd[key]
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == shape):
            raise ReleaseError(
                f"{path}: refused: vision_projector {key} must be a float tensor of shape {shape} (vision width "
                f"{vision_width}, LM width {lm_width}), got {_describe(t)}"
            )
        if not torch.isfinite(t).all():
            raise ReleaseError(f"{path}: refused: vision_projector {key} holds non-finite values")
    scale = _scale(obj.get("vis_scale"), path)
    return {
        "fc1.weight": sd["0.weight"],
        "fc1.bias": sd["0.bias"],
        "fc2.weight": sd["2.weight"],
        "fc2.bias": sd["2.bias"],
        "vis_scale": torch.tensor(scale, dtype=torch.float64),  # cast once, to the projector's dtype
    }


LORA_KEY = re.compile(r"layers\.(\d+)\.self_attn\.([qkvo]_proj)\.(lora_[AB])\.weight$")


def _lora_config(adapter_dir: Path) -> dict:
    """adapter_config.json of a plain LoRA (no DoRA, no per-module ranks, no bias or extra saved modules)."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    plain = {
        "peft_type": cfg.get("peft_type") == "LORA",
        "use_dora": not cfg.get("use_dora"),
        "rank_pattern": not cfg.get("rank_pattern"),
        "alpha_pattern": not cfg.get("alpha_pattern"),
        "bias": cfg.get("bias", "none") == "none",
        "modules_to_save": not cfg.get("modules_to_save"),
    }
    unsupported = [key for key, ok in plain.items() if not ok]
    if unsupported:
        raise ReleaseError(f"{adapter_dir}: refused: not a plain LoRA adapter ({', '.join(unsupported)})")
    return cfg


def _adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (adapter_dir / "adapter_model.safetensors").exists():
        return load_file(str(adapter_dir / "adapter_model.safetensors"))
    weights = safe_load(adapter_dir / "adapter_model.bin")
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise ReleaseError(f"{adapter_dir / 'adapter_model.bin'}: refused: not a dict of tensors")
    return weights


def load_lora(lm: LanguageModel, adapter_dir: str | Path) -> None:
    """Inject the release's LoRA into the language model, in place.

    The authors applied LoRA with plain target names (q/k/v/o_proj, r=4, alpha=8) to MedGemma loaded whole, so
    the adapter also holds weights for MedGemma's own vision tower, which the release's inference never runs
    (its images go through vision_model/): those are left out. The others are matched by layer and projection,
    whatever the module path of the transformers version that saved them, and must cover A and B of each."""
    from peft import LoraConfig, get_peft_model

    adapter_dir = Path(adapter_dir)
    cfg = _lora_config(adapter_dir)
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _adapter_weights(adapter_dir).items():
        if "vision" in key:
            continue
        m = LORA_KEY.search(key)
        if m is None:
            raise ReleaseError(f"{adapter_dir}: refused: unexpected adapter weight {key}")
        found.setdefault((int(m[1]), m[2]), {})[m[3]] = tensor
    if not found:
        raise ReleaseError(f"{adapter_dir}: refused: no LoRA weights for the language model")
    names = {f"{lm.decoder_prefix}.layers.{i}.self_attn.{proj}": parts for (i, proj), parts in found.items()}
    modules = dict(lm.full.named_modules())
    absent = [n for n, parts in names.items() if n not in modules or set(parts) != {"lora_A", "lora_B"}]
    if absent:
        raise ReleaseError(f"{adapter_dir}: refused: weights for {absent[0]} do not fit the language model")
    config = LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=0.0,
        use_rslora=cfg.get("use_rslora", False),
        target_modules=rf"^({'|'.join(map(re.escape, sorted(names)))})$",
    )
    get_peft_model(lm.full, config)  # injects the LoRA layers into lm.full in place
    modules = dict(lm.full.named_modules())
    with torch.no_grad():
        for name, parts in names.items():
            for part, tensor in parts.items():
                weight = getattr(modules[name], part)["default"].weight
                if weight.shape != tensor.shape:
                    raise ReleaseError(
                        f"{adapter_dir}: refused: {name} {part} has shape {tuple(tensor.shape)}, the LoRA "
                        f"layer {tuple(weight.shape)}"
                    )
                weight.copy_(tensor)
