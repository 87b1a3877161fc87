"""One loader for both profiles (open_clip-style factory): the vision backbone (a SigLIP checkpoint:
MedSigLIP-448 or the demo stand-in) and the language model (a Gemma 3 checkpoint: MedGemma-1.5-4B-IT or
the demo stand-in), from local Hugging Face directories only.

MedGemma is a multimodal checkpoint. Loading it with Gemma3ForCausalLM silently random-initialises the
language model, so it is loaded with its own class (AutoModelForImageTextToText) and the text decoder +
lm_head are taken from it; `LanguageModel.causal` is a Gemma3ForCausalLM *view* sharing those modules,
which is what `generate(inputs_embeds=...)` needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LanguageModel:
    full: nn.Module  # the checkpoint's own class (Gemma3ForConditionalGeneration for MedGemma)
    causal: nn.Module  # causal-LM view sharing the decoder and lm_head of `full`
    tokenizer: object
    decoder_prefix: str  # module path of the text decoder inside `full`, e.g. "model.language_model"

    @property
    def hidden_size(self) -> int:
        return int(self.causal.config.hidden_size)

    @property
    def embed_scale(self) -> float:
        """Gemma scales token embeddings by sqrt(hidden) inside its embedding layer."""
        scale = getattr(self.causal.get_input_embeddings(), "embed_scale", 1.0)
        return float(scale)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings exactly as the LM sees them (scaled)."""
        return self.causal.get_input_embeddings()(ids)

    def add_lora(self, rank: int, alpha: float, dropout: float = 0.0):
        """Inject LoRA (rank, alpha, dropout) into the language model's q/k/v/o, in place; the PeftModel (what
        saves the adapter) is returned."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=self.lora_target_regex()
        )
        return get_peft_model(self.full, config)

    def lora_target_regex(self) -> str:
        """q/k/v/o projections of the LANGUAGE model only: a plain name list would also hit the vision tower."""
        return rf"^{re.escape(self.decoder_prefix)}\.layers\.\d+\.self_attn\.({'|'.join(LORA_PROJECTIONS)})$"


def _quantization(load_in_4bit: bool, allow_cpu_fallback: bool) -> dict:
    if not load_in_4bit:
        return {}
    if not torch.cuda.is_available():
        from brain3d.runtime import precision_fallback

        precision_fallback(
            "4-bit NF4 loading of the LM needs CUDA (bitsandbytes), and this machine has none: "
            "the LM loads unquantised",
            allow_cpu_fallback,
        )
        return {}
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
    )
    return {"quantization_config": bnb, "device_map": {"": 0}}


def _saved_quantised(config, path: Path) -> bool:
    """Whether the checkpoint was saved already quantised (its own quantization_config then applies); such a
    checkpoint (bitsandbytes) loads on a CUDA GPU only: PrecisionError elsewhere."""
    quant = getattr(config, "quantization_config", None)
    if not quant:
        return False
    if not torch.cuda.is_available():
        from brain3d.config import PrecisionError

        method = (
            quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        )
        raise PrecisionError(
            f"{path} holds a language model saved already quantised ({method or 'unknown method'}), which loads "
            "on a CUDA GPU only, and this machine has none"
        )
    return True


def load_language_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    load_in_4bit: bool = False,
    keep_vision: bool = False,
    allow_cpu_fallback: bool = False,
) -> LanguageModel:
    """Load a Gemma 3 checkpoint (multimodal or text-only) from a local directory.

    `load_in_4bit`: NF4 (double quantisation, bf16 compute), which needs CUDA; without it a PrecisionError,
    or with `allow_cpu_fallback` an unquantised load that is said and recorded (runtime.precision_fallback).
    The vision tower of a multimodal checkpoint is dropped unless `keep_vision` (the slice baselines). A
    checkpoint saved already quantised loads with its own quantisation, on a CUDA GPU only (`_saved_quantised`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no Hugging Face checkpoint at {path} (config.json missing)")
    config = AutoConfig.from_pretrained(path)
    # a checkpoint saved quantised brings its own quantization_config
    quantisation = {"device_map": {"": 0}} if _saved_quantised(config, path) else None
    kwargs = {"dtype": dtype, **(quantisation or _quantization(load_in_4bit, allow_cpu_fallback))}
    if hasattr(config, "text_config"):
        full = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        decoder, lm_head = full.model.language_model, full.lm_head
        with torch.device("meta"):
            causal = AutoModelForCausalLM.from_config(config.text_config)
        causal.model, causal.lm_head = decoder, lm_head
        causal.generation_config = full.generation_config
        if not keep_vision:
            for name in ("vision_tower", "multi_modal_projector"):
                if hasattr(full.model, name):
                    setattr(full.model, name, None)
    else:
        full = causal = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        decoder = full.model
    if any(p.is_meta for p in causal.parameters()):
        raise RuntimeError(f"{path}: the causal-LM view has uninitialised parameters")
    prefix = next(name for name, module in full.named_modules() if module is decoder)
    full.eval()
    for p in full.parameters():
        p.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LanguageModel(full=full, causal=causal, tokenizer=tokenizer, decoder_prefix=prefix)


def load_vision_model(path: str | Path, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The SigLIP vision tower of an image-text (MedSigLIP) or vision-only checkpoint."""
    from transformers import SiglipVisionModel
    from transformers.utils import logging

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no Hugging Face checkpoint at {path} (config.json missing)")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the text tower's weights are reported as unused: expected
    try:
        return SiglipVisionModel.from_pretrained(path, dtype=dtype)
    finally:
        logging.set_verbosity(verbosity)


def read_backbones(path: str | Path = "models/foundation/backbones.json") -> dict:
    """The backbone record written by the `foundation` stage: {"vision": dir, "lm": dir, ...}."""
    return json.loads(Path(path).read_text())


def record_language_model(bb: dict, *, keep_vision: bool = False) -> LanguageModel:
    """The LM of a backbones record (data/models/backbones.json, a model card's `backbones`) at the record's
    dtype and 4-bit setting, with its CPU fallback policy."""
    return load_language_model(
        bb["lm"],
        dtype=torch_dtype(bb["dtype"]),
        load_in_4bit=bb["load_in_4bit"],
        keep_vision=keep_vision,
        allow_cpu_fallback=bb.get("allow_cpu_fallback", False),
    )


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def snapshot_revision(path: Path, file: str = "config.json") -> str | None:
    """The hub commit of a snapshot downloaded with `hf download --local-dir` (read from the bookkeeping it keeps
    for `file`), or from the HF cache (the snapshot folder's name)."""
    meta = path / ".cache" / "huggingface" / "download" / f"{file}.metadata"
    if meta.exists():
        return meta.read_text().split()[0]
    if path.parent.name == "snapshots":
        return path.name
    return None


def verify_local(section: dict, root: Path) -> dict:
    """Check the paper profile's local MedSigLIP / MedGemma snapshots; returns the backbone record.

    Raises FileNotFoundError listing every missing piece and how to obtain it (both models are gated:
    accept their terms on the hub once, then download to the configured directory).
    """
    problems, revisions = [], {}
    expected = {"vision": ("siglip", "siglip_vision_model"), "lm": ("gemma3", "gemma3_text")}
    for key in ("vision", "lm"):
        repo, path = section[f"{key}_repo"], root / section[key]
        how = (
            f"accept the terms at https://huggingface.co/{repo}, run `hf auth login`, then "
            f"`hf download {repo} --local-dir {section[key]}`"
        )
        config = path / "config.json"
        if not config.exists():
            problems.append(f"{key}: no checkpoint at {path} — {how}")
            continue
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type not in expected[key]:
            problems.append(f"{key}: {path} holds a '{model_type}' model, expected one of {expected[key]}")
        if not any(path.glob("*.safetensors")):
            problems.append(f"{key}: {path} has no *.safetensors weights (incomplete download?) — {how}")
        revisions[key] = section.get(f"{key}_revision") or snapshot_revision(path) or "unknown"
    if problems:
        raise FileNotFoundError("backbones missing:\n  - " + "\n  - ".join(problems))
    from brain3d.fileio import fingerprint

    return {
        "source": "local",
        "vision": section["vision"],
        "lm": section["lm"],
        "dtype": section["dtype"],
        "load_in_4bit": section["load_in_4bit"],
        "allow_cpu_fallback": section["allow_cpu_fallback"],
        "revisions": revisions,
        "repos": {"vision": section["vision_repo"], "lm": section["lm_repo"]},
        "fingerprint": fingerprint(revisions),
    }
