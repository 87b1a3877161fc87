"""Ablation and seed tables from DVC experiments: one row per experiment of a `dvc exp show --json` document.

`build_table` gives one row per baseline commit and experiment: the ablated params (LoRA rank, compressor,
inflation, findings weight, laterality flip per phase, corpus size, seed), the experiment's state, and one
system's main metrics with their 95 % CIs, exactly as the `evaluate` stage wrote them to reports/metrics.json in
that experiment, plus the token probe of reports/lime/token_probe.json; `markdown` renders it. `seed_runs`,
`seed_table` and `seeds_markdown` take the baseline commit and the experiments named `seed-<n>`: every system's
mean +- sd over the seeds, next to the baseline seed's CI, and the issue's must-show checks per seed.
`write_tables` writes both. The document comes from DVC (`python -m stages.ablations` runs `dvc exp show`); this
module only reads it, so it imports without DVC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from brain3d import config, fileio
from brain3d.metrics.formatting import LABELS, cell, markdown_table

HEADERS = {  # the ablated params: their column headers
    "phase2b.lora_rank": "LoRA r",
    "model.compressor": "compressor",
    "model.inflation": "inflation",
    "phase1.findings_weight": "findings 1",
    "phase1.laterality_flip": "flip 1",
    "phase2a.laterality_flip": "flip 2A",
    "phase2b.laterality_flip": "flip 2B",
    "corpus.n_subjects": "corpus",
    "phase1.corpus_findings": "corpus rows 1",
    "phase1.epochs": "epochs 1",
    "phase1.cell_weight": "cell targets",
    "phase1.bilateral_weight": "bilateral draws 1",
    "phase1.side_refit_epochs": "side refit",
    "generate.select": "decoder",
    "generate.guide": "guide",
    "generate.candidates": "k",
    "phase1.seed": "seed",
}
ABLATED = tuple(HEADERS)
METRICS = (
    "bleu1",
    "bleu4",
    "rougeL",
    "meteor",
    "cider",
    "bertscore",
    "lat_f1",
    "anat_f1",
    "path_f1",
    "healthy_specificity",
    "tumour_sensitivity",
)
METRICS_FILE = "reports/metrics.json"
PROBE_FILE = "reports/lime/token_probe.json"
PROBES = {"visual_tokens": "token probe", "cnn_3d": "3D CNN"}  # token_probe.json entries (accuracy)
SEED_METRICS = (
    "bleu1",
    "bertscore",
    "lat_f1",
    "anat_f1",
    "path_f1_neg",
    "healthy_specificity",
    "tumour_sensitivity",
)
PARAMS_FILE = "params.yaml"


def _revisions(doc: list[dict]) -> Iterator[tuple[dict, str, str, str, bool]]:
    """(revision, experiment name, baseline commit, state, is an experiment) for every baseline commit and
    experiment."""
    for commit in doc:
        if commit.get("rev") == "workspace":
            continue  # the workspace repeats the last `dvc exp run` or the HEAD commit
        base = commit.get("name") or commit["rev"][:7]
        yield commit, base, commit["rev"][:7], "failed" if commit.get("error") else "success", False
        for exp in sorted(commit.get("experiments") or [], key=lambda e: str(e.get("name") or "")):
            state = (exp.get("executor") or {}).get("state") or "success"
            for rev in exp.get("revs") or []:
                if rev.get("error") and state == "success":
                    state = "failed"
                yield (
                    rev,
                    exp.get("name") or rev.get("name") or rev["rev"][:7],
                    commit["rev"][:7],
                    state,
                    True,
                )


def _file_data(rev: dict, kind: str, path: str) -> dict:
    entry = ((rev.get("data") or {}).get(kind) or {}).get(path) or {}
    return entry.get("data") or {}


def _effective(params: dict) -> dict:
    """params.yaml as the stages saw it (shared sections + active profile), not validated: an experiment of an
    older commit may hold keys or values that today's schema refuses, and its row still shows them; raw params
    when they cannot be merged."""
    profiles = params.get(config.PROFILES_KEY)
    block = profiles.get(params.get("profile")) if isinstance(profiles, dict) else None
    if not isinstance(block, dict):
        return params
    try:
        return config.deep_merge({k: v for k, v in params.items() if k != config.PROFILES_KEY}, block)
    except (config.ParamsError, TypeError, AttributeError):
        return params


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def build_table(doc: list[dict], system: str = "phase2b", metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """One row per baseline commit and experiment: name, rev, baseline, state, ablated params, and for each
    metric its mean, low and high (NaN when the experiment has no result for `system`)."""
    records = []
    for rev, name, baseline, state, _ in _revisions(doc):
        params = _effective(_file_data(rev, "params", PARAMS_FILE))
        rec: dict = {
            "experiment": name,
            "rev": rev["rev"][:7],
            "baseline": baseline,
            "state": state,
            "system": system,
        }
        for key in ABLATED:
            value = config.get(params, key, None)
            rec[key] = value if not isinstance(value, (list, dict)) else json.dumps(value)
        values = _file_data(rev, "metrics", METRICS_FILE).get(system) if state == "success" else None
        for m in metrics:
            for suffix in ("", "_low", "_high"):
                rec[m + suffix] = _number((values or {}).get(m + suffix))
        probes = _file_data(rev, "metrics", PROBE_FILE) if state == "success" else {}
        for key in PROBES:
            rec[f"probe_{key}"] = _number((probes.get(key) or {}).get("accuracy"))
        records.append(rec)
    return pd.DataFrame(records)


def _show(value) -> str:
    """A param value as a table cell: blank when absent, 4 rather than 4.0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown(table: pd.DataFrame, system: str, metrics: tuple[str, ...] = METRICS) -> str:
    """The ablation table as GitHub markdown, mean [low, high] per metric, best mean per column in bold."""
    best = {m: table[m].max() for m in metrics} if len(table) else {}
    rows = []
    for r in table.to_dict("records"):
        params = [_show(r[k]) for k in ABLATED]
        if r["state"] != "success" or all(math.isnan(r[m]) for m in metrics):
            note = f"{r['state']}: no metrics" if r["state"] != "success" else f"no {system} metrics"
            rows.append([r["experiment"], r["rev"], *params, note])
            continue
        cells = [cell(r[m], r[m + "_low"], r[m + "_high"]) for m in metrics]
        cells = [
            f"**{c}**" if not math.isnan(r[m]) and r[m] == best[m] else c for c, m in zip(cells, metrics)
        ]
        probes = [_fraction(r[f"probe_{k}"]) for k in PROBES]
        rows.append([r["experiment"], r["rev"], *params, *cells, *probes])
    header = [
        "Experiment",
        "rev",
        *(HEADERS[k] for k in ABLATED),
        *(LABELS.get(m, m) for m in metrics),
        *PROBES.values(),
    ]
    return (
        f"# Ablations: {system}\n\n"
        f"One row per DVC experiment (`dvc exp show`) and per baseline commit; metrics of system `{system}` "
        f"from each experiment's {METRICS_FILE}: mean [95 % percentile bootstrap CI over test subjects]. "
        "Best mean per column in bold. Regenerate with `python -m stages.ablations`.\n\n"
        + markdown_table(header, rows)
    )


