"""DVC stage `phase2a`: projector warm-up (projector + vis_scale) on cached phase-1 visual tokens, LM frozen."""

from safetensors.torch import load_file

from brain3d import io, paths, stage
from brain3d.cache import cache_dir
from brain3d.models.checkpoint import write_card
from brain3d.models.model import Brain3D
from brain3d.runtime import is_main_process, seed_everything
from brain3d.training import phases
from brain3d.training.loop import TrainConfig

OUT = paths.model_dir("phase2a")
INIT = paths.model_dir("phase1") / "projector.safetensors"


def main() -> None:
    with stage.run("phase2a", ("model", "phase2a")) as (cfg, tracker):
        p = cfg["phase2a"]
        seed_everything(p["seed"])
        x = phases.phase2_inputs(cfg, p["laterality_flip"])
        model = Brain3D(x.lm, x.vision_width, x.model_cfg.prompt)
        model.projector.load_state_dict(load_file(INIT))
        groups = [{"params": list(model.projector.parameters()), "lr": p["lr"]}]
        key = phases.run_key({"phase2a": p}, [*x.inputs, INIT])
        result = phases.train_phase2(
            model,
            x.train_tokens,
            x.train.reports,
            x.val_tokens,
            x.val.reports,
            TrainConfig.from_params(p),
            groups,
            state_dir=cache_dir("phase2a", key),
            normal_weight=p["normal_weight"],
            flipped_train_tokens=x.flipped_train_tokens,
            tracker=tracker,
            desc="phase2a",
        )
        if not is_main_process():
            return
        io.save_safetensors(OUT / "projector.safetensors", model.projector.state_dict())
        write_card(
            OUT,
            phase="phase2a",
            model_cfg=x.model_cfg,
            backbones=x.backbones,
            visual=paths.model_dir("phase1") / "visual.safetensors",
            projector=OUT / "projector.safetensors",
        )
        phases.write_training_record("phase2a", result, paths.CURVES, paths.TRAINING, tracker)
        tracker.log_metrics({"vis_scale": model.projector.vis_scale.item()})


if __name__ == "__main__":
    main()
