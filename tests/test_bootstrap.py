"""Percentile bootstrap over per-sample scores with one shared resample index matrix."""

import numpy as np
import pandas as pd
import pytest

from brain3d.metrics import bootstrap, paired_difference, resample_indices


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"bleu1": rng.uniform(size=n), "path_f1": rng.integers(0, 2, size=n).astype(float)})


def test_result_shape_and_percentiles_match_a_manual_computation():
    df = frame(50)
    ci = bootstrap(df, n_resamples=300, seed=7)
    assert list(ci.index) == ["bleu1", "path_f1"] and list(ci.columns) == ["mean", "low", "high"]
    idx = resample_indices(50, 300, 7)
    means = df["bleu1"].to_numpy()[idx].mean(axis=1)
    assert ci.loc["bleu1", "mean"] == pytest.approx(df["bleu1"].mean())
    assert ci.loc["bleu1", "low"] == pytest.approx(np.percentile(means, 2.5))
    assert ci.loc["bleu1", "high"] == pytest.approx(np.percentile(means, 97.5))
    assert (ci["low"] <= ci["mean"]).all() and (ci["mean"] <= ci["high"]).all()


def test_constant_column_gives_a_point_interval():
    ci = bootstrap(pd.DataFrame({"x": [0.25] * 40}), n_resamples=200, seed=42)
    assert ci.loc["x"].tolist() == pytest.approx([0.25, 0.25, 0.25])


def test_intervals_shrink_with_n():
    width = {
        n: (lambda c: c["high"] - c["low"])(bootstrap(frame(n, seed=1), 500, seed=42)) for n in (25, 400)
    }
    assert (width[400] < width[25] / 2).all()  # ~1/sqrt(n): a 16x larger sample, a ~4x narrower CI


def test_same_seed_same_interval_other_seed_other_interval():
    df = frame(60)
    pd.testing.assert_frame_equal(bootstrap(df, 300, seed=3), bootstrap(df, 300, seed=3))
    assert not bootstrap(df, 300, seed=3).equals(bootstrap(df, 300, seed=4))


def test_shared_indices_are_one_matrix_for_every_system_and_metric():
    idx = resample_indices(30, 100, 42)
    assert idx.shape == (100, 30) and idx.min() >= 0 and idx.max() < 30
    np.testing.assert_array_equal(idx, resample_indices(30, 100, 42))
    a, b = frame(30, seed=1), frame(30, seed=2)
    # Passing the matrix explicitly is the same as drawing it from (n, n_resamples, seed) ...
    pd.testing.assert_frame_equal(bootstrap(a, indices=idx), bootstrap(a, 100, 42))
    # ... and the paired difference resamples the same subjects for A and B.
    diff = paired_difference(a, b, indices=idx)
    manual = (a["bleu1"].to_numpy()[idx] - b["bleu1"].to_numpy()[idx]).mean(axis=1)
    assert diff.loc["bleu1", "low"] == pytest.approx(np.percentile(manual, 2.5))
    assert diff.loc["bleu1", "mean"] == pytest.approx(a["bleu1"].mean() - b["bleu1"].mean())


def test_pairing_narrows_the_interval_of_correlated_systems():
    rng = np.random.default_rng(0)
    base = rng.uniform(size=200)
    a = pd.DataFrame({"m": base + 0.02})
    b = pd.DataFrame({"m": base + rng.normal(0, 0.01, size=200)})
    paired = paired_difference(a, b, 1000, 42)
    unpaired = bootstrap(a, 1000, 42)
    unpaired_width = unpaired.loc["m", "high"] - unpaired.loc["m", "low"]
    assert paired.loc["m", "high"] - paired.loc["m", "low"] < unpaired_width / 10
    assert paired.loc["m", "low"] > 0  # a consistent per-subject gain is detected


def test_nan_marks_subjects_a_metric_does_not_apply_to():
    df = pd.DataFrame({"healthy_specificity": [1.0, 0.0, 1.0, 1.0] + [np.nan] * 6})
    ci = bootstrap(df, 500, seed=42)
    assert ci.loc["healthy_specificity", "mean"] == pytest.approx(0.75)
    assert 0.0 <= ci.loc["healthy_specificity", "low"] <= ci.loc["healthy_specificity", "high"] <= 1.0
    empty = bootstrap(pd.DataFrame({"x": [np.nan] * 5}), 50, seed=42)
    assert empty.loc["x"].isna().all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        resample_indices(0, 10, 42)
    with pytest.raises(ValueError, match="do not fit"):
        bootstrap(frame(10), indices=resample_indices(11, 5, 42))
    with pytest.raises(TypeError, match="n_resamples and seed"):  # no default resampling: evaluate.* decides
        bootstrap(frame(10), 100)
    with pytest.raises(ValueError, match="same subjects"):
        paired_difference(frame(10), frame(10).iloc[::-1])