def _fraction(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.3f}".replace("0.", ".", 1)


def seed_runs(doc: list[dict]) -> list[tuple[str, int, dict, dict]]:
    """(experiment, seed, metrics.json, token_probe.json) of the baseline commit and its `seed-<n>` experiments
    that succeeded; the seed is phase1.seed (the seed experiments set phases 1, 2A and 2B alike). Of a document
    with several baseline commits, the first one's."""
    runs, first = [], None
    for rev, name, baseline, state, experiment in _revisions(doc):
        first = first or baseline
        if baseline != first or state != "success" or (experiment and not name.startswith("seed-")):
            continue
        params = _effective(_file_data(rev, "params", PARAMS_FILE))
        runs.append(
            (
                name,
                config.get(params, "phase1.seed", None),
                _file_data(rev, "metrics", METRICS_FILE),
                _file_data(rev, "metrics", PROBE_FILE),
            )
        )
    return runs


def seed_table(
    runs: list[tuple[str, int, dict, dict]], metrics: tuple[str, ...] = SEED_METRICS
) -> pd.DataFrame:
    """Long table: one row per (seed, system, metric) with mean, low, high; the probes as system `probe`."""
    rows = []
    for name, seed, values, probes in runs:
        for system, m in values.items():
            for metric in metrics:
                rows.append(
                    {
                        "experiment": name,
                        "seed": seed,
                        "system": system,
                        "metric": metric,
                        "mean": _number(m.get(metric)),
                        "low": _number(m.get(metric + "_low")),
                        "high": _number(m.get(metric + "_high")),
                    }
                )
        for key in PROBES:
            rows.append(
                {
                    "experiment": name,
                    "seed": seed,
                    "system": "probe",
                    "metric": key,
                    "mean": _number((probes.get(key) or {}).get("accuracy")),
                    "low": math.nan,
                    "high": math.nan,
                }
            )
    return pd.DataFrame(rows)


