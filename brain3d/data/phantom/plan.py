"""The cohort plan: which subjects a cohort holds (healthy or tumour, and the tumour's side) as `SubjectSpec`s
in a seeded, shuffled order with exact counts (`plan_cohort`, via `largest_remainder`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIDES = ("left", "right", "bilateral", "undefined")


@dataclass(frozen=True)
class SubjectSpec:
    """What the cohort plan fixes for one subject; the rest is drawn from (seed, index)."""

    subject: str
    index: int
    seed: int
    cohort: str  # "tumour" or "healthy"
    side: str  # left / right / bilateral / undefined, or "none" for healthy
    orientation: str | None = None  # force one of ORIENTATIONS (tests); None draws one
    # its own anatomy (anatomy.reshaped_head) instead of the MNI brain every other phantom shares
    reshaped: bool = False


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` into integer counts proportional to `weights` (Hamilton's method; ties by key order)."""
    norm = sum(weights.values())
    if norm <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    quotas = {k: total * w / norm for k, w in weights.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    order = sorted(quotas, key=lambda k: counts[k] - quotas[k])  # largest remainder first, stable
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def plan_cohort(
    n_subjects: int,
    seed: int,
    healthy_fraction: float,
    laterality_mix: dict[str, float],
    reshaped: bool = False,
) -> list[SubjectSpec]:
    """The subjects of a cohort: exact healthy/laterality counts, in a seeded shuffled order (the values come
    from params.yaml `download`: n_subjects, seed, healthy_fraction, laterality_mix {side: weight}); with
    `reshaped` each subject has its own anatomy."""
    mix = dict(laterality_mix)
    unknown = set(mix) - set(SIDES)
    if unknown:
        raise ValueError(f"laterality_mix: unknown side(s) {sorted(unknown)}; expected {SIDES}")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ValueError(f"healthy_fraction must be in [0, 1], got {healthy_fraction}")
    n_healthy = round(healthy_fraction * n_subjects)
    counts = largest_remainder(n_subjects - n_healthy, {s: mix.get(s, 0.0) for s in SIDES})
    kinds = ["none"] * n_healthy + [s for s in SIDES for _ in range(counts[s])]
    order = np.random.default_rng(seed).permutation(len(kinds))
    return [
        SubjectSpec(
            f"phantom-{i + 1:04d}",
            i + 1,
            seed,
            "healthy" if kinds[k] == "none" else "tumour",
            kinds[k],
            reshaped=reshaped,
        )
        for i, k in enumerate(order)
    ]
