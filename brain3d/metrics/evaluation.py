"""Evaluation driver: every system's predictions (read and checked by `systems`) -> per-sample scores,
bootstrap CIs, paired differences, and the files the `evaluate` stage writes (tables via `formatting`, the
forest plot via `plots`, metrics.json). A not-run system becomes a row that says why; no number is ever filled
in for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from brain3d import fileio
from brain3d.metrics import clinical
from brain3d.metrics.formatting import LABELS, cell, latex_table, markdown_table, numeric_table, system_rows
from brain3d.metrics.plots import ci_long, forest_plot
from brain3d.metrics.resampling import CI_LEVEL, bootstrap, paired_difference, resample_indices
from brain3d.metrics.scoring import check_metrics, score
from brain3d.metrics.systems import System, check_subjects, load_systems, predictions_frames
from brain3d.metrics.text import describe_bertscore

COHORT_METRICS = ("healthy_specificity", "tumour_sensitivity")
NEGATION_METRICS = ("lat_f1_neg", "anat_f1_neg", "path_f1_neg")


def per_sample_scores(
    preds: pd.DataFrame,
    subjects: pd.DataFrame,
    metrics: list[str],
    *,
    bertscore_model: str | None,
    bertscore_layers: int | None,
) -> pd.DataFrame:
    """Scores per subject: the requested metrics, negation-aware clinical F1, specificity/sensitivity."""
    predictions, references = preds["prediction"].tolist(), preds["reference"].tolist()
    df = score(
        predictions, references, metrics, bertscore_model=bertscore_model, bertscore_layers=bertscore_layers
    )
    negated = clinical.clinical_f1(predictions, references, negation_aware=True)
    for col in clinical.F1_COLUMNS.values():
        df[f"{col}_neg"] = negated[col]
    asserts = np.array([clinical.asserts_pathology(p) for p in predictions], dtype=float)
    cohort = subjects["cohort"].to_numpy()
    df["healthy_specificity"] = np.where(cohort == "healthy", 1.0 - asserts, np.nan)
    df["tumour_sensitivity"] = np.where(cohort == "tumour", asserts, np.nan)
    df.index = pd.Index(subjects["subject"], name="subject")
    return df


def best_baseline(
    ran: list[System], cis: dict[str, pd.DataFrame], metrics: list[str]
) -> tuple[str | None, str]:
    """The baseline that ran with the highest mean over `metrics` except CIDEr (scale 0-10), and a
    sentence stating the choice; (None, ...) when no baseline ran."""
    summary = [m for m in metrics if m != "cider"] or metrics
    means = {s.name: float(np.nanmean(cis[s.name].loc[summary, "mean"])) for s in ran if s.baseline}
    rule = "Best baseline: highest mean over " + ", ".join(LABELS[m] for m in summary)
    if not means:
        return None, rule + ": no baseline ran, so no differences."
    best = max(means, key=means.get)
    return best, rule + f": {best} ({means[best]:.3f})."


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def evaluate_systems(
    pred_dir: Path,
    subjects: pd.DataFrame,
    out_dir: Path,
    *,
    metrics: list[str] | None = None,
    bertscore_model: str | None,
    bertscore_layers: int | None,
    n_resamples: int,
    seed: int,
    reference_system: str = "phase2b",
) -> dict:
    """Score every system in `pred_dir` on `subjects` and write tables, figures and metrics to `out_dir`.

    `bertscore_model`, `bertscore_layers`, `n_resamples` and `seed` are the `evaluate` params (no defaults:
    None for the BERTScore keys means the shipped encoder, as params.yaml's null does).

    Writes tables/main.{md,csv,tex}, tables/clinical_negation.{md,csv}, tables/paired_differences.{md,csv},
    per_sample/<system>.csv, metrics.json, figures/forest.png and plots/ci.csv. Returns a short summary.
    `reference_system` (phase 2B) is compared, subject by subject, with every other system that ran; the
    best baseline (metadata "baseline": true: the highest mean over the text and clinical-F1 metrics
    except CIDEr, whose per-sample scale is 0-10) is named in that table.
    """
    out_dir = Path(out_dir)
    metric_cols = check_metrics(metrics)
    main_cols = metric_cols + list(COHORT_METRICS)
    subjects = check_subjects(subjects)
    n = len(subjects)
    systems = load_systems(Path(pred_dir))
    ran = [s for s in systems if s.ok]

    frames = predictions_frames(ran, subjects)

    indices = resample_indices(n, n_resamples, seed)
    scores, cis = {}, {}
    for s in ran:
        scores[s.name] = per_sample_scores(
            frames[s.name],
            subjects,
            metric_cols,
            bertscore_model=bertscore_model,
            bertscore_layers=bertscore_layers,
        )
        cis[s.name] = bootstrap(scores[s.name], indices=indices)
        out = scores[s.name].reset_index().merge(subjects, on="subject", how="left")
        fileio.write_csv(out_dir / "per_sample" / f"{s.name}.csv", out)

    n_cohort = subjects["cohort"].value_counts()
    bert = describe_bertscore(bertscore_model, bertscore_layers) if "bertscore" in metric_cols else ""
    boot = (
        f"Mean [{CI_LEVEL:.0%} CI]: percentile bootstrap over subjects, {n_resamples} resamples, seed {seed}, "
        "one resample index matrix shared by all systems and metrics."
    )
    n_line = (
        f"n = {n} test subjects (tumour {int(n_cohort.get('tumour', 0))}, "
        f"healthy {int(n_cohort.get('healthy', 0))}); every system that ran is scored on all of them."
    )
    notes = [n_line, boot, "Best mean per column in bold."]
    if bert:
        notes.append(bert + ".")
    if "cider" in metric_cols:
        notes.append(
            "CIDEr: CIDEr-D per sample (pycocoevalcap, document frequencies from the test references, "
            "scale 0-10)."
        )
    notes.append(
        "Healthy spec.: share of healthy subjects whose report asserts no pathology; Tumour sens.: share "
        "of tumour subjects whose report asserts pathology (negation-aware keyword rule)."
    )
    descriptions = [
        f"- {s.name}: {s.description or 'no description'}" + (" (baseline)" if s.baseline else "")
        for s in systems
    ]

    tables = out_dir / "tables"
    header = ["System", *(LABELS[m] for m in main_cols)]
    main_rows = system_rows(systems, cis, main_cols)
    fileio.write_text(
        tables / "main.md",
        "# Main results\n\n"
        + "\n".join(notes)
        + "\n\n"
        + markdown_table(header, main_rows)
        + "\n"
        + "\n".join(descriptions)
        + "\n",
    )
    fileio.write_csv(tables / "main.csv", numeric_table(systems, cis, main_cols, n))
    fileio.write_text(tables / "main.tex", latex_table(header, main_rows, " ".join(notes)))

    neg_header = ["System", *(LABELS[m] for m in NEGATION_METRICS)]
    fileio.write_text(
        tables / "clinical_negation.md",
        "# Supplementary: negation-aware clinical F1\n\n"
        'Keyword F1 as in the main table, but keywords inside a negation scope ("no edema", '
        '"without necrosis", "negative for mass", "edema is not seen") are not counted as '
        f"findings, in predictions and references alike.\n{n_line}\n{boot}\n\n"
        + markdown_table(neg_header, system_rows(systems, cis, list(NEGATION_METRICS))),
    )
    fileio.write_csv(tables / "clinical_negation.csv", numeric_table(systems, cis, list(NEGATION_METRICS), n))

    best, choice = best_baseline(ran, cis, metric_cols)
    ref_scores = scores[reference_system][main_cols] if reference_system in scores else None
    diffs = {
        s.name: paired_difference(ref_scores, scores[s.name][main_cols], indices=indices)
        for s in ran
        if ref_scores is not None and s.name != reference_system
    }
    diff_rows = [
        [
            f"{reference_system} − {name}" + (" (best baseline)" if name == best else ""),
            *(
                cell(*d.loc[m, ["mean", "low", "high"]])
                + (" *" if d.loc[m, "low"] > 0 or d.loc[m, "high"] < 0 else "")
                for m in main_cols
            ),
        ]
        for name, d in diffs.items()
    ]
    missing = (
        "" if ref_scores is not None else f"\n{reference_system} did not run, so there are no differences.\n"
    )
    fileio.write_text(
        tables / "paired_differences.md",
        f"# Paired differences: {reference_system} minus every other system\n\n"
        f"{reference_system} minus each system, per subject, bootstrapped with the same resample "
        f"indices (positive: {reference_system} is better). * marks a {CI_LEVEL:.0%} CI that excludes "
        f"0.\n{choice}\n{n_line}\n{boot}\n{missing}\n" + markdown_table(header, diff_rows),
    )
    diff_long = [d.reset_index().assign(system=reference_system, versus=name) for name, d in diffs.items()]
    fileio.write_csv(
        tables / "paired_differences.csv",
        pd.concat(diff_long, ignore_index=True)[["system", "versus", "metric", "mean", "low", "high"]]
        if diff_long
        else pd.DataFrame(columns=["system", "versus", "metric", "mean", "low", "high"]),
    )

    all_cols = main_cols + list(NEGATION_METRICS)
    fileio.write_json(
        out_dir / "metrics.json",
        {
            name: {
                k: _json_number(v)
                for m in all_cols
                for k, v in (
                    (m, ci.loc[m, "mean"]),
                    (f"{m}_low", ci.loc[m, "low"]),
                    (f"{m}_high", ci.loc[m, "high"]),
                )
            }
            for name, ci in cis.items()
        },
    )
    fileio.write_csv(
        out_dir / "plots" / "ci.csv",
        ci_long(cis, main_cols)
        if cis
        else pd.DataFrame(columns=["system", "metric", "label", "mean", "low", "high"]),
    )
    forest_plot(
        out_dir / "figures" / "forest.png",
        systems,
        cis,
        main_cols,
        f"Test set, n = {n}: mean and {CI_LEVEL:.0%} bootstrap CI ({n_resamples} resamples)",
    )

    ref = cis.get(reference_system)
    return {
        "n_subjects": n,
        "systems": {s.name: s.status for s in systems},
        "best_baseline": best,
        "bertscore": bert,
        "reference_system": reference_system,
        "reference": {m: _json_number(ref.loc[m, "mean"]) for m in main_cols} if ref is not None else None,
        "reference_minus_best_baseline": (
            {m: _json_number(diffs[best].loc[m, "mean"]) for m in main_cols} if best in diffs else None
        ),
    }
