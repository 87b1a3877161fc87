"""DVC stage `baseline@<name>`: a baseline's reports for exactly our test subjects
(reports/predictions/<name>.jsonl + .json). A baseline that cannot run here gets a metadata file that
says why, and no numbers.

    python -m stages.baseline medgemma_slices | slices_ft | med3dvlm | braingemma3d_release
"""

import sys

import pandas as pd

from brain3d import entrypoint, fileio, paths, runtime
from brain3d.baselines import NotRunnable, braingemma3d, med3dvlm
from brain3d.baselines.slices import SlicePrompt, SliceSequence, finetune, load_processor
from brain3d.cache import cache_dir
from brain3d.data import manifest
from brain3d.data.split import SplitSubjects
from brain3d.generation import decoding_from_params, generate_reports, write_predictions
from brain3d.models.backbones import read_backbones, record_language_model
from brain3d.training.loop import TrainConfig
from brain3d.training.phases import run_key

DESCRIPTIONS = {
    "medgemma_slices": "MedGemma slice sequence, zero-shot (demo: the Gemma 3 stand-in)",
    "slices_ft": "slice sequence + LoRA fine-tune, phase 2B budget",
    "med3dvlm": "Med3DVLM-Qwen-2.5-7B, zero-shot",
    "braingemma3d_release": "the authors' released BrainGemma3D weights, its own inference and decoding",
}


def release_predictions(
    cfg: dict, test: SplitSubjects, volumes: list, df: pd.DataFrame, meta: dict
) -> list[str]:
    """The released BrainGemma3D's reports of the test subjects (`volumes`: their preprocessed volumes), or
    NotRunnable without a snapshot; its provenance goes into `meta`."""
    rcfg = braingemma3d.ReleaseBaselineConfig.from_params(cfg["baselines"]["braingemma3d_release"])
    model, card = braingemma3d.load(rcfg, runtime.device())
    raw = [manifest.resolve_path(p, ".") for p in df.set_index("subject").loc[test.subjects, "volume"]]
    inputs = braingemma3d.volumes(rcfg, volumes, raw)
    meta["release"] = braingemma3d.provenance(rcfg, card)
    meta["description"] += f" ({rcfg.loader} loader, volumes {'x'.join(map(str, rcfg.volume_shape))})"
    g = cfg["generate"]
    return generate_reports(
        model,
        model.visual.encode(inputs),
        decoding_from_params(card["decoding"]),
        batch_size=g["batch_size"],
        seed=g["seed"],
        desc="braingemma3d_release",
    )


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
            if name == "braingemma3d_release":
                preds = release_predictions(cfg, test, volumes, df, meta)
            elif name == "med3dvlm":
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
