"""Preprocessing promises: laterality survives any storage orientation, bad input fails clearly."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brain3d import config, fileio
from brain3d.data import manifest, nifti
from brain3d.data.manifest import CohortError, InputError
from brain3d.data.preprocess import preprocess_cohort, resample, standardize, standardize_with_grid
from brain3d.data.skullstrip import threshold_mask

SHAPE = (24, 48, 48)
ROOT = Path(__file__).resolve().parents[1]
MAX_VOXELS = 512**3  # params.yaml preprocess.max_voxels
# preprocess_cohort's settings for the cohort tests (their subjects are skull-stripped already, so skull_strip
# is not used; min_similarity -1 turns the brain-similarity check off for the synthetic ellipsoid head)
COHORT = dict(
    shape=SHAPE,
    skull_strip="registration",
    fov_mm=None,
    workers=1,
    progress=False,
    min_similarity=-1.0,
    sequence="any",
    max_voxels=MAX_VOXELS,
)
LESION_MM = np.array([-35.0, 20.0, 15.0])  # subject's LEFT (x < 0), anterior (y > 0), superior (z > 0)


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def head(axes: np.ndarray, zooms, shape, skull: bool = False) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A world-defined head (ellipsoid brain, bright lesion at LESION_MM) sampled on the grid whose
    voxel axes are `axes` (3x3, columns = world direction of i, j, k) with voxel sizes `zooms`."""
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(zooms)
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) - 1) / 2
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk)
    r = np.sqrt((xyz[:, 0] / 65) ** 2 + (xyz[:, 1] / 80) ** 2 + (xyz[:, 2] / 60) ** 2)
    brain = r <= 1
    texture = 0.05 * (np.sin(xyz[:, 0] / 7) * np.cos(xyz[:, 1] / 9) + np.sin(xyz[:, 2] / 5))  # world-defined
    v = np.where(brain, 0.45 + texture, 0.0)
    v[brain & (np.linalg.norm(xyz - LESION_MM, axis=1) < 15)] = 1.0
    if skull:
        v[(r > 1.06) & (r <= 1.16)] = 0.03  # skull: dark
        v[(r > 1.16) & (r <= 1.26)] = 0.8  # scalp: bright
    return nib.Nifti1Image(v.reshape(shape).astype(np.float32), affine), brain.reshape(shape)


ORIENTATIONS = {
    "RAS": (np.eye(3), (3.0, 3.0, 3.0), (60, 70, 56)),
    "LPS": (np.diag([-1.0, -1.0, 1.0]), (3.0, 3.0, 3.0), (60, 70, 56)),
    "PIR-aniso": (np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]]), (2.5, 5.0, 2.0), (72, 30, 72)),
    "oblique-aniso": (_rotation(20, 12), (2.2, 2.2, 5.0), (78, 90, 34)),
}


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_left_lesion_ends_on_low_w_side(name):
    axes, zooms, shape = ORIENTATIONS[name]
    img, _ = head(axes, zooms, shape)
    assert nib.aff2axcodes(img.affine)[0] in ("R", "L", "P")
    out = standardize(img, SHAPE)
    assert out.shape == SHAPE and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    d, h, w = np.argwhere(out > 0.9).mean(0)
    assert w < SHAPE[2] * 0.4, f"{name}: lesion at W={w:.1f} is not on the subject's left (low W)"
    assert h > SHAPE[1] * 0.55, f"{name}: lesion at H={h:.1f} is not anterior (high H)"
    assert d > SHAPE[0] * 0.55, f"{name}: lesion at D={d:.1f} is not superior (high D)"


def test_every_orientation_gives_the_same_volume():
    outs = [
        standardize(head(*ORIENTATIONS[n][:1], ORIENTATIONS[n][1], ORIENTATIONS[n][2])[0], SHAPE)
        for n in ("RAS", "LPS")
    ]
    assert np.corrcoef(outs[0].ravel(), outs[1].ravel())[0, 1] > 0.98


def test_mask_argument_removes_skull_and_scalp():
    img, brain = head(np.eye(3), (3.0, 3.0, 3.0), (60, 70, 56), skull=True)
    out, grid = standardize_with_grid(img, SHAPE, mask=brain)
    inside = resample(nib.Nifti1Image(brain.astype(np.float32), img.affine), grid, order=1) > 0.25
    assert (out > 0).sum() > 0.3 * out.size
    assert ((out > 0) & ~inside).sum() == 0, "voxels outside the brain mask survived"


