"""Benchmark: bootstrap CIs from per-sample scores with shared indices vs recomputing the metrics per resample.

Synthetic report-like texts for 5 systems x 100 subjects, all 11 metrics, 1000 resamples. The recompute
method (score every resampled test set again) is timed on a few resamples and extrapolated to the full
count; the output says so. It also times the first full-suite call on 100 pairs in this fresh process
(imports, BERTScore encoder and WordNet loads included).

    python benchmarks/bootstrap.py [--recompute-resamples 2]
"""

from __future__ import annotations

import argparse
import random
import time

LOBES = ("frontal", "parietal", "temporal", "occipital")
SIGNALS = ("hyperintense", "heterogeneous", "mixed", "high")
HEALTHY = (
    "No acute intracranial abnormality. Ventricles and sulci are normal for age.",
    "Normal brain MRI. No mass, edema or midline shift.",
    "Unremarkable FLAIR study without focal lesion.",
)


def report(rng: random.Random) -> str:
    """A TextBraTS-like report: location by hemisphere and lobe, signal, edema, necrosis, enhancement."""
    if rng.random() < 0.2:
        return rng.choice(HEALTHY)
    side = rng.choice(("left", "right", "bilateral"))
    lobes = " and ".join(rng.sample(LOBES, rng.randint(1, 2)))
    parts = [
        f"A {rng.choice(SIGNALS)} signal lesion is seen in the {side} {lobes} lobe.",
        rng.choice(("Surrounding edema is extensive.", "Mild peritumoral edema is present.")),
        rng.choice(("Central necrosis is noted.", "No necrosis.")),
        rng.choice(("Ring enhancement suggests a high grade tumor.", "Patchy enhancement of the mass.")),
        rng.choice(("There is compression of the lateral ventricle.", "Midline structures are preserved.")),
    ]
    return " ".join(parts[: rng.randint(3, 5)])


def degrade(text: str, rng: random.Random, noise: float) -> str:
    """A system's output: the reference with a share `noise` of its words replaced or dropped."""
    vocab = ("left", "right", "lesion", "mass", "edema", "signal", "lobe", "the", "with", *LOBES)
    words = []
    for w in text.split():
        r = rng.random()
        if r < noise / 2:
            continue
        words.append(rng.choice(vocab) if r < noise else w)
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--recompute-resamples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    refs = [report(rng) for _ in range(args.subjects)]
    noises = [0.1 + 0.8 * k / max(1, args.systems - 1) for k in range(args.systems)]
    systems = {f"system_{k}": [degrade(r, rng, noise) for r in refs] for k, noise in enumerate(noises)}

    t0 = time.perf_counter()
    from brain3d.runtime import set_offline_env

    set_offline_env()
    from brain3d.metrics import bootstrap, resample_indices, score

    first = next(iter(systems.values()))
    score(first, refs)
    cold = time.perf_counter() - t0
    print(
        f"full metric suite, {args.subjects} pairs, first call in a fresh process "
        f"(imports + BERTScore encoder + WordNet load included): {cold:.1f} s"
    )

    t0 = time.perf_counter()
    per_sample = {name: score(preds, refs) for name, preds in systems.items()}
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    indices = resample_indices(args.subjects, args.resamples, args.seed)
    cis = {name: bootstrap(df, indices=indices) for name, df in per_sample.items()}
    t_boot = time.perf_counter() - t0
    fast = t_score + t_boot
    print(
        f"per-sample + shared indices: scoring {args.systems} systems once {t_score:.2f} s, "
        f"{args.resamples} resamples x {len(next(iter(cis.values())))} metrics x {args.systems} systems "
        f"{t_boot:.3f} s, total {fast:.2f} s"
    )

    k = min(args.recompute_resamples, args.resamples)
    t0 = time.perf_counter()
    for row in indices[:k]:
        for preds in systems.values():
            score([preds[i] for i in row], [refs[i] for i in row]).mean()
    per_resample = (time.perf_counter() - t0) / k
    slow = per_resample * args.resamples
    print(
        f"recompute every resample: timed {k} resamples ({per_resample:.2f} s each for {args.systems} systems), "
        f"EXTRAPOLATED to {args.resamples}: {slow:.0f} s"
    )
    print(
        f"speed-up: {slow / fast:.0f}x including the one-off scoring, "
        f"{slow / t_boot:.0f}x for the resampling step alone"
    )


if __name__ == "__main__":
    main()
