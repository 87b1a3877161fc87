"""DICOM in: a series written from a NIfTI with a left lesion reads back as the same head, and the lesion comes
out on the left after preprocessing and through `brain3d report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brain3d.data.atlas import flair_like, mni
from brain3d.data.dicom import is_dicom_folder, read_series, write_series
from brain3d.data.manifest import InputError
from brain3d.data.preprocess import preprocess_subject

SHAPE = (32, 64, 64)
MAX_VOXELS = 512**3  # params.yaml preprocess.max_voxels


@pytest.fixture(scope="module")
def left_lesion(tmp_path_factory) -> Path:
    """The MNI anatomy in FLAIR-like contrast with a bright lesion at MNI x = -30 (the patient's left), stored
    LPS (first two voxel axes reversed) as DICOM-derived NIfTIs often are."""
    atlas = mni(2)
    flair = flair_like(atlas.gm, atlas.wm, atlas.csf) * atlas.brain
    x, y, z = atlas.world_axes()
    flair[
        atlas.brain
        & ((x[:, None, None] + 30) ** 2 + (y[None, :, None] - 10) ** 2 + (z[None, None, :] - 15) ** 2 < 14**2)
    ] = 1.0
    flip = np.array(
        [[-1, 0, 0, atlas.shape[0] - 1], [0, -1, 0, atlas.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    path = tmp_path_factory.mktemp("nifti") / "left.nii.gz"
    nib.save(nib.Nifti1Image((1000 * flair[::-1, ::-1]).astype(np.float32), atlas.affine @ flip), str(path))
    return path


@pytest.fixture(scope="module")
def series(left_lesion, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "AX_FLAIR"
    files = write_series(nib.load(str(left_lesion)), folder)
    assert len(files) == nib.load(str(left_lesion)).shape[2]
    return folder


def test_a_series_reads_back_as_the_same_head(left_lesion, series):
    assert is_dicom_folder(series) and not is_dicom_folder(left_lesion.parent)
    original = nib.as_closest_canonical(nib.load(str(left_lesion)))
    back = nib.as_closest_canonical(read_series(series, max_voxels=MAX_VOXELS))
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-4)
    a, b = np.asarray(original.dataobj), np.asarray(back.dataobj)
    assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999  # int16 storage, rescaled


def test_reading_and_writing_leave_the_process_locale_alone(left_lesion, tmp_path):
    """GDCM sets the C locale to "C" when it writes; left there, Python's default text encoding turns ASCII and
    every later `subprocess.run(text=True)` of the session fails on non-ASCII output."""
    import locale

    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    write_series(nib.load(str(left_lesion)), tmp_path / "s")
    read_series(tmp_path / "s", max_voxels=MAX_VOXELS)
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before


def test_slice_order_comes_from_positions_not_file_names(left_lesion, series, tmp_path):
    """Files renamed in reverse order still give the same volume: ITK sorts by ImagePositionPatient."""
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    files = sorted(series.iterdir())
    for i, f in enumerate(files):
        (shuffled / f"x{len(files) - i:04d}.dcm").write_bytes(f.read_bytes())
    np.testing.assert_array_equal(
        np.asarray(read_series(shuffled, max_voxels=MAX_VOXELS).dataobj),
        np.asarray(read_series(series, max_voxels=MAX_VOXELS).dataobj),
    )


def test_the_lesion_comes_out_on_the_left_after_preprocessing(left_lesion, series, tmp_path):
    """The project's arrays are RAS (x index grows to the patient's right): a left lesion sits in the low-x half."""
    nib.save(read_series(series, max_voxels=MAX_VOXELS), str(tmp_path / "from_dicom.nii.gz"))
    kwargs = dict(
        skull_stripped=True,
        skull_strip="threshold",
        fov_mm=None,
        min_similarity=0.15,
        sequence="any",
        max_voxels=MAX_VOXELS,
    )
    vol = preprocess_subject("dicom", tmp_path / "from_dicom.nii.gz", SHAPE, **kwargs).volume
    ref = preprocess_subject("nifti", left_lesion, SHAPE, **kwargs).volume
    assert np.abs(vol - ref).max() < 0.01
    labels, _ = ndimage.label(vol >= 0.99)  # the lesion is the largest blob at the top of the scale
    lesion = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    w = np.nonzero(lesion)[2]
    assert lesion.sum() > 20 and w.mean() < SHAPE[2] / 2 - 5, f"lesion centroid at x index {w.mean():.1f}"


def test_two_series_or_none_is_one_clear_error(series, tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        read_series(tmp_path, max_voxels=MAX_VOXELS)
    both = tmp_path / "both"
    both.mkdir()
    for f in series.iterdir():
        (both / f.name).write_bytes(f.read_bytes())
    write_series(
        nib.as_closest_canonical(read_series(series, max_voxels=MAX_VOXELS)),
        both / "second",
        description="AX T1",
    )
    for f in (both / "second").iterdir():
        f.rename(both / f"b_{f.name}")
    with pytest.raises(InputError, match="2 DICOM series in one folder"):
        read_series(both, max_voxels=MAX_VOXELS)


def test_brain3d_report_reads_a_dicom_folder(series, left_lesion, tiny_model_dir, tmp_path):
    """A folder holding a DICOM series and a NIfTI of the same head: both are found and reported."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "AX_FLAIR").symlink_to(series, target_is_directory=True)
    (cohort / "left.nii.gz").symlink_to(left_lesion)
    out = tmp_path / "rows.jsonl"
    script = Path(sys.executable).parent / "brain3d"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "brain3d.cli"]
    run = subprocess.run(
        [
            *cmd,
            "report",
            str(cohort),
            "--model",
            str(tiny_model_dir),
            "--skull-stripped",
            "--device",
            "cpu",
            "--max-new-tokens",
            "12",
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "BRAIN3D_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["scan"]).name for r in rows] == ["AX_FLAIR", "left.nii.gz"]
    assert all(r["status"] == "ok" and r["report"] for r in rows), rows


def test_a_missing_slice_is_refused_naming_the_gap(series, tmp_path):
    """ITK reads a series with a slice missing (it only warns and records ITK_non_uniform_sampling_deviation),
    which would stretch the head; the reader refuses it, naming the two slices either side of the gap."""
    gap = tmp_path / "gap"
    gap.mkdir()
    files = sorted(series.iterdir())
    for f in files[:12] + files[13:]:  # the 13th slice is lost
        (gap / f.name).write_bytes(f.read_bytes())
    with pytest.raises(
        InputError,
        match=r"slices 12 and 13 \(slice0012.dcm, slice0014.dcm\) are 4.0 mm apart, the others 2.0 mm: "
        r"a slice is missing",
    ):
        read_series(gap, max_voxels=MAX_VOXELS)
    for f in files[20:22]:  # and two more, further up
        (gap / f.name).unlink()
    with pytest.raises(InputError, match="slices 12 and 13 .* a slice is missing"):  # the first gap is named
        read_series(gap, max_voxels=MAX_VOXELS)


def test_a_series_larger_than_max_voxels_is_refused_before_its_pixels_are_read(series, left_lesion):
    x, y, z = nib.load(str(left_lesion)).shape
    with pytest.raises(
        InputError, match=rf"{z} slices of {x}x{y} = {x * y * z} voxels, more than preprocess"
    ):
        read_series(series, max_voxels=x * y * z - 1)
    assert read_series(series, max_voxels=x * y * z).shape == (x, y, z)
