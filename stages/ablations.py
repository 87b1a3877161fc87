"""Ablation and seed tables from DVC experiments (not a DVC stage: it reads the experiments that
./ablations.sh ran): reports/ablations.{md,csv} and reports/seeds.{md,csv}.

    python -m stages.ablations [--system phase2b] [--rev COMMIT [--rev COMMIT ...] | --all-commits] [--from-json F]

Reads `dvc exp show --json` (run here through subprocess, or a saved document with --from-json) and writes the
tables of brain3d.metrics.experiments. ./ablations.sh queues the grid, runs it and then calls this module. The
tables live outside reports/tables/, which is the `evaluate` stage's DVC output: a file added there would make
DVC see that output as modified and re-run `evaluate` (deleting the table) on the next `dvc repro`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from brain3d.metrics.experiments import write_tables

OUT = Path("reports/ablations")


def exp_show(all_commits: bool = False, rev: str | None = None) -> list[dict]:
    """`dvc exp show --json` of the repository in the working directory (experiments of `rev`, default HEAD)."""
    cmd = [
        sys.executable,
        "-m",
        "dvc",
        "exp",
        "show",
        "--json",
        *(["--all-commits"] if all_commits else []),
        *(["--rev", rev] if rev else []),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"ablations: `dvc exp show --json` failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.ablations", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--system", default="phase2b", help="system whose metrics fill the table (default: phase2b)"
    )
    parser.add_argument(
        "--rev",
        action="append",
        help="experiments queued on this baseline commit (default: HEAD); repeat it to list several commits' "
        "experiments in one table (the seeds table takes the first commit's)",
    )
    parser.add_argument(
        "--all-commits", action="store_true", help="experiments of every commit, not only HEAD"
    )
    parser.add_argument(
        "--from-json", type=Path, help="a saved `dvc exp show --json` document instead of running dvc"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output stem (default: reports/ablations)")
    args = parser.parse_args(argv)
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
    else:
        doc = [c for rev in args.rev or [None] for c in exp_show(args.all_commits, rev)]
    for text in write_tables(doc, args.out, args.system):
        print(text)


if __name__ == "__main__":
    main()
