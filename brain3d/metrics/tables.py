"""Evaluation driver: per-sample scores of every system, bootstrap CIs, tables, forest plot, DVC metrics.

Input, per system, in `pred_dir`: `<system>.jsonl` (one {"subject", "split", "reference", "prediction"}
per line) and `<system>.json` ({"system", "status": "ok" | "not_run", "reason", "description",
"baseline": bool}). A not-run system becomes a row that says why; no number is ever filled in for it.
Every system that ran must cover exactly the test subjects, with the same reference texts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brain3d import io
from brain3d.metrics import clinical
from brain3d.metrics.resampling import CI_LEVEL, bootstrap, paired_difference, resample_indices
from brain3d.metrics.scoring import check_metrics, score
from brain3d.metrics.text import describe_bertscore

LABELS = {
    "bleu1": "B-1",
    "bleu4": "B-4",
    "rouge1": "R-1",
    "rouge2": "R-2",
    "rougeL": "R-L",
    "meteor": "METEOR",
    "cider": "CIDEr",
    "bertscore": "BERTScore",
    "lat_f1": "Lat F1",
    "anat_f1": "Anat F1",
    "path_f1": "Path F1",
    "healthy_specificity": "Healthy spec.",
    "tumour_sensitivity": "Tumour sens.",
    "lat_f1_neg": "Lat F1 (neg.)",
    "anat_f1_neg": "Anat F1 (neg.)",
    "path_f1_neg": "Path F1 (neg.)",
}
COHORT_METRICS = ("healthy_specificity", "tumour_sensitivity")
NEGATION_METRICS = ("lat_f1_neg", "anat_f1_neg", "path_f1_neg")
COHORTS = ("tumour", "healthy")


@dataclass
class System:
    """One system's metadata and, when it ran, its predictions."""

    name: str
    status: str
    reason: str = ""
    description: str = ""
    baseline: bool = False
    rows: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def load_systems(pred_dir: Path) -> list[System]:
    """Read every `<system>.json` metadata file (and its predictions) in `pred_dir`."""
    pred_dir = Path(pred_dir)
    metas = sorted(pred_dir.glob("*.json"))
    orphans = sorted(p.name for p in pred_dir.glob("*.jsonl") if not p.with_suffix(".json").is_file())
    if orphans:
        raise ValueError(f"predictions without metadata (<system>.json) in {pred_dir}: {orphans}")
    if not metas:
        raise FileNotFoundError(f"no system metadata (<system>.json) in {pred_dir}")
    systems = []
    for path in metas:
        meta = io.read_json(path)
        name = path.stem
        if meta.get("system", name) != name:
            raise ValueError(f"{path}: 'system' is {meta['system']!r} but the file is named for {name!r}")
        status = meta.get("status")
        if status not in ("ok", "not_run"):
            raise ValueError(f"{path}: status must be 'ok' or 'not_run', got {status!r}")
        preds = path.with_suffix(".jsonl")
        rows = io.read_jsonl(preds) if preds.is_file() else []
        if status == "not_run" and rows:
            warnings.warn(f"{name} is marked not_run; its {len(rows)} predictions are ignored", stacklevel=2)
            rows = []
        if status == "ok" and not rows:
            raise ValueError(f"{name} is marked ok but {preds} has no predictions")
        systems.append(
            System(
                name,
                status,
                meta.get("reason") or "reason not given",
                meta.get("description", ""),
                bool(meta.get("baseline", False)),
                rows,
            )
        )
    return sorted(systems, key=lambda s: (not s.baseline, s.name))


def _few(items: list[str], k: int = 10) -> str:
    return ", ".join(items[:k]) + (f" ... ({len(items)} in all)" if len(items) > k else "")


def check_subjects(subjects: pd.DataFrame) -> pd.DataFrame:
    """The test subjects sorted by id (the row order every resample index refers to)."""
    missing = {"subject", "cohort"} - set(subjects.columns)
    if missing:
        raise ValueError(f"subjects table lacks column(s) {sorted(missing)}")
    dup = subjects["subject"][subjects["subject"].duplicated()].astype(str).tolist()
    if dup:
        raise ValueError(f"duplicate test subjects: {_few(dup)}")
    bad = sorted(set(subjects["cohort"]) - set(COHORTS))
    if bad:
        raise ValueError(f"unknown cohort(s) {bad}; expected {list(COHORTS)}")
    out = subjects.assign(subject=subjects["subject"].astype(str)).sort_values("subject")
    return out.reset_index(drop=True)


