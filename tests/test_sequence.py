"""The FLAIR check: tissue contrast, read after an affine registration of the MNI tissue maps."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from brain3d import config, fileio
from brain3d.data.atlas import flair_like, mni
from brain3d.data.preprocess import preprocess_cohort, standardize, tissue_maps
from brain3d.data.sequence import check_sequence

ROOT = Path(__file__).resolve().parents[1]

SHAPE = (32, 64, 64)
CONTRASTS = {  # (GM, WM, CSF) weights, as the phantom's FLAIR_CONTRAST
    "FLAIR": (0.78, 0.58, 0.06),
    "T1": (0.55, 0.85, 0.10),
    "T2": (0.60, 0.45, 1.00),
    "unclear": (0.70, 0.68, 0.70),  # no usable contrast: CSF as bright as tissue, GM ~ WM
}


def read(volume: np.ndarray):
    """The check as the preprocess stage runs it on the demo grid (fov_mm null)."""
    return check_sequence(volume, tissue_maps(SHAPE, None))


def scan(contrast, lesion: bool = False, shift_mm: float = 0.0) -> np.ndarray:
    atlas = mni(2)
    image = flair_like(atlas.gm, atlas.wm, atlas.csf, contrast) * atlas.brain
    if lesion:  # a large bright lesion in the left hemisphere's white matter (about 5 % of the brain)
        x, y, z = atlas.world_axes()
        ball = (x[:, None, None] + 28) ** 2 + (y[None, :, None] - 5) ** 2 + (
            z[None, None, :] - 15
        ) ** 2 < 24**2
        image[ball & atlas.brain] = 1.0
    affine = atlas.affine.copy()
    affine[:3, 3] += shift_mm
    brain = atlas.brain
    if shift_mm:  # the head sits elsewhere in its field of view and is slightly rotated
        image = ndimage.rotate(image, 6, axes=(0, 1), reshape=False, order=1)
        brain = ndimage.rotate(brain.astype(np.float32), 6, axes=(0, 1), reshape=False, order=1) > 0.5
    return standardize(nib.Nifti1Image(image.astype(np.float32), affine), SHAPE, brain)


@pytest.mark.parametrize("truth", CONTRASTS)
def test_each_contrast_is_recognised(truth):
    check = read(scan(CONTRASTS[truth]))
    assert check.looks_like == truth, check
    assert check.is_flair == (truth == "FLAIR")


def test_a_lesioned_and_rotated_flair_is_still_flair():
    check = read(scan(CONTRASTS["FLAIR"], lesion=True, shift_mm=7.0))
    assert check.looks_like == "FLAIR" and check.gm > check.wm > check.csf, check
    assert read(scan(CONTRASTS["T1"], lesion=True, shift_mm=7.0)).looks_like == "T1"


def test_reasons_and_qc_columns():
    t1 = read(scan(CONTRASTS["T1"]))
    assert t1.reason == "looks T1-weighted (white matter brighter than grey matter)"
    assert (
        set(t1.qc()) == {"sequence", "tissue_gm", "tissue_wm", "tissue_csf"} and t1.qc()["sequence"] == "T1"
    )
    assert "CSF not darker" in read(scan(CONTRASTS["unclear"])).reason


def test_the_check_is_deterministic():
    volume = scan(CONTRASTS["FLAIR"], lesion=True)
    assert read(volume) == read(volume)


def test_too_little_brain_is_an_error():
    with pytest.raises(ValueError, match="too little brain"):
        read(np.zeros(SHAPE, np.float32))


def test_the_preprocess_stage_refuses_what_is_not_flair_and_records_what_each_scan_looks_like(tmp_path):
    """`preprocess.sequence: FLAIR` (the project's) refuses the T1 and T2 brains with the reason in qc.csv;
    `any` keeps the T1 and records it; a FLAIR passes both ways with its tissue intensities in qc.csv."""
    atlas = mni(2)
    rows = []
    for name in ("FLAIR", "T1", "T2"):
        path = tmp_path / f"{name}.nii.gz"
        image = flair_like(atlas.gm, atlas.wm, atlas.csf, CONTRASTS[name]) * atlas.brain
        nib.save(nib.Nifti1Image(image.astype(np.float32), atlas.affine), str(path))
        rows.append(
            dict(
                subject=name,
                cohort="healthy",
                source="phantom",
                volume=str(path),
                seg="",
                report="Normal.",
                laterality="none",
                sha256=fileio.sha256_file(path),
                skull_stripped=True,
            )
        )
    pre = config.load(ROOT / "params.yaml")["preprocess"]
    assert pre["sequence"] == "FLAIR"
    kwargs = dict(
        shape=SHAPE,
        skull_strip="threshold",
        fov_mm=None,
        workers=1,
        on_error="skip",
        min_similarity=pre["min_brain_similarity"],
        max_voxels=pre["max_voxels"],
        progress=False,
    )

    qc, ok = preprocess_cohort(pd.DataFrame(rows), tmp_path, tmp_path / "strict", sequence="FLAIR", **kwargs)
    assert list(ok["subject"]) == ["FLAIR"]
    error = dict(zip(qc["subject"], qc["error"]))
    assert error["T1"] == "looks T1-weighted (white matter brighter than grey matter); Brain3D reads FLAIR"
    assert "looks T2-weighted (CSF brighter than grey and white matter)" in error["T2"]
    written = pd.read_csv(tmp_path / "strict" / "qc.csv").set_index("subject")
    assert written.loc["FLAIR", "sequence"] == "FLAIR"
    assert (
        written.loc["FLAIR", "tissue_gm"]
        > written.loc["FLAIR", "tissue_wm"]
        > written.loc["FLAIR", "tissue_csf"]
    )

    qc, ok = preprocess_cohort(pd.DataFrame(rows), tmp_path, tmp_path / "any", sequence="any", **kwargs)
    assert {"FLAIR", "T1"} <= set(ok["subject"])
    assert qc.set_index("subject").loc["T1", "sequence"] == "T1"


def test_a_clear_flair_reuses_the_skull_strips_registration_and_anything_else_is_registered_again(
    tmp_path, monkeypatch
):
    """With the registration skull strip, the template is already on the brain: a clear FLAIR is judged by the
    maps it moved (no second registration); a T1 head (the MNI template with its skull) is not clear, so it is
    registered again and refused as before."""
    from nilearn import datasets

    from brain3d.data import phantom, sequence
    from brain3d.data.preprocess import preprocess_subject

    registered = []
    original = sequence._registered
    monkeypatch.setattr(sequence, "_registered", lambda *a, **k: registered.append(1) or original(*a, **k))
    spec = phantom.plan_cohort(3, 5, 0.0, {"left": 1.0})[0]
    phantom.simulate_subject(spec, tmp_path)
    pre = config.load(ROOT / "params.yaml")["preprocess"]
    kwargs = dict(
        skull_stripped=False,
        skull_strip="registration",
        fov_mm=None,
        min_similarity=pre["min_brain_similarity"],
        max_voxels=pre["max_voxels"],
        sequence="any",
    )
    flair = preprocess_subject(spec.subject, tmp_path / spec.subject / "flair.nii.gz", SHAPE, **kwargs)
    assert flair.qc["sequence"] == "FLAIR" and registered == []
    t1 = tmp_path / "t1.nii.gz"
    nib.save(datasets.load_mni152_template(resolution=2), str(t1))
    assert preprocess_subject("t1", t1, SHAPE, **kwargs).qc["sequence"] == "T1" and registered == [1]
