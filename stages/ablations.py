"""Ablation table from DVC experiments (not a DVC stage): reports/ablations.{md,csv}.

    python -m stages.ablations [--system phase2b] [--rev COMMIT | --all-commits] [--from-json exp_show.json]

Reads `dvc exp show --json` (run here through subprocess, or a saved document with --from-json) and writes
one row per experiment (and per baseline commit it hangs off): the ablated params (LoRA rank, compressor,
laterality flip per phase), the experiment's state, and one system's main metrics with their 95 % CIs,
exactly as the `evaluate` stage wrote them to reports/metrics.json in that experiment. ./ablations.sh
queues the grid, runs it and then calls this module. The table lives outside reports/tables/, which is the
`evaluate` stage's DVC output: a file added there would make DVC see that output as modified and re-run
`evaluate` (deleting the table) on the next `dvc repro`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from brain3d import config, io
from brain3d.metrics.tables import LABELS, cell, markdown_table

ABLATED = ("phase2b.lora_rank", "model.compressor", "phase1.laterality_flip", "phase1.findings_weight",
           "phase2a.laterality_flip", "phase2b.laterality_flip")
METRICS = ("bleu1", "bleu4", "rougeL", "meteor", "cider", "bertscore", "lat_f1", "anat_f1", "path_f1",
           "healthy_specificity", "tumour_sensitivity")
METRICS_FILE = "reports/metrics.json"
PARAMS_FILE = "params.yaml"
OUT = Path("reports/ablations")
HEADERS = {"phase2b.lora_rank": "LoRA r", "model.compressor": "compressor", "phase1.laterality_flip": "flip 1",
           "phase1.findings_weight": "findings 1", "phase2a.laterality_flip": "flip 2A",
           "phase2b.laterality_flip": "flip 2B"}


def exp_show(all_commits: bool = False, rev: str | None = None) -> list[dict]:
    """`dvc exp show --json` of the repository in the working directory (experiments of `rev`, default HEAD)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else []),
           *(["--rev", rev] if rev else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"ablations: `dvc exp show --json` failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout)


def _revisions(doc: list[dict]) -> Iterator[tuple[dict, str, str, str]]:
    """(revision, experiment name, baseline commit, state) for every baseline commit and experiment."""
    for commit in doc:
        if commit.get("rev") == "workspace":
            continue  # the workspace repeats the last `dvc exp run` or the HEAD commit
        base = commit.get("name") or commit["rev"][:7]
        yield commit, base, commit["rev"][:7], "failed" if commit.get("error") else "success"
        for exp in sorted(commit.get("experiments") or [], key=lambda e: str(e.get("name") or "")):
            state = (exp.get("executor") or {}).get("state") or "success"
            for rev in exp.get("revs") or []:
                if rev.get("error") and state == "success":
                    state = "failed"
                yield rev, exp.get("name") or rev.get("name") or rev["rev"][:7], commit["rev"][:7], state


def _file_data(rev: dict, kind: str, path: str) -> dict:
    entry = ((rev.get("data") or {}).get(kind) or {}).get(path) or {}
    return entry.get("data") or {}


def _effective(params: dict) -> dict:
    """params.yaml as the stages see it (shared sections + active profile); raw when it cannot resolve."""
    try:
        return config.resolve(params)
    except (ValueError, TypeError, AttributeError):
        return params


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def build_table(doc: list[dict], system: str = "phase2b", metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """One row per baseline commit and experiment: name, rev, baseline, state, ablated params, and for each
    metric its mean, low and high (NaN when the experiment has no result for `system`)."""
    records = []
    for rev, name, baseline, state in _revisions(doc):
        params = _effective(_file_data(rev, "params", PARAMS_FILE))
        rec: dict = {"experiment": name, "rev": rev["rev"][:7], "baseline": baseline, "state": state,
                     "system": system}
        for key in ABLATED:
            value = config.get(params, key, None)
            rec[key] = value if not isinstance(value, (list, dict)) else json.dumps(value)
        values = _file_data(rev, "metrics", METRICS_FILE).get(system) if state == "success" else None
        for m in metrics:
            for suffix in ("", "_low", "_high"):
                rec[m + suffix] = _number((values or {}).get(m + suffix))
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
        cells = [f"**{c}**" if not math.isnan(r[m]) and r[m] == best[m] else c for c, m in zip(cells, metrics)]
        rows.append([r["experiment"], r["rev"], *params, *cells])
    header = ["Experiment", "rev", *(HEADERS[k] for k in ABLATED), *(LABELS.get(m, m) for m in metrics)]
    return (f"# Ablations: {system}\n\n"
            f"One row per DVC experiment (`dvc exp show`) and per baseline commit; metrics of system `{system}` "
            f"from each experiment's {METRICS_FILE}: mean [95 % percentile bootstrap CI over test subjects]. "
            "Best mean per column in bold. Regenerate with `python -m stages.ablations`.\n\n"
            + markdown_table(header, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.ablations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="phase2b", help="system whose metrics fill the table (default: phase2b)")
    parser.add_argument("--rev", help="experiments queued on this baseline commit (default: HEAD)")
    parser.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD")
    parser.add_argument("--from-json", type=Path, help="a saved `dvc exp show --json` document instead of running dvc")
    parser.add_argument("--out", type=Path, default=OUT, help="output stem (default: reports/ablations)")
    args = parser.parse_args(argv)
    doc = json.loads(args.from_json.read_text()) if args.from_json else exp_show(args.all_commits, args.rev)
    table = build_table(doc, args.system)
    io.write_csv(args.out.with_suffix(".csv"), table)
    text = markdown(table, args.system)
    io.write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