def predictions_frame(system: System, subjects: pd.DataFrame) -> pd.DataFrame:
    """A system's predictions indexed by subject in `subjects` order; a clear error on any mismatch."""
    for i, row in enumerate(system.rows, 1):
        lacking = [k for k in ("subject", "reference", "prediction") if not isinstance(row.get(k), str)]
        if lacking:
            raise ValueError(f"{system.name}, prediction line {i}: {lacking} missing or not a string")
    df = pd.DataFrame(system.rows)
    dup = df["subject"][df["subject"].duplicated()].tolist()
    want, have = set(subjects["subject"]), set(df["subject"])
    if dup or want != have:
        raise ValueError(
            f"{system.name} does not cover exactly the {len(want)} test subjects: "
            f"missing [{_few(sorted(want - have))}], extra [{_few(sorted(have - want))}], "
            f"duplicated [{_few(sorted(set(dup)))}]"
        )
    return df.set_index("subject").loc[subjects["subject"], ["reference", "prediction"]]


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


def cell(mean: float, low: float, high: float) -> str:
    """'mean [low, high]' with three decimals ('n/a' when the metric has no subjects)."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _best(cis: dict[str, pd.DataFrame], metric: str) -> float:
    means = [ci.loc[metric, "mean"] for ci in cis.values() if not math.isnan(ci.loc[metric, "mean"])]
    return max(means) if means else math.nan


def _rows(
    systems: list[System], cis: dict[str, pd.DataFrame], metrics: list[str], bold: str
) -> list[list[str]]:
    """Table body: one row per system; not-run rows carry only their reason."""
    rows = []
    for s in systems:
        if not s.ok:
            rows.append([s.name, f"not run: {s.reason}"])
            continue
        cells = []
        for m in metrics:
            text = cell(*cis[s.name].loc[m, ["mean", "low", "high"]])
            cells.append(bold % text if cis[s.name].loc[m, "mean"] == _best(cis, m) else text)
        rows.append([s.name, *cells])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table; short rows (not-run systems) are padded with blank cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r + [""] * (len(header) - len(r))) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_TEX_ESCAPES.get(char, char) for char in text)


def latex_table(header: list[str], rows: list[list[str]], caption: str) -> str:
    """A booktabs LaTeX table; a not-run row spans all metric columns with its reason."""
    body = []
    for r in rows:
        if len(r) < len(header):
            body.append(f"{r[0]} & \\multicolumn{{{len(header) - 1}}}{{l}}{{{r[1]}}} \\\\")
        else:
            body.append(" & ".join(r) + r" \\")
    return "\n".join(
        [
            "% Generated by brain3d.metrics.tables.evaluate_systems; do not edit.",
            r"\begin{table}[t]",
            r"\centering",
            r"\scriptsize",
            f"\\caption{{{caption}}}",
            r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
            r"\toprule",
            " & ".join(header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def numeric_table(
    systems: list[System], cis: dict[str, pd.DataFrame], metrics: list[str], n: int
) -> pd.DataFrame:
    """Wide CSV: per system its status, n and, for each metric, mean/low/high (blank when not run)."""
    records = []
    for s in systems:
        rec: dict = {
            "system": s.name,
            "status": s.status,
            "baseline": s.baseline,
            "n": n if s.ok else None,
            "note": "" if s.ok else f"not run: {s.reason}",
        }
        for m in metrics:
            ci = cis[s.name].loc[m] if s.ok else None
            rec.update(
                {
                    m: ci["mean"] if s.ok else None,
                    f"{m}_low": ci["low"] if s.ok else None,
                    f"{m}_high": ci["high"] if s.ok else None,
                }
            )
        rec["description"] = s.description
        records.append(rec)
    return pd.DataFrame(records).astype({"n": "Int64"})


def forest_plot(
    path: Path, systems: list[System], cis: dict[str, pd.DataFrame], metrics: list[str], title: str
) -> None:
    """One panel per metric: each system's mean with its 95 % CI; not-run systems are labelled as such."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    height = 0.32 * len(systems) + 1.1
    fig = Figure(figsize=(3.4 * ncols + 1.2, height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    ys = np.arange(len(systems))[::-1]
    for k, ax in enumerate(axes.flat):
        if k >= len(metrics):
            ax.set_visible(False)
            continue
        m = metrics[k]
        for y, s in zip(ys, systems):
            mean = cis[s.name].loc[m, "mean"] if s.ok else math.nan
            if math.isnan(mean):
                ax.text(
                    0.02,
                    y,
                    "not run" if not s.ok else "n/a",
                    transform=ax.get_yaxis_transform(),
                    va="center",
                    fontsize=8,
                    color="0.5",
                    style="italic",
                )
                continue
            low, high = cis[s.name].loc[m, ["low", "high"]]
            ax.errorbar(
                mean,
                y,
                xerr=[[mean - low], [high - mean]],
                fmt="o",
                ms=4,
                capsize=3,
                color="C3" if s.baseline else "C0",
            )
        if m != "cider":  # every other metric lies in [0, 1]: a common scale reads faster
            ax.set_xlim(-0.03, 1.03)
        ax.set_title(LABELS.get(m, m), fontsize=10)
        ax.set_yticks(ys, [s.name for s in systems] if k % ncols == 0 else [""] * len(systems), fontsize=8)
        ax.set_ylim(-0.7, len(systems) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    handles = [
        Line2D([], [], color=c, marker="o", label=lab) for c, lab in (("C3", "baseline"), ("C0", "other"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)


def _long(cis: dict[str, pd.DataFrame], metrics: list[str]) -> pd.DataFrame:
    """Long CSV (system, metric, label, mean, low, high) that `dvc plots` can draw."""
    frames = [ci.loc[metrics].reset_index().assign(system=name) for name, ci in cis.items()]
    df = pd.concat(frames, ignore_index=True)
    df["label"] = df["metric"].map(lambda m: LABELS.get(m, m))
    return df[["system", "metric", "label", "mean", "low", "high"]]


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

    frames = {s.name: predictions_frame(s, subjects) for s in ran}
    if ran:
        first = ran[0].name
        for name, df in frames.items():
            differ = df.index[df["reference"].str.strip() != frames[first]["reference"].str.strip()].tolist()
            if differ:
                raise ValueError(f"{name} and {first} have different reference texts for: {_few(differ)}")

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
        io.write_csv(out_dir / "per_sample" / f"{s.name}.csv", out)

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
    io.write_text(
        tables / "main.md",
        "# Main results\n\n"
        + "\n".join(notes)
        + "\n\n"
        + markdown_table(header, _rows(systems, cis, main_cols, "**%s**"))
        + "\n"
        + "\n".join(descriptions)
        + "\n",
    )
    io.write_csv(tables / "main.csv", numeric_table(systems, cis, main_cols, n))
    io.write_text(
        tables / "main.tex",
        latex_table(
            [_tex(h) for h in header],
            [[_tex(c) for c in r] for r in _rows(systems, cis, main_cols, "\x00%s\x01")],
            _tex(" ".join(notes)),
        )
        .replace("\x00", r"\textbf{")
        .replace("\x01", "}"),
    )

    neg_header = ["System", *(LABELS[m] for m in NEGATION_METRICS)]
    io.write_text(
        tables / "clinical_negation.md",
        "# Supplementary: negation-aware clinical F1\n\n"
        'Keyword F1 as in the main table, but keywords inside a negation scope ("no edema", '
        '"without necrosis", "negative for mass", "edema is not seen") are not counted as '
        f"findings, in predictions and references alike.\n{n_line}\n{boot}\n\n"
        + markdown_table(neg_header, _rows(systems, cis, list(NEGATION_METRICS), "**%s**")),
    )
    io.write_csv(tables / "clinical_negation.csv", numeric_table(systems, cis, list(NEGATION_METRICS), n))

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
    io.write_text(
        tables / "paired_differences.md",
        f"# Paired differences: {reference_system} minus every other system\n\n"
        f"{reference_system} minus each system, per subject, bootstrapped with the same resample "
        f"indices (positive: {reference_system} is better). * marks a {CI_LEVEL:.0%} CI that excludes "
        f"0.\n{choice}\n{n_line}\n{boot}\n{missing}\n" + markdown_table(header, diff_rows),
    )
    diff_long = [d.reset_index().assign(system=reference_system, versus=name) for name, d in diffs.items()]
    io.write_csv(
        tables / "paired_differences.csv",
        pd.concat(diff_long, ignore_index=True)[["system", "versus", "metric", "mean", "low", "high"]]
        if diff_long
        else pd.DataFrame(columns=["system", "versus", "metric", "mean", "low", "high"]),
    )

    all_cols = main_cols + list(NEGATION_METRICS)
    io.write_json(
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
    io.write_csv(
        out_dir / "plots" / "ci.csv",
        _long(cis, main_cols)
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
