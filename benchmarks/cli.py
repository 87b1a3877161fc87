"""Benchmark: `brain3d report` on many scans in one call vs one call per scan, as a per-scan ratio.

The scans are the demo cohort's raw phantom FLAIRs (data/raw/phantom, written by `dvc repro`) and the model
is the repository's phase 2B (models/phase2b): run `dvc repro` first. One call reports the first N scans (the
model loads once, preprocessing runs in 2 workers); then S of the same scans are reported one call each, as a
user with a shell loop would (each call pays the imports and the model load again). Single calls are slow
(about 25 s each), so S defaults to 8 and the ratio compares seconds per scan. The single calls also give the
split of one call's wall time: preprocessing, model load and generation as the command records them in its
`--out` rows, and the rest (interpreter start-up and imports, reading params, writing the output).

    python benchmarks/cli.py [--scans 40] [--singles 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def call(scans: list[Path], out: Path) -> tuple[float, list[dict]]:
    """One `brain3d report` process over `scans`: (wall seconds, its --out rows)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "brain3d.cli", "report", *map(str, scans), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    if run.returncode != 0 or any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"brain3d report failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    return wall, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=40, help="scans in the one call")
    ap.add_argument("--singles", type=int, default=8, help="of those, how many to report one call each")
    ap.add_argument("--quick", action="store_true", help="4 scans, 2 single calls (a smoke run)")
    args = ap.parse_args()
    n, singles = (4, 2) if args.quick else (args.scans, args.singles)
    scans = sorted((ROOT / "data/raw/phantom").glob("*/flair.nii.gz"))[:n]
    if len(scans) < n or not (ROOT / "models/phase2b/brain3d.json").exists():
        raise SystemExit("benchmarks/cli.py: needs the demo cohort and models/phase2b: run `dvc repro` first")
    with tempfile.TemporaryDirectory() as tmp:
        batch_wall, rows = call(scans, Path(tmp) / "batch.jsonl")
        single = [call([scan], Path(tmp) / f"single-{i}.jsonl") for i, scan in enumerate(scans[:singles])]
    per_batch = batch_wall / n
    per_single = sum(w for w, _ in single) / singles
    print(
        f"one call, {n} scans: {batch_wall:.1f} s = {per_batch:.2f} s/scan "
        f"(model load {rows[0]['seconds']['model_load']:.1f} s once)"
    )
    print(f"{singles} single calls: {per_single:.2f} s/scan")
    parts = {
        k: sum(r[0]["seconds"][k] for _, r in single) / singles
        for k in ("preprocess", "model_load", "generate")
    }
    rest = per_single - sum(parts.values())
    print(
        "one single call: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
        + f", start-up + imports + I/O {rest:.1f} s (of {per_single:.1f} s)"
    )
    print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"ratio: {per_single / per_batch:.1f}x (seconds per scan, single calls / one call)")


if __name__ == "__main__":
    main()
