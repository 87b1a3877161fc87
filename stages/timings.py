"""What each stage cost in its last run (not a DVC stage): wall time, peak memory and threads, one table.

    python -m stages.timings [--db mlflow.db] [--exp NAME]

Reads mlflow.db with sqlite directly (no MLflow import): for every stage, its latest finished MLflow run (of
DVC experiment NAME with --exp; the workspace's runs are tagged `dvc_exp` = "workspace"), with the cost metrics
`entrypoint.run` logs: stage_seconds, startup_seconds (imports before the work), peak_rss_mb and threads (blank where
a run did not log them). Prints one Markdown table with each stage's share of the total, slowest first.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pandas as pd

METRICS = ("stage_seconds", "startup_seconds", "peak_rss_mb", "threads")


def last_runs(db: str | Path, exp: str | None = None) -> pd.DataFrame:
    """One row per stage: its latest finished run's start time and METRICS (NaN when a run did not log one)."""
    if not Path(db).exists():
        raise SystemExit(f"timings: {db} not found (run a stage first)")
    query = """
        SELECT r.run_uuid, r.start_time, s.value AS stage, COALESCE(e.value, '') AS exp
        FROM runs r JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'stage'
        LEFT JOIN tags e ON e.run_uuid = r.run_uuid AND e.key = 'dvc_exp'
        WHERE r.status = 'FINISHED' AND r.lifecycle_stage = 'active'"""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        runs = pd.read_sql_query(query, con)
        if exp is not None:
            runs = runs[runs["exp"] == exp]
        runs = runs.sort_values("start_time").groupby("stage").tail(1)
        marks = ",".join("?" * len(METRICS))
        metrics = pd.read_sql_query(
            f"SELECT run_uuid, key, value FROM latest_metrics WHERE key IN ({marks})", con, params=METRICS
        )
    wide = metrics.pivot_table(index="run_uuid", columns="key", values="value").reindex(columns=list(METRICS))
    out = runs.merge(wide, left_on="run_uuid", right_index=True, how="left")
    return out.drop(columns="run_uuid").sort_values("stage_seconds", ascending=False).reset_index(drop=True)


def markdown(runs: pd.DataFrame) -> str:
    total = runs["stage_seconds"].sum()
    lines = [
        "| stage | seconds | share | start-up (s) | peak RSS (MB) | threads |",
        "|---|---|---|---|---|---|",
    ]

    def num(x: float, fmt: str) -> str:
        return "" if pd.isna(x) else format(x, fmt)

    for r in runs.itertuples():
        share = r.stage_seconds / total if total else float("nan")
        lines.append(
            f"| {r.stage} | {r.stage_seconds:.1f} | {share:.1%} | {num(r.startup_seconds, '.1f')} | "
            f"{num(r.peak_rss_mb, '.0f')} | {num(r.threads, '.0f')} |"
        )
    startup = runs["startup_seconds"].sum()
    lines.append(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) | 100% | {num(startup, '.1f')} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.timings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("mlflow.db"))
    parser.add_argument("--exp", help="DVC experiment name (tag dvc_exp); default: the latest run of any")
    args = parser.parse_args(argv)
    print(markdown(last_runs(args.db, args.exp)))


if __name__ == "__main__":
    main()
