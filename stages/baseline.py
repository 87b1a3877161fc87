"""DVC stage `baseline@<name>`: a baseline's reports for exactly our test subjects
(reports/predictions/<name>.jsonl + .json). A baseline that cannot run here gets a metadata file that
says why, and no numbers.

    python -m stages.baseline medgemma_slices | slices_ft | med3dvlm
"""

import sys

import pandas as pd

from brain3d import entrypoint, fileio, paths, runtime
from brain3d.baselines import NotRunnable, med3dvlm
from brain3d.baselines.slices import SlicePrompt, SliceSequence, finetune, load_processor
from brain3d.cache import cache_dir
from brain3d.data import manifest
from brain3d.data.split import SplitSubjects
from brain3d.generation import decoding_from_params, write_predictions
from brain3d.models.backbones import read_backbones, record_language_model
from brain3d.training.loop import TrainConfig
from brain3d.training.phases import run_key

DESCRIPTIONS = {
    "medgemma_slices": "MedGemma slice sequence, zero-shot (demo: the Gemma 3 stand-in)",
    "slices_ft": "slice sequence + LoRA fine-tune, phase 2B budget",
    "med3dvlm": "Med3DVLM-Qwen-2.5-7B, zero-shot",
}


def slice_model(cfg: dict) -> SliceSequence:
    b, bb = cfg["baselines"], read_backbones(paths.BACKBONES)
    lm = record_language_model(bb, keep_vision=True)
    lm.full.to(runtime.device())
    prompt = SlicePrompt(b["instruction"], b["question"], b["n_slices"])
    return SliceSequence(lm, load_processor(bb["lm"]), prompt, decoding=decoding_from_params(cfg["generate"]))


def main() -> None:
    name = sys.argv[1]
    out_dir = paths.MODELS / "baselines" / name
    with entrypoint.run(f"baseline@{name}", ("baselines", "generate")) as (cfg, tracker):
        splits, df = pd.read_csv(paths.SPLITS), manifest.read(paths.MANIFEST)
        test = SplitSubjects.load(splits, df, "test", paths.VOLUMES)
        volumes = [test.volume(i) for i in range(len(test))]
        meta = {
            "system": name,
            "status": "ok",
            "reason": "",
            "baseline": True,
            "description": DESCRIPTIONS[name],
        }
        preds: list[str] = []
        try:
            if name == "med3dvlm":
                preds = med3dvlm.predict(
                    med3dvlm.Med3DVLMConfig.from_params(cfg["baselines"]["med3dvlm"]), volumes
                )
            else:
                seq = slice_model(cfg)
                if name == "slices_ft":
                    # phase 2B's budget; its 3D-only key is not a dependency (dvc.yaml) nor part of the resume key
                    p = {k: v for k, v in cfg["phase2b"].items() if k != "laterality_flip"}
                    runtime.seed_everything(p["seed"])
                    train, val = (SplitSubjects.load(splits, df, s, paths.VOLUMES) for s in ("train", "val"))
                    data = {
                        c: ([x.volume(i) for i in range(len(x))], x.reports)
                        for c, x in (("t", train), ("v", val))
                    }
                    key = run_key(
                        {"baselines": cfg["baselines"], "phase2b": p},
                        [paths.BACKBONES, paths.SPLITS, paths.MANIFEST],
                    )
                    peft_model, result = finetune(
                        seq,
                        data["t"],
                        data["v"],
                        lora_rank=p["lora_rank"],
                        lora_alpha=p["lora_alpha"],
                        lora_dropout=p["lora_dropout"],
                        lr_projector=p["lr"],
                        lr_lora=p["lr_lora"],
                        normal_weight=p["normal_weight"],
                        bilateral_weight=p["bilateral_weight"],
                        cfg=TrainConfig.from_params(p),
                        state_dir=cache_dir("slices_ft", key),
                        tracker=tracker,
                    )
                    peft_model.save_pretrained(out_dir / "adapter")
                    fileio.write_csv(out_dir / "curve.csv", pd.DataFrame(result.history))
                preds = seq.predict(
                    volumes, batch_size=cfg["baselines"]["batch_size"], seed=cfg["generate"]["seed"]
                )
        except NotRunnable as exc:
            meta.update(status="not_run", reason=str(exc).removeprefix("not run: "))
            print(f"baseline@{name}: {exc}")
        write_predictions(paths.PREDICTIONS, name, test, preds, meta=meta)
        fileio.write_json(out_dir / "baseline.json", meta)
        tracker.log_metrics({"ran": float(meta["status"] == "ok"), "n_test": len(preds)})
        tracker.log_artifact(paths.PREDICTIONS / f"{name}.json", "predictions")


if __name__ == "__main__":
    main()
