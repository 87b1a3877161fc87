"""Evaluation: the paper's report metrics per sample, bootstrap CIs over subjects, tables and plots.

`score` computes every metric through local `evaluate` modules (no hub); `bootstrap` and
`paired_difference` resample per-sample scores with one shared index matrix; the evaluation driver that
writes tables, figures and DVC metrics is `brain3d.metrics.evaluation.evaluate_systems` (tables rendered by
`brain3d.metrics.formatting`, the forest plot drawn by `brain3d.metrics.plots`).
"""

from brain3d.metrics.resampling import bootstrap, paired_difference, resample_indices
from brain3d.metrics.scoring import METRICS, score
from brain3d.metrics.text import DEFAULT_BERTSCORE_LAYERS, DEFAULT_BERTSCORE_MODEL, describe_bertscore

__all__ = [
    "DEFAULT_BERTSCORE_LAYERS",
    "DEFAULT_BERTSCORE_MODEL",
    "METRICS",
    "bootstrap",
    "describe_bertscore",
    "paired_difference",
    "resample_indices",
    "score",
]