def test_threshold_skull_strip_recovers_the_brain():
    img, brain = head(np.eye(3), (3.0, 3.0, 3.0), (60, 70, 56), skull=True)
    mask = threshold_mask(img)
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.9, dice


def test_registration_skull_strip_is_the_same_in_every_process(tmp_path):
    """ANTs samples its metric at random points: two fresh processes must give the same mask (random seed 0
    would seed from the clock), and seed 0 is refused."""
    import subprocess
    import sys

    from brain3d.data.skullstrip import registered_mask

    img, _ = head(np.eye(3), (3.0, 3.0, 3.0), (60, 70, 56), skull=True)
    path = _save(img, tmp_path / "head.nii.gz")
    code = (
        "import hashlib, sys, nibabel as nib; from brain3d.data.skullstrip import registered_mask; "
        "print(hashlib.md5(registered_mask(nib.load(sys.argv[1]))[0].tobytes()).hexdigest())"
    )
    masks = {
        subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(masks) == 1, masks
    with pytest.raises(ValueError, match="seed"):
        registered_mask(img, seed=0)


# ----------------------------------------------------------------------------- bad input
def _save(img, path):
    nib.save(img, str(path))
    return path


@pytest.fixture
def good(tmp_path):
    img, _ = head(np.eye(3), (3.0, 3.0, 3.0), (60, 70, 56))
    return _save(img, tmp_path / "good.nii.gz")


def test_truncated_gzip_is_a_clear_error(tmp_path, good):
    data = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"sub-01 \(.*truncated.nii.gz\)"):
        nifti.load(bad, "sub-01", max_voxels=MAX_VOXELS)


def test_garbage_is_not_a_nifti(tmp_path):
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not an image" * 10))
    with pytest.raises(InputError, match="junk.nii.gz.*not a readable NIfTI"):
        nifti.load(bad, "sub-02", max_voxels=MAX_VOXELS)


def test_4d_volume_is_refused_but_a_singleton_4th_axis_is_squeezed(tmp_path):
    four = _save(
        nib.Nifti1Image(np.random.rand(8, 8, 8, 3).astype(np.float32), np.eye(4)), tmp_path / "4d.nii.gz"
    )
    with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(8, 8, 8, 3\)"):
        nifti.load(four, "sub-03", max_voxels=MAX_VOXELS)
    single = _save(
        nib.Nifti1Image(np.random.rand(8, 8, 8, 1).astype(np.float32), np.eye(4)), tmp_path / "1.nii.gz"
    )
    assert nifti.load(single, "sub-03", max_voxels=MAX_VOXELS).shape == (8, 8, 8)


@pytest.mark.parametrize("value,expected", [(np.nan, "non-finite"), (np.inf, "non-finite")])
def test_non_finite_voxels_are_refused(tmp_path, value, expected):
    data = np.random.rand(8, 8, 8).astype(np.float32)
    data[2, 3, 4] = value
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match=f"1 {expected}"):
        nifti.load(path, "sub-04", max_voxels=MAX_VOXELS)


def test_empty_volume_is_refused(tmp_path):
    path = _save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "zero.nii.gz")
    with pytest.raises(InputError, match="empty volume"):
        nifti.load(path, "sub-05", max_voxels=MAX_VOXELS)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        nifti.load(tmp_path / "absent.nii.gz", "sub-06", max_voxels=MAX_VOXELS)


def _rows(tmp_path, good, n=3):
    rows = []
    for i in range(n):
        path = tmp_path / f"s{i}.nii.gz"
        path.write_bytes(good.read_bytes())
        rows.append(
            dict(
                subject=f"s{i}",
                cohort="tumour",
                source="phantom",
                volume=str(path),
                seg="",
                report="Left frontal lesion.",
                laterality="left",
                sha256=fileio.sha256_file(path),
                skull_stripped=True,
            )
        )
    return rows


def test_manifest_validation_finds_missing_reports_and_duplicates(tmp_path, good):
    rows = _rows(tmp_path, good)
    rows[1]["report"] = "  "
    rows.append(dict(rows[0]))
    errors = manifest.validate(pd.DataFrame(rows))
    text = "\n".join(map(str, errors))
    assert "s0" in text and "duplicate subject id" in text
    assert "s1" in text and "missing or empty report" in text


