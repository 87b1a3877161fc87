"""What the `phase2a` and `phase2b` stages share: the frozen LM and phase 1's cached visual tokens, the training
run, and the saved model. They differ in what trains (`lora`: phase 2B adds LoRA on the LM's q/k/v/o, with
its own learning rate) and in the projector they start from (phase 1's seeded one, or phase 2A's)."""

from __future__ import annotations

import pandas as pd
from safetensors.torch import load_file

from brain3d import entrypoint, paths
from brain3d.cache import cache_dir
from brain3d.data import manifest
from brain3d.data.split import SplitSubjects
from brain3d.models import checkpoint
from brain3d.models.backbones import read_backbones
from brain3d.models.model import Brain3D, ModelConfig, load_backbones
from brain3d.runtime import is_main_process, seed_everything
from brain3d.training import phases
from brain3d.training.loop import TrainConfig


def run(name: str, init: str, *, lora: bool) -> None:
    """Train phase `name` from the projector of phase `init`, and save it to models/<name>."""
    out, init_projector = paths.model_dir(name), paths.model_dir(init) / "projector.safetensors"
    with entrypoint.run(name, ("model", name)) as (cfg, tracker):
        p = cfg[name]
        seed_everything(p["seed"])
        model_cfg, bb = ModelConfig.from_params(cfg), read_backbones(paths.BACKBONES)
        visual_weights = paths.model_dir("phase1") / "visual.safetensors"
        visual, lm = load_backbones(bb, model_cfg, visual_weights=visual_weights)
        splits, df = pd.read_csv(paths.SPLITS), manifest.read(paths.MANIFEST)
        train, val = (SplitSubjects.load(splits, df, s, paths.VOLUMES) for s in ("train", "val"))
        inputs = [paths.BACKBONES, visual_weights, paths.SPLITS, paths.MANIFEST]
        tokens_key = phases.run_key({"model": cfg["model"], "shape": cfg["preprocess"]["shape"]}, inputs)
        adapter = None
        if lora:
            adapter = lm.add_lora(p["lora_rank"], p["lora_alpha"], p["lora_dropout"])
        model = Brain3D(lm, visual.width, model_cfg.prompt, variant=model_cfg.variant)
        model.projector.load_state_dict(load_file(init_projector))
        groups = [{"params": list(model.projector.parameters()), "lr": p["lr"]}]
        lora_params = [t for n, t in model.lm.named_parameters() if "lora_" in n]
        if lora:
            groups.append({"params": lora_params, "lr": p["lr_lora"]})
        result = phases.train_phase2(
            model,
            visual.cached_encode(train, tokens_key),
            train.reports,
            visual.cached_encode(val, tokens_key),
            val.reports,
            TrainConfig.from_params(p),
            groups,
            state_dir=cache_dir(name, phases.run_key({name: p}, [*inputs, init_projector])),
            normal_weight=p["normal_weight"],
            bilateral_weight=p["bilateral_weight"],
            flipped_train_tokens=visual.cached_encode(train, tokens_key, flip=True)
            if p["laterality_flip"]
            else None,
            tracker=tracker,
            desc=name,
        )
        if not is_main_process():
            return
        findings = paths.model_dir("phase1") / "findings.safetensors"  # phase 1's head, when it trained one
        phase1 = checkpoint.read_card(paths.model_dir("phase1"))  # and its side detector, when it trained one
        model.save_pretrained(
            out,
            phase=name,
            model_cfg=model_cfg,
            backbones=bb,
            visual=visual_weights,
            adapter=adapter,
            findings=findings if findings.exists() else None,
            detector=(phase1["detector"], phase1["detector_arch"]) if phase1.get("detector") else None,
        )
        phases.write_training_record(name, result, paths.CURVES, paths.TRAINING, tracker)
        tracker.log_metrics({"vis_scale": model.projector.vis_scale.item()})
        if lora:
            tracker.log_metrics({"lora_parameters": sum(t.numel() for t in lora_params)})
