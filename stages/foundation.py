"""DVC stage `foundation`: the backbones. demo -> trains the stand-ins (SigLIP on the slices of the TRAIN
split and of the pretraining corpus, data/corpus, validated on the VAL split; Gemma 3 on the TRAIN reports)
and saves them in Hugging Face format; paper -> verifies the local MedSigLIP-448 / MedGemma-1.5-4B-IT
snapshots and records their revisions. Writes models/foundation/backbones.json.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from brain3d import entrypoint, fileio, paths
from brain3d.cache import cache_dir
from brain3d.data import manifest
from brain3d.models import foundation as fd
from brain3d.models.backbones import verify_local
from brain3d.runtime import seed_everything
from brain3d.tracking import Prefixed
from brain3d.training import standins
from brain3d.training.loop import TrainConfig

OUT = paths.FOUNDATION


def _split_items(split: str, splits: pd.DataFrame, df: pd.DataFrame):
    rows = splits[splits["split"] == split].merge(df, on="subject").sort_values("subject")
    items = []
    for sid in rows["subject"]:
        seg = paths.SEGS / f"{sid}.npy"
        items.append((np.load(paths.VOLUMES / f"{sid}.npy"), np.load(seg) if seg.exists() else None))
    return items, list(rows["report"])


def _corpus_items() -> list:
    """The pretraining corpus (stages/corpus.py) as (volume, seg) pairs, memory-mapped: empty on the paper
    profile or with corpus.n_subjects 0."""
    _, volumes, segs = manifest.read_corpus(paths.CORPUS)
    return list(zip(volumes, segs))


def main() -> None:
    with entrypoint.run("foundation", ("foundation",)) as (cfg, tracker):
        f = cfg["foundation"]
        if f["source"] == "local":
            record = verify_local(f, Path.cwd())
            for name in ("siglip", "gemma3"):
                fileio.write_text(paths.CURVES / f"foundation_{name}.csv", "epoch,train_loss,val_loss\n")
        else:
            splits, df = pd.read_csv(paths.SPLITS), manifest.read(paths.MANIFEST)
            volumes, reports = {}, {}
            for split in ("train", "val"):
                volumes[split], reports[split] = _split_items(split, splits, df)
            seed_everything(f["siglip_train"]["seed"])
            captions = [c for v, s in volumes["train"] for _, c in standins.slice_captions(v, s)]
            tokenizer = fd.train_tokenizer(
                reports["train"] + captions + [cfg["model"]["prompt"]], f["tokenizer_vocab"]
            )
            key = fileio.fingerprint(
                {
                    "foundation": f,
                    "splits": fileio.sha256_file(paths.SPLITS),
                    "manifest": fileio.sha256_file(paths.MANIFEST),
                    "preprocess": cfg["preprocess"],
                    "corpus": fileio.sha256_file(paths.CORPUS / "manifest.csv"),
                }
            )  # file hashes
            pretrain = {"train": volumes["train"] + _corpus_items(), "val": volumes["val"]}
            siglip, res_s = standins.train_siglip(
                pretrain,
                tokenizer,
                f["siglip"],
                TrainConfig.from_params(f["siglip_train"]),
                cache_dir("foundation-siglip", key),
                Prefixed(tracker, "siglip_"),
            )
            fd.save_siglip(siglip, tokenizer, OUT / "siglip")
            seed_everything(f["gemma_train"]["seed"])
            gemma, res_g = standins.train_gemma3(
                siglip,
                tokenizer,
                reports,
                f["gemma"],
                TrainConfig.from_params(f["gemma_train"]),
                cache_dir("foundation-gemma3", key),
                Prefixed(tracker, "gemma3_"),
            )
            fd.save_gemma3(gemma, tokenizer, OUT / "gemma3")
            for name, res in (("siglip", res_s), ("gemma3", res_g)):
                fileio.write_csv(paths.CURVES / f"foundation_{name}.csv", pd.DataFrame(res.history))
                tracker.log_metrics({f"{name}_best_val": res.best_val, f"{name}_epochs": len(res.history)})
            weights = [fileio.sha256_file(OUT / d / "model.safetensors") for d in ("siglip", "gemma3")]
            record = {
                "source": "standins",
                "vision": str(OUT / "siglip"),
                "lm": str(OUT / "gemma3"),
                "dtype": f["dtype"],
                "load_in_4bit": f["load_in_4bit"],
                "allow_cpu_fallback": f["allow_cpu_fallback"],
                "fingerprint": fileio.fingerprint(weights),
            }
        fileio.write_json(paths.BACKBONES, record)
        tracker.log_artifact(paths.BACKBONES)


if __name__ == "__main__":
    main()
