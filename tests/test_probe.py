"""The laterality probe: it finds side information that is there, and reports chance when there is none."""

import numpy as np
import pandas as pd
import pytest
import torch

from brain3d.interpretability.probe import hemisphere_features, laterality_probes, linear_probe


def _volumes(sides, rng):
    out = []
    for side in sides:
        v = rng.uniform(0.0, 0.5, (8, 16, 16))
        if side in ("left", "bilateral"):
            v[3:6, 5:9, 1:5] = 1.0
        if side in ("right", "bilateral"):
            v[3:6, 5:9, 11:15] = 1.0
        out.append(v)
    return out


def test_hemisphere_features_find_the_lesion_side():
    rng = np.random.default_rng(0)
    sides = ["left", "right", "bilateral", "none"] * 12
    volumes = _volumes(sides, rng)
    x = hemisphere_features(volumes)
    assert x.shape == (48, 4)
    result = linear_probe(x[:32], sides[:32], x[32:], sides[32:], seed=42)
    assert result["accuracy"] == 1.0 and result["chance"] == pytest.approx(0.25)
    assert (result["n_train"], result["n_test"]) == (32, 16)


def test_probe_on_noise_is_near_chance_and_needs_two_per_class():
    rng = np.random.default_rng(1)
    labels = ["left", "right"] * 100
    x = rng.normal(size=(200, 3, 5))  # (N, K, C) tokens are flattened
    result = linear_probe(x[:120], labels[:120], x[120:], labels[120:], seed=42)
    assert 0.3 < result["accuracy"] < 0.7
    with pytest.raises(ValueError, match="at least 2 training subjects"):
        linear_probe(x[:3], ["left", "left", "right"], x[3:6], ["left"] * 3, seed=42)


class _HemisphereMax(torch.nn.Module):
    """A stand-in visual tokenizer: token k = the brightest voxel of hemisphere k (W halves)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):  # (B, 1, D, H, W) -> (B, 2, 1)
        half = x.shape[-1] // 2
        sides = [x[..., :half].amax((1, 2, 3, 4)), x[..., half:].amax((1, 2, 3, 4))]
        return self.scale * torch.stack(sides, 1)[..., None]


def test_laterality_probes_read_volumes_of_the_splits_and_leave_undefined_out(tmp_path):
    rng = np.random.default_rng(2)
    sides = ["left", "right", "bilateral", "none"] * 10 + ["undefined"] * 3
    rows = []
    for i, (side, volume) in enumerate(zip(sides, _volumes(sides, rng))):
        np.save(tmp_path / f"s{i:02d}.npy", volume.astype(np.float32))
        rows.append({"subject": f"s{i:02d}", "split": "train" if i % 4 != i // 4 % 4 else "test", "laterality": side})
    splits = pd.DataFrame(rows)
    result = laterality_probes(_HemisphereMax(), splits, tmp_path, seed=42)
    n_test = int(((splits["split"] == "test") & (splits["laterality"] != "undefined")).sum())
    for name in ("visual_tokens", "hemisphere_features"):
        assert result[name]["accuracy"] == 1.0 and result[name]["n_test"] == n_test, name
