"""Percentile bootstrap over subjects from per-sample scores, with one shared resample index matrix.

Every metric of every system is resampled with the same (n_resamples, n) index matrix (a pure function
of n, n_resamples and seed), so the CIs of different systems are paired and a difference between two
systems can be bootstrapped subject by subject. Resampling per-sample scores is exact for every metric
here because each is a mean of per-sample values (CIDEr's document frequencies stay those of the full
test set, as the paper defines them).

NaN marks a subject a metric does not apply to (e.g. healthy specificity for a tumour subject): each
resample averages over the subjects it drew for which the metric is defined.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

CI_LEVEL = 0.95


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The shared (n_resamples, n) matrix of subject indices drawn with replacement (`evaluate.n_resamples`,
    `evaluate.seed` in the pipeline)."""
    if n < 1 or n_resamples < 1:
        raise ValueError(f"need n >= 1 and n_resamples >= 1, got n={n}, n_resamples={n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _resampled_means(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(n_resamples, n_metrics) means of `values` (n, n_metrics) over each resample, ignoring NaN."""
    drawn = values[indices]  # (R, n, m)
    valid = ~np.isnan(drawn)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, drawn, 0.0).sum(axis=1) / valid.sum(axis=1)


def _summary(values: np.ndarray, indices: np.ndarray, columns: pd.Index) -> pd.DataFrame:
    means = _resampled_means(values, indices)
    alpha = (1 - CI_LEVEL) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: no estimate, NaN CI
        point = np.nanmean(values, axis=0)
        low, high = np.nanpercentile(means, [alpha, 100 - alpha], axis=0)
    return pd.DataFrame({"mean": point, "low": low, "high": high}, index=pd.Index(columns, name="metric"))


def _check_indices(indices: np.ndarray, n: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[1] != n:
        raise ValueError(f"resample indices of shape {indices.shape} do not fit {n} subjects")
    return indices


def bootstrap(
    per_sample: pd.DataFrame,
    n_resamples: int | None = None,
    seed: int | None = None,
    *,
    indices: np.ndarray | None = None,
) -> pd.DataFrame:
    """Mean and 95 % percentile-bootstrap CI of each column, indexed by metric (columns mean, low, high).

    Resamples are `indices` (from `resample_indices`; pass the same matrix for every system) or, without them,
    a fresh matrix from `n_resamples` and `seed`, which must then both be given (there is no default).
    """
    values = per_sample.to_numpy(dtype=float)
    if indices is None:
        if n_resamples is None or seed is None:
            raise TypeError("bootstrap needs `indices` (from resample_indices) or both n_resamples and seed")
        indices = resample_indices(len(per_sample), n_resamples, seed)
    return _summary(values, _check_indices(indices, len(values)), per_sample.columns)


def paired_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    n_resamples: int | None = None,
    seed: int | None = None,
    *,
    indices: np.ndarray | None = None,
) -> pd.DataFrame:
    """Mean and 95 % CI of system A minus system B, per subject and per metric, over shared resamples.

    Both frames must hold the same subjects in the same order (their index) and the same columns; the
    resamples are given as in `bootstrap` (`indices`, or both n_resamples and seed).
    """
    if not a.index.equals(b.index):
        raise ValueError("paired difference needs the same subjects, in the same order, for both systems")
    if not a.columns.equals(b.columns):
        raise ValueError(f"paired difference needs the same metrics: {list(a.columns)} vs {list(b.columns)}")
    return bootstrap(a - b, n_resamples, seed, indices=indices)
