"""Benchmark: each stage's share of the whole DAG, on the tiny pipeline of the end-to-end tests.

Runs `dvc repro` once in a throw-away copy of this checkout with tests/tiny_pipeline.py's params (16 phantom
subjects, 16 x 32 x 32 volumes, one-layer stand-ins, one epoch), then prints `python -m stages.timings`'s
table for it: a stage whose share grows after a change shows as a ratio, however fast or busy the machine.
The DAG's own wall time (dvc included) is printed next to the sum of the stages' times: the difference is
DVC's and the start-up of each stage process.

    python benchmarks/dag.py [--keep]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_pipeline import make_repo  # noqa: E402


def _timings():
    spec = importlib.util.spec_from_file_location("stages.timings", ROOT / "stages" / "timings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary repository (its path is printed)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="brain3d-dag-"))
    try:
        repo = make_repo(tmp)
        t0 = time.perf_counter()
        repo.dvc("repro", timeout=3600)
        wall = time.perf_counter() - t0
        timings = _timings()
        runs = timings.last_runs(repo.path / "mlflow.db", exp="workspace")
        print(timings.markdown(runs))
        stages = runs["stage_seconds"].sum()
        print(
            f"\n`dvc repro` wall time {wall:.1f} s; the stages' own time {stages:.1f} s "
            f"({stages / wall:.0%}); DVC and process start-up {wall - stages:.1f} s "
            f"({(wall - stages) / len(runs):.1f} s per stage)"
        )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
