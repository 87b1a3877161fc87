"""How much side information the frozen visual tokens carry, whatever the language model makes of it.

A linear probe (standardised features, multinomial logistic regression, its strength chosen by up to
5-fold cross-validation on the training split only) predicts the laterality class (left / right / bilateral
/ none) of each test subject from its K visual tokens. The same probe on two intensity-asymmetry features
per hemisphere is the reference for what the images show without any learning, and a small supervised 3D
CNN trained on the same training subjects (brain3d/models/side_cnn.py) is the ceiling: what the data allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from brain3d.data.findings import SIDES
from brain3d.models.side_cnn import CnnSettings, predict, train_cnn

#: Laterality classes the probe predicts: those a report states, and healthy ("none"); "undefined" is left out.
CLASSES = SIDES


def hemisphere_features(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 4): per hemisphere (W halves), the 99.5th intensity percentile and the share of voxels above 0.8."""
    out = []
    for v in volumes:
        half = v.shape[-1] // 2
        sides = (v[..., :half], v[..., half:])
        out.append([np.percentile(s, 99.5) for s in sides] + [float((s > 0.8).mean()) for s in sides])
    return np.asarray(out, dtype=np.float64)


def linear_probe(
    train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str], seed: int
) -> dict:
    """Test accuracy of a cross-validated linear probe, with the majority-class rate as chance."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    values, counts = np.unique(train_y, return_counts=True)
    folds = int(min(5, counts.min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 training subjects for the probe's cross-validation")
    probe = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0, 10.0], cv=folds, max_iter=5000, random_state=seed),
    )
    probe.fit(np.asarray(train_x).reshape(len(train_y), -1), train_y)
    return probe_result(probe.predict(np.asarray(test_x).reshape(len(test_y), -1)), train_y, test_y)


def probe_result(predicted: Sequence[str], train_y: Sequence[str], test_y: Sequence[str]) -> dict:
    """Test accuracy, and as chance the test share of the most frequent training class."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    values, counts = np.unique(train_y, return_counts=True)
    return {
        "accuracy": float((np.asarray(predicted) == test_y).mean()),
        "chance": float((test_y == values[counts.argmax()]).mean()),
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
    }


def cnn_probe(
    train_volumes: Sequence[np.ndarray],
    train_y: Sequence[str],
    test_volumes: Sequence[np.ndarray],
    test_y: Sequence[str],
    settings: CnnSettings,
    seed: int,
    device: str = "cpu",
    log: Callable[[dict, int], None] | None = None,
) -> dict:
    """Test accuracy of the supervised 3D CNN (brain3d/models/side_cnn.py) trained on the training subjects; same keys as
    `linear_probe`."""
    model = train_cnn(train_volumes, train_y, settings, seed, device, log)
    return probe_result(predict(model, test_volumes, settings.batch_size), train_y, test_y)


def laterality_probes(
    visual,
    splits: pd.DataFrame,
    volumes_dir: str | Path,
    seed: int,
    cnn: CnnSettings,
    device: str = "cpu",
    log: Callable[[dict, int], None] | None = None,
) -> dict:
    """Probe accuracy (train split -> test split) from the visual tokens of `visual` and, for reference, from
    `hemisphere_features` and from a supervised 3D CNN (`cnn_probe`, trained on `device`; `log` gets its
    training loss and seconds). `splits` has subject, split and laterality columns."""

    data = {}
    for split in ("train", "test"):
        rows = splits[(splits["split"] == split) & splits["laterality"].isin(CLASSES)]
        volumes = [np.load(Path(volumes_dir) / f"{sid}.npy") for sid in rows["subject"]]
        data[split] = volumes, rows["laterality"].tolist()
    (vol_tr, y_tr), (vol_te, y_te) = data["train"], data["test"]
    return {
        "visual_tokens": linear_probe(
            visual.encode(vol_tr).numpy(), y_tr, visual.encode(vol_te).numpy(), y_te, seed
        ),
        "hemisphere_features": linear_probe(
            hemisphere_features(vol_tr), y_tr, hemisphere_features(vol_te), y_te, seed
        ),
        "cnn_3d": cnn_probe(vol_tr, y_tr, vol_te, y_te, cnn, seed, device, log),
    }
