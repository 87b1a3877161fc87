"""Held-out check: trained models on a fresh phantom cohort, large enough to see what a 20-subject validation
split cannot (two bilateral cases, no midline one) and with no subject in common with the cohort.

The cohort comes from the project's own generator and preprocessing (`download` and `preprocess` params, another
seed), under .cache/brain3d/heldout/ so a second run reuses it. Each model writes one report per subject with
the `generate` settings; the table gives healthy specificity, tumour sensitivity (overall and by lesion volume),
and Lat F1 by laterality class. Design choices of the demo were judged with it (docs/design.md, docs/experiments.md).

    python benchmarks/heldout.py [--subjects 400] [--seed 2026] [--models models/phase2b ...] [--csv out.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((0, 15), (15, 50), (50, np.inf))  # whole-lesion ml bins


def cohort(n: int, seed: int, cfg: dict, workers: int) -> tuple[pd.DataFrame, Path]:
    """The held-out cohort, generated and preprocessed once: (manifest of the subjects that passed, volumes dir)."""
    from brain3d.data.phantom import generate_cohort
    from brain3d.data.preprocess import preprocess_cohort

    d, p = cfg["download"], cfg["preprocess"]
    if seed == d["seed"]:
        raise SystemExit(
            f"--seed {seed} is download.seed: the held-out cohort would repeat the cohort's subjects"
        )
    work = ROOT / ".cache" / "brain3d" / "heldout" / f"seed{seed}-n{n}"
    raw = generate_cohort(
        work / "raw",
        n_subjects=n,
        seed=seed,
        healthy_fraction=d["healthy_fraction"],
        laterality_mix=d["laterality_mix"],
        workers=workers,
        root=work,
    )
    qc, ok = preprocess_cohort(
        raw,
        work,
        work / "preprocessed",
        shape=tuple(p["shape"]),
        skull_strip=p["skull_strip"],
        fov_mm=p["fov_mm"],
        workers=workers,
        on_error="skip",
        min_similarity=p["min_brain_similarity"],
        sequence=p["sequence"],
        max_voxels=p["max_voxels"],
    )
    ok = ok.merge(qc[["subject", "lesion_ml"]], on="subject").sort_values("subject").reset_index(drop=True)
    if len(ok) < len(raw):
        print(
            f"{len(raw) - len(ok)} of {len(raw)} subjects refused by preprocessing (see {work}/preprocessed/qc.csv)"
        )
    return ok, work / "preprocessed" / "volumes"


def score(df: pd.DataFrame, preds: list[str]) -> dict:
    from brain3d.metrics.clinical import asserts_pathology, clinical_f1

    lat = np.asarray(clinical_f1(preds, list(df["report"]))["lat_f1"])
    asserts = np.array([asserts_pathology(p) for p in preds])
    tumour, healthy = (df["cohort"] == "tumour").to_numpy(), (df["cohort"] == "healthy").to_numpy()
    row = {
        "healthy spec.": f"{(~asserts[healthy]).sum()}/{healthy.sum()}",
        "tumour sens.": f"{asserts[tumour].sum()}/{tumour.sum()}",
    }
    for lo, hi in SIZES:
        sel = tumour & (df["lesion_ml"] >= lo).to_numpy() & (df["lesion_ml"] < hi).to_numpy()
        row[f"sens. {lo}-{hi:g} ml"] = f"{asserts[sel].sum()}/{sel.sum()}"
    row["Lat F1"] = f"{lat.mean():.3f}"
    for side in ("left", "right", "bilateral", "undefined"):
        sel = (df["laterality"] == side).to_numpy()
        row[f"Lat F1 {side}"] = f"{lat[sel].mean():.3f} (n={sel.sum()})" if sel.any() else "-"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=400)
    ap.add_argument("--seed", type=int, default=2026, help="the held-out cohort's download seed")
    ap.add_argument("--models", nargs="+", type=Path, default=[ROOT / "models/phase2b"])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--csv", type=Path, help="also write every report with its subject and model")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from brain3d import config, runtime

    runtime.set_offline_env()
    runtime.setup()
    from brain3d.generation import decoding_from_params, generate_reports
    from brain3d.models.model import Brain3D

    cfg = config.load(args.params)
    df, volumes = cohort(args.subjects, args.seed, cfg, args.workers)
    arrays = [np.load(volumes / f"{s}.npy") for s in df["subject"]]
    rows, written = [], []
    for model_dir in args.models:
        model = Brain3D.from_pretrained(model_dir, "cpu")
        preds = generate_reports(
            model,
            model.visual.encode(arrays),
            decoding_from_params(cfg["generate"]),
            batch_size=16,
            seed=cfg["generate"]["seed"],
        )
        rows.append({"model": str(model_dir), **score(df, preds)})
        written.append(
            df[["subject", "cohort", "laterality", "lesion_ml"]].assign(model=str(model_dir), report=preds)
        )
    print(pd.DataFrame(rows).set_index("model").T.to_markdown())
    if args.csv:
        pd.concat(written).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
