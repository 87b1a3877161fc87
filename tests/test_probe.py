"""The laterality probes (linear, and the supervised 3D CNN as the ceiling): they find side information that
is there, and report chance when there is none."""

import numpy as np
import pandas as pd
import pytest
import torch

from brain3d.interpretability.probe import cnn_probe, hemisphere_features, laterality_probes, linear_probe
from brain3d.models.model import VisualTokenizer
from brain3d.models.side_cnn import CnnSettings, LateralityCNN, predict, train_cnn

# small enough for a few seconds on one thread (the real values live in params.yaml: lime.cnn)
CNN = CnnSettings(epochs=12, batch_size=8, lr=0.01, weight_decay=0.01, channels=[4, 8, 8], downsample=1)


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

    encode = VisualTokenizer.encode  # batches, mirrors and stacks volumes as the real tokenizer does


def test_laterality_probes_read_volumes_of_the_splits_and_leave_undefined_out(tmp_path):
    rng = np.random.default_rng(2)
    sides = ["left", "right", "bilateral", "none"] * 10 + ["undefined"] * 3
    rows = []
    for i, (side, volume) in enumerate(zip(sides, _volumes(sides, rng))):
        np.save(tmp_path / f"s{i:02d}.npy", volume.astype(np.float32))
        rows.append(
            {"subject": f"s{i:02d}", "split": "train" if i % 4 != i // 4 % 4 else "test", "laterality": side}
        )
    splits = pd.DataFrame(rows)
    result = laterality_probes(_HemisphereMax(), splits, tmp_path, seed=42, cnn=CNN)
    n_test = int(((splits["split"] == "test") & (splits["laterality"] != "undefined")).sum())
    for name in ("visual_tokens", "hemisphere_features"):
        assert result[name]["accuracy"] == 1.0 and result[name]["n_test"] == n_test, name
    assert result["cnn_3d"]["n_test"] == n_test and result["cnn_3d"]["accuracy"] >= 0.8


def _moving_volumes(sides, rng):
    """Like `_volumes`, but each blob lies at a random place of its half, so no voxel alone gives the side;
    the places of right blobs mirror those of left ones, so a mirrored volume is a plausible volume."""
    out = []
    for side in sides:
        v = rng.uniform(0.0, 0.5, (8, 16, 16))
        for wanted, start in (("left", "bilateral"), lambda w: w), (("right", "bilateral"), lambda w: 13 - w):
            if side in wanted:
                d, h, w = rng.integers(0, 6), rng.integers(0, 12), start(rng.integers(0, 5))
                v[d : d + 3, h : h + 4, w : w + 3] = 1.0
        out.append(v)
    return out


def test_cnn_reads_the_lesion_side_of_held_out_subjects():
    rng = np.random.default_rng(3)
    sides = ["left", "right", "bilateral", "none"] * 14
    volumes = _moving_volumes(sides, rng)
    result = cnn_probe(volumes[:40], sides[:40], volumes[40:], sides[40:], CNN, seed=42)
    assert result["chance"] == pytest.approx(0.25) and (result["n_train"], result["n_test"]) == (40, 16)
    assert result["accuracy"] >= 0.9  # at most one error: a model blind to the side scores 0.75 or less


def test_cnn_on_labels_unrelated_to_the_volumes_is_near_chance():
    rng = np.random.default_rng(4)
    sides = ["left", "right", "bilateral", "none"] * 14
    volumes = _moving_volumes(sides, rng)
    labels = list(np.random.default_rng(5).permutation(sides))
    result = cnn_probe(volumes[:40], labels[:40], volumes[40:], labels[40:], CNN, seed=42)
    assert result["accuracy"] <= 0.5


def test_cnn_is_mirror_consistent_and_seeded():
    """Mirroring a volume swaps the left and right logits exactly (also untrained); a seed fixes the fit."""
    torch.manual_seed(0)
    model = LateralityCNN([4, 8, 8], downsample=2).eval()
    x = torch.rand(3, 1, 8, 16, 15)  # an odd width: the middle column belongs to neither half
    with torch.no_grad():
        logits, mirrored = model(x), model(x.flip(-1))
    torch.testing.assert_close(mirrored, logits[:, [1, 0, 2, 3]])
    assert not torch.allclose(logits[:, 0], logits[:, 1])

    rng = np.random.default_rng(6)
    sides = ["left", "right", "bilateral", "none"] * 5
    volumes = _moving_volumes(sides, rng)
    short = CnnSettings(epochs=2, batch_size=8, lr=0.01, weight_decay=0.01, channels=[4, 8, 8], downsample=1)
    runs = [train_cnn(volumes, sides, short, seed=s) for s in (7, 7, 8)]
    weights = [torch.cat([p.flatten() for p in m.parameters()]) for m in runs]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert predict(runs[0], volumes, 8) == predict(runs[1], volumes, 8)
