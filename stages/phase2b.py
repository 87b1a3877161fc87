"""DVC stage `phase2b`: linguistic LoRA (r, alpha from params) on the LM's q/k/v/o + projector, from 2A."""

from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from brain3d import io, paths, stage
from brain3d.cache import cache_dir
from brain3d.models.checkpoint import write_card
from brain3d.models.model import Brain3D
from brain3d.runtime import is_main_process, seed_everything
from brain3d.training import phases
from brain3d.training.loop import TrainConfig

OUT = paths.model_dir("phase2b")
INIT = paths.model_dir("phase2a") / "projector.safetensors"


def main() -> None:
    with stage.run("phase2b", ("model", "phase2b")) as (cfg, tracker):
        p = cfg["phase2b"]
        seed_everything(p["seed"])
        x = phases.phase2_inputs(cfg, p["laterality_flip"])
        lora = get_peft_model(
            x.lm.full,
            LoraConfig(
                r=p["lora_rank"],
                lora_alpha=p["lora_alpha"],
                lora_dropout=p["lora_dropout"],
                target_modules=x.lm.lora_target_regex(),
            ),
        )
        model = Brain3D(x.lm, x.vision_width, x.model_cfg.prompt)
        model.projector.load_state_dict(load_file(INIT))
        lora_params = [p_ for n, p_ in model.lm.named_parameters() if "lora_" in n]
        groups = [
            {"params": list(model.projector.parameters()), "lr": p["lr"]},
            {"params": lora_params, "lr": p["lr_lora"]},
        ]
        key = phases.run_key({"phase2b": p}, [*x.inputs, INIT])
        result = phases.train_phase2(
            model,
            x.train_tokens,
            x.train.reports,
            x.val_tokens,
            x.val.reports,
            TrainConfig.from_params(p),
            groups,
            state_dir=cache_dir("phase2b", key),
            normal_weight=p["normal_weight"],
            flipped_train_tokens=x.flipped_train_tokens,
            tracker=tracker,
            desc="phase2b",
        )
        if not is_main_process():
            return
        io.save_safetensors(OUT / "projector.safetensors", model.projector.state_dict())
        lora.save_pretrained(OUT / "adapter")
        write_card(
            OUT,
            phase="phase2b",
            model_cfg=x.model_cfg,
            backbones=x.backbones,
            visual=paths.model_dir("phase1") / "visual.safetensors",
            projector=OUT / "projector.safetensors",
            adapter=OUT / "adapter",
        )
        phases.write_training_record("phase2b", result, paths.CURVES, paths.TRAINING, tracker)
        tracker.log_metrics(
            {
                "vis_scale": model.projector.vis_scale.item(),
                "lora_parameters": sum(t.numel() for t in lora_params),
            }
        )


if __name__ == "__main__":
    main()
