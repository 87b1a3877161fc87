"""Explaining one case end to end (supervoxels -> LIME per target -> faithfulness numbers), shared by
the `lime` stage and `brain3d report --explain`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brain3d import config
from brain3d.interpretability.lime3d import (
    Explanation,
    deletion_auc,
    deletion_curve,
    explain,
    lesion_rank,
    lesion_share,
    stability,
    supervoxels,
)
from brain3d.interpretability.targets import case_scores
from brain3d.models.model import Brain3D


@dataclass
class LimeSettings:
    """The `lime` params section (per_class is the stage's); no defaults: params.yaml holds the values."""

    n_segments: int
    compactness: float
    n_samples: int
    batch_size: int
    deletion_steps: int
    seed: int

    @classmethod
    def from_params(cls, section: dict) -> LimeSettings:
        return config.from_section(cls, section)


@dataclass
class CaseResult:
    labels: np.ndarray
    explanations: dict[str, Explanation]
    rows: list[dict] = field(default_factory=list)  # faithfulness numbers per (model, target)


def _faithfulness(volume, labels, names, score_fn, explanations, lesion, settings, model_name) -> list[dict]:
    rng = np.random.default_rng(settings.seed)
    random_order = rng.permutation(int(labels.max()))
    random_curve = deletion_curve(volume, labels, random_order, score_fn, settings.deletion_steps)
    rows = []
    for t, (name, exp) in enumerate(zip(names, explanations)):
        curve = deletion_curve(volume, labels, np.argsort(-exp.weights), score_fn, settings.deletion_steps)
        row = {
            "model": model_name,
            "target": name,
            "score": exp.score,
            "r2": exp.r2,
            "deletion_drop": deletion_auc(curve[:, t]),
            "deletion_drop_random_order": deletion_auc(random_curve[:, t]),
        }
        if lesion is not None and lesion.any():
            row["lesion_share"], row["lesion_chance"] = lesion_share(labels, exp.weights, lesion)
            row["lesion_rank"] = lesion_rank(labels, exp.weights, lesion)
            row["lesion_top1"] = float(row["lesion_rank"] == 1)
        rows.append(row)
    return rows


def explain_case(
    model: Brain3D,
    volume: np.ndarray,
    report: str,
    settings: LimeSettings,
    *,
    seg: np.ndarray | None = None,
    with_side: bool = False,
    randomised: Brain3D | None = None,
) -> CaseResult:
    """LIME for the report (and side) targets; faithfulness vs the true lesion and, optionally, the same
    numbers for a randomised model. The trained model's explanations are also drawn with the next seed: the
    rank correlation of the two (`stability`) says whether `n_samples` is enough for this case."""
    labels = supervoxels(volume, settings.n_segments, settings.compactness)
    lesion = seg > 0 if seg is not None else None
    names, score_fn = case_scores(model, report, with_side)
    kwargs = dict(n_samples=settings.n_samples, batch_size=settings.batch_size, seed=settings.seed)
    exps = explain(volume, labels, score_fn, **kwargs)
    again = explain(volume, labels, score_fn, **{**kwargs, "seed": settings.seed + 1})
    result = CaseResult(labels, dict(zip(names, exps)))
    rows = _faithfulness(volume, labels, names, score_fn, exps, lesion, settings, "trained")
    for row, a, b in zip(rows, exps, again):
        row["stability"] = stability(a.weights, b.weights)
    result.rows += rows
    if randomised is not None:
        names_r, score_r = case_scores(randomised, report, with_side)
        exps_r = explain(volume, labels, score_r, **kwargs)
        result.rows += _faithfulness(volume, labels, names_r, score_r, exps_r, lesion, settings, "randomised")
    return result


def pick_cases(test: pd.DataFrame, per_class: int) -> list[str]:
    """`per_class` test subjects of each laterality class (left, right, bilateral) and one healthy,
    the first by subject id: deterministic."""
    picked = []
    for lat in ("left", "right", "bilateral"):
        picked += sorted(test.loc[(test["cohort"] == "tumour") & (test["laterality"] == lat), "subject"])[
            :per_class
        ]
    picked += sorted(test.loc[test["cohort"] == "healthy", "subject"])[:1]
    return picked
