"""Benchmark: the preprocess stage on phantom subjects with 1 joblib worker vs 2, side by side in one run.

A few phantom subjects (brain3d.data.phantom, random storage orientations) are written to a temporary
directory, then preprocessed exactly as `stages/preprocess.py` does (`preprocess_cohort`: registration skull
strip, canonical RAS, clip/scale, resample to the demo shape 32x64x64, label maps on the same grid), once with
`workers=1` and once with `workers=2`, each into its own empty cache. Steady state is compared: the main process
and the two joblib (loky) workers have imported ANTs and loaded the atlas/template before the timed runs (loky
reuses its workers between calls); that one-off worker start-up, which a stage run pays once, is timed and
printed separately. The in-worker seconds per subject from qc.csv are printed too. The machine may be shared:
the two settings run in ABBA order (`--repeats 2`: 1, 2, 2, 1 workers) and the best wall time of each is
compared.

    python benchmarks/preprocess.py [--subjects 12] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _warm(shape: tuple[int, int, int], seconds: float = 0.0) -> int:
    """What a process loads once before its first subject: ANTs, the MNI atlas, the similarity template."""
    import ants  # noqa: F401

    from brain3d.data.atlas import mni
    from brain3d.data.preprocess import _template

    mni(2)
    _template(shape)
    time.sleep(seconds)  # keeps this worker busy so that the other one takes the next warm-up task
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BRAIN3D_THREADS", "2")))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="6 subjects, one run of each setting")
    args = parser.parse_args()
    n, repeats = (6, 1) if args.quick else (args.subjects, args.repeats)

    from brain3d import config, runtime

    runtime.setup(args.threads)
    runtime.seed_everything(args.seed)
    from brain3d.data.phantom import generate_cohort
    from brain3d.data.preprocess import preprocess_cohort, preprocess_settings

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        demo = config.load(ROOT / "params.yaml", profile="demo")
        mix, pre = (
            demo["download"],
            demo["preprocess"],
        )  # the demo cohort's mix, the preprocess stage's settings
        manifest = generate_cohort(
            root / "phantom",
            n_subjects=n,
            seed=args.seed,
            healthy_fraction=mix["healthy_fraction"],
            laterality_mix=mix["laterality_mix"],
            workers=2,
            root=root,
            progress=False,
        )
        print(
            f"phantom cohort: {n} subjects in {time.perf_counter() - t0:.1f} s "
            f"({', '.join(sorted(set(manifest['laterality'])))})"
        )
        from joblib import Parallel, delayed

        _warm(tuple(args.shape))
        t0 = time.perf_counter()
        pids = set(Parallel(n_jobs=2)(delayed(_warm)(tuple(args.shape), 1.0) for _ in range(2)))
        print(
            f"one-off start-up of {len(pids)} joblib workers (imports, atlas, template): "
            f"{time.perf_counter() - t0 - 1.0:.1f} s"
        )
        walls: dict[int, list[float]] = {1: [], 2: []}
        order = [w for r in range(repeats) for w in ((1, 2) if r % 2 == 0 else (2, 1))]
        for run, workers in enumerate(order):
            os.environ["BRAIN3D_CACHE"] = str(root / f"cache-{run}")  # an empty cache: nothing is reused
            t0 = time.perf_counter()
            qc, ok = preprocess_cohort(
                manifest,
                root,
                root / f"out-{run}",
                shape=tuple(args.shape),
                workers=workers,
                on_error="fail",
                progress=False,
                **{**preprocess_settings(pre), "skull_strip": "registration"},
            )
            wall = time.perf_counter() - t0
            assert len(ok) == n, qc
            walls[workers].append(wall)
            inner = qc["seconds"].astype(float)
            print(
                f"workers={workers}: {wall:.1f} s wall for {n} volumes = {wall / n:.2f} s/volume "
                f"(in-worker {inner.mean():.2f} s/volume, min {inner.min():.2f}, max {inner.max():.2f}; "
                f"load average {os.getloadavg()[0]:.2f})"
            )
    per_volume = {w: min(v) / n for w, v in walls.items()}
    for workers, seconds in per_volume.items():
        print(f"best of {len(walls[workers])}, workers={workers}: {seconds:.2f} s/volume")
    print(f"cores: {os.cpu_count()}")
    print(f"ratio: {per_volume[1] / per_volume[2]:.2f}x (2-worker / 1-worker throughput)")


if __name__ == "__main__":
    main()
