"""How much side information the frozen visual tokens carry, whatever the language model makes of it.

A linear probe (standardised features, multinomial logistic regression, its strength chosen by up to
5-fold cross-validation on the training split only) predicts the laterality class (left / right / bilateral
/ none) of each test subject from its K visual tokens. The same probe on two intensity-asymmetry features
per hemisphere is the reference for what the images show without any learning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: Laterality classes the probe predicts: those a report states, and healthy ("none"); "undefined" is left out.
CLASSES = ("left", "right", "bilateral", "none")


def hemisphere_features(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 4): per hemisphere (W halves), the 99.5th intensity percentile and the share of voxels above 0.8."""
    out = []
    for v in volumes:
        half = v.shape[-1] // 2
        sides = (v[..., :half], v[..., half:])
        out.append([np.percentile(s, 99.5) for s in sides] + [float((s > 0.8).mean()) for s in sides])
    return np.asarray(out, dtype=np.float64)


def linear_probe(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str],
                 seed: int) -> dict:
    """Test accuracy of a cross-validated linear probe, with the majority-class rate as chance."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    values, counts = np.unique(train_y, return_counts=True)
    folds = int(min(5, counts.min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 training subjects for the probe's cross-validation")
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0, 10.0], cv=folds,
                                                                 max_iter=5000, random_state=seed))
    probe.fit(np.asarray(train_x).reshape(len(train_y), -1), train_y)
    predicted = probe.predict(np.asarray(test_x).reshape(len(test_y), -1))
    return {"accuracy": float((predicted == test_y).mean()),
            "chance": float((test_y == values[counts.argmax()]).mean()),
            "n_train": int(len(train_y)), "n_test": int(len(test_y))}


def laterality_probes(visual, splits: pd.DataFrame, volumes_dir: str | Path, seed: int) -> dict:
    """Probe accuracy (train split -> test split) from the visual tokens of `visual` and, for reference, from
    `hemisphere_features`. `splits` has subject, split and laterality columns."""
    from brain3d.training.phases import visual_tokens

    data = {}
    for split in ("train", "test"):
        rows = splits[(splits["split"] == split) & splits["laterality"].isin(CLASSES)]
        volumes = [np.load(Path(volumes_dir) / f"{sid}.npy") for sid in rows["subject"]]
        data[split] = visual_tokens(visual, volumes).numpy(), hemisphere_features(volumes), rows["laterality"].tolist()
    (tok_tr, hem_tr, y_tr), (tok_te, hem_te, y_te) = data["train"], data["test"]
    return {"visual_tokens": linear_probe(tok_tr, y_tr, tok_te, y_te, seed),
            "hemisphere_features": linear_probe(hem_tr, y_tr, hem_te, y_te, seed)}