def test_cohort_reports_every_bad_subject_at_once(tmp_path, good):
    rows = _rows(tmp_path, good, 4)
    (tmp_path / "s1.nii.gz").write_bytes(b"\x1f\x8b broken")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / "s2.nii.gz"))
    df = pd.DataFrame(rows)
    with pytest.raises(CohortError) as info:
        preprocess_cohort(df, tmp_path, tmp_path / "out", on_error="fail", **COHORT)
    message = str(info.value)
    assert "2 bad subject(s)" in message and "s1" in message and "s2" in message and "empty volume" in message

    qc, ok = preprocess_cohort(df, tmp_path, tmp_path / "out", on_error="skip", **COHORT)
    assert sorted(ok["subject"]) == ["s0", "s3"]
    assert set(qc.loc[qc["status"] == "error", "subject"]) == {"s1", "s2"}
    assert np.load(tmp_path / "out" / "volumes" / "s0.npy").shape == SHAPE
    assert not (tmp_path / "out" / "volumes" / "s1.npy").exists()


def test_cohort_resumes_from_cache(tmp_path, good, monkeypatch):
    """A second run preprocesses nothing and writes the same volumes and QC from the cache; a subject whose file
    changed (new sha256) is preprocessed again, and only that one. (The subject step is a cheap stand-in that
    reads the file: what is under test is when it runs.)"""
    from brain3d.data import preprocess

    calls = []

    def stand_in(subject, volume_path, shape, **_):
        calls.append(subject)
        data = np.asarray(nib.load(str(volume_path)).dataobj, np.float32)
        qc = {
            "subject": subject,
            "status": "ok",
            "error": "",
            "brain_ml": float((data > 0).sum()),
            "seconds": 0.1,
        }
        return preprocess.Preprocessed(np.full(shape, data.mean(), np.float32), None, qc)

    monkeypatch.setattr(preprocess, "preprocess_subject", stand_in)  # workers=1: joblib runs in this process
    rows = _rows(tmp_path, good, 2)
    qc1, _ = preprocess_cohort(pd.DataFrame(rows), tmp_path, tmp_path / "out", on_error="fail", **COHORT)
    assert sorted(calls) == ["s0", "s1"]

    calls.clear()
    qc2, _ = preprocess_cohort(pd.DataFrame(rows), tmp_path, tmp_path / "out2", on_error="fail", **COHORT)
    assert calls == [], "the second run preprocessed again instead of reading the cache"
    pd.testing.assert_frame_equal(qc2, qc1)
    for s in ("s0", "s1"):
        assert np.array_equal(
            np.load(tmp_path / "out2" / "volumes" / f"{s}.npy"),
            np.load(tmp_path / "out" / "volumes" / f"{s}.npy"),
        )

    img = nib.load(str(tmp_path / "s1.nii.gz"))
    data = np.asarray(img.dataobj).copy()
    data[: data.shape[0] // 3] = 0  # s1 loses a third of its brain: another file, another volume
    nib.save(nib.Nifti1Image(data, img.affine), str(tmp_path / "s1.nii.gz"))
    rows[1]["sha256"] = fileio.sha256_file(tmp_path / "s1.nii.gz")
    calls.clear()
    qc3, _ = preprocess_cohort(pd.DataFrame(rows), tmp_path, tmp_path / "out3", on_error="fail", **COHORT)
    assert calls == ["s1"], "only the changed subject is preprocessed again"
    assert (
        qc3.loc[1, "brain_ml"] < qc1.loc[1, "brain_ml"] and qc3.loc[0, "brain_ml"] == qc1.loc[0, "brain_ml"]
    )
    assert not np.array_equal(
        np.load(tmp_path / "out3" / "volumes" / "s1.npy"), np.load(tmp_path / "out" / "volumes" / "s1.npy")
    )


def test_a_volume_that_is_not_a_brain_is_refused(tmp_path):
    """Noise of a brain's size passes every file check but is not a brain FLAIR (at the project's threshold)."""
    threshold = config.load(ROOT / "params.yaml")["preprocess"]["min_brain_similarity"]
    noise = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32) + 0.1  # 1728 ml at 3 mm
    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(noise, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    row = dict(
        subject="s0",
        cohort="healthy",
        source="phantom",
        volume=str(path),
        seg="",
        report="Normal.",
        laterality="none",
        sha256=fileio.sha256_file(path),
        skull_stripped=True,
    )
    with pytest.raises(CohortError, match="does not look like a brain FLAIR"):
        preprocess_cohort(
            pd.DataFrame([row]),
            tmp_path,
            tmp_path / "out",
            on_error="fail",
            **{**COHORT, "min_similarity": threshold},
        )