def seeds_markdown(long: pd.DataFrame, base_seed, metrics: tuple[str, ...] = SEED_METRICS) -> str:
    """Mean +- sd over seeds per system and metric (with the baseline seed's CI), then the per-seed checks."""
    seeds = sorted(long["seed"].unique())
    rows = []
    for system, part in long[long["system"] != "probe"].groupby("system", sort=False):
        cells = []
        for metric in metrics:
            per_seed = part[part["metric"] == metric].set_index("seed")
            if per_seed["mean"].isna().all():
                cells.append("")
                continue
            base = per_seed.loc[base_seed] if base_seed in per_seed.index else None
            ci = (
                f"; seed {base_seed}: {cell(base['mean'], base['low'], base['high'])}"
                if base is not None
                else ""
            )
            cells.append(
                f"{_fraction(per_seed['mean'].mean())} ± {_fraction(per_seed['mean'].std(ddof=1))}{ci}"
            )
        rows.append([system, *cells])
    table = markdown_table(["system", *(LABELS.get(m, m) for m in metrics)], rows)

    def value(seed, system, metric, col="mean"):
        hit = long[(long["seed"] == seed) & (long["system"] == system) & (long["metric"] == metric)]
        return float(hit[col].iloc[0]) if len(hit) else math.nan

    checks = []
    for seed in seeds:
        lat = [
            value(seed, s, "lat_f1", c)
            for s in ("phase2b", "phase2b_shuffled")
            for c in ("mean", "low", "high")
        ]
        neg = [
            value(seed, s, "path_f1_neg", c)
            for s in ("phase2b", "phase2b_shuffled")
            for c in ("mean", "low", "high")
        ]
        probe, cnn = value(seed, "probe", "visual_tokens"), value(seed, "probe", "cnn_3d")
        checks.append(
            [
                str(seed),
                cell(*lat[:3]),
                cell(*lat[3:]),
                "yes" if lat[1] > lat[5] else "no",
                cell(*neg[:3]),
                cell(*neg[3:]),
                "yes" if neg[1] > neg[5] else "no",
                _fraction(value(seed, "phase2b", "healthy_specificity")),
                _fraction(value(seed, "phase2b", "tumour_sensitivity")),
                _fraction(probe),
                _fraction(cnn),
            ]
        )
    check_table = markdown_table(
        [
            "seed",
            "2B Lat F1",
            "control Lat F1",
            "CIs apart",
            "2B Path F1 (neg.)",
            "control Path F1 (neg.)",
            "CIs apart",
            "healthy spec.",
            "tumour sens.",
            "token probe",
            "3D CNN",
        ],
        checks,
    )
    return (
        f"# Seeds: every system over {len(seeds)} seeds ({', '.join(map(str, seeds))})\n\n"
        "Phases 1, 2A and 2B (and `slices_ft`, which follows phase 2B's seed) trained with each seed "
        "(`seed-<n>` experiments of ./ablations.sh; the baseline commit is seed "
        f"{base_seed}); data, split, backbones and decoding fixed. Mean ± sd over seeds (sd with ddof 1), "
        f"and seed {base_seed}'s mean [95 % bootstrap CI over test subjects]. "
        "Regenerate with `python -m stages.ablations`.\n\n"
        + table
        + "\n\n## Per seed: phase 2B against the shuffled-token control, and the frozen tokens' probe\n\n"
        + check_table
    )


def write_tables(doc: list[dict], out: Path, system: str = "phase2b") -> list[str]:
    """Write `out`.{csv,md} (the ablation table of `system`) and, with more than one seed run, seeds.{csv,md}
    beside it; returns the markdown texts written."""
    table = build_table(doc, system)
    fileio.write_csv(out.with_suffix(".csv"), table)
    texts = [markdown(table, system)]
    fileio.write_text(out.with_suffix(".md"), texts[0])
    runs = seed_runs(doc)
    if len(runs) > 1:
        long = seed_table(runs)
        seeds_out = out.with_name("seeds")
        fileio.write_csv(seeds_out.with_suffix(".csv"), long)
        base_seed = next(seed for name, seed, *_ in runs if not name.startswith("seed-"))  # the commit's
        texts.append(seeds_markdown(long, base_seed))
        fileio.write_text(seeds_out.with_suffix(".md"), texts[1])
    return texts
