"""Laterality end to end (SPEC §3): phantom heads with a lesion on the subject's LEFT or RIGHT, stored as LPS or
as an oblique grid, go through the preprocess stage's own code path (`preprocess_cohort`: registration skull
strip, canonical RAS, clip/scale, resample to the demo shape, label map resampled on the same grid). The
lesion must end on the low-W half for a left lesion and on the high-W half for a right one."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brain3d import config
from brain3d.data.manifest import COLUMNS
from brain3d.data.phantom import FILES, LABELS, SubjectSpec, simulate_subject
from brain3d.data.preprocess import preprocess_cohort

SHAPE = (32, 64, 64)  # profiles.demo.preprocess.shape
PREPROCESS = config.load(Path(__file__).resolve().parents[1] / "params.yaml", profile="demo")["preprocess"]
CASES = [  # (side, storage orientation, spec index): a left/right pair drawn from the same numbers per grid
    ("left", "LPS", 3),
    ("right", "LPS", 3),
    ("left", "oblique", 8),
    ("right", "oblique", 8),
]


@pytest.fixture(scope="module")
def stage_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("laterality")
    rows, truths = [], {}
    for side, orientation, index in CASES:
        spec = SubjectSpec(f"{side}-{orientation}", index, 11, "tumour", side, orientation)
        truth = simulate_subject(spec, root / "phantom")
        truths[spec.subject] = truth
        folder = root / "phantom" / spec.subject
        rows.append(
            dict(
                subject=spec.subject,
                cohort="tumour",
                source="phantom",
                volume=str(folder / FILES[0]),
                seg=str(folder / FILES[1]),
                report=truth["report"],
                laterality=side,
                sha256=truth["files"][FILES[0]],
                skull_stripped=False,
            )
        )
    manifest = pd.DataFrame(rows, columns=COLUMNS)
    out = root / "preprocessed"
    with pytest.MonkeyPatch.context() as mp:  # module scope: conftest's per-test cache is not set up yet
        mp.setenv("BRAIN3D_CACHE", str(root / "cache"))
        qc, ok = preprocess_cohort(
            manifest,
            root,
            out,
            shape=SHAPE,
            skull_strip="registration",
            fov_mm=PREPROCESS["fov_mm"],
            workers=1,
            on_error="fail",
            min_similarity=PREPROCESS["min_brain_similarity"],
            sequence=PREPROCESS["sequence"],
            max_voxels=PREPROCESS["max_voxels"],
            progress=False,
        )
    assert (root / "cache" / "preprocess").is_dir()
    assert set(qc["sequence"]) == {"FLAIR"}, qc[["subject", "sequence"]]  # the phantom's FLAIR, in any pose
    return root, out, qc.set_index("subject"), truths


@pytest.mark.parametrize("side,orientation,index", CASES, ids=[f"{s}-{o}" for s, o, _ in CASES])
def test_lesion_ends_on_its_side_of_w(stage_output, side, orientation, index):
    root, out, qc, truths = stage_output
    subject = f"{side}-{orientation}"
    truth = truths[subject]
    stored = nib.load(str(root / "phantom" / subject / FILES[0]))
    code = "".join(nib.aff2axcodes(stored.affine))
    if orientation == "LPS":
        assert code == "LPS"
    else:
        rotation = stored.affine[:3, :3] / np.linalg.norm(stored.affine[:3, :3], axis=0)
        assert np.abs(rotation).max(axis=0).min() < np.cos(np.radians(4)), "the stored grid is not oblique"
    assert qc.loc[subject, "status"] == "ok" and qc.loc[subject, "orientation"] == code
    assert bool(qc.loc[subject, "oblique"]) == (orientation == "oblique")

    volume = np.load(out / "volumes" / f"{subject}.npy")
    seg = np.load(out / "seg" / f"{subject}.npy")
    assert volume.shape == seg.shape == SHAPE
    lesion = seg > 0
    assert lesion.sum() > 50
    w = np.argwhere(lesion)[:, 2]
    half = SHAPE[2] / 2
    low = float((w < half).mean())  # share of lesion voxels on the subject's left (low W)
    if side == "left":
        assert w.mean() < half and low > 0.9, (
            f"{subject} ({code}): left lesion at W={w.mean():.1f}, {low:.0%} low-W"
        )
    else:
        assert w.mean() > half and low < 0.1, (
            f"{subject} ({code}): right lesion at W={w.mean():.1f}, {low:.0%} low-W"
        )
    # The label map is on the volume's grid: the edema it marks is the bright FLAIR signal of the volume.
    brain = (volume > 0) & ~lesion
    edema = seg == LABELS["edema"]
    assert edema.sum() > 10 and volume[edema].mean() > 1.2 * np.median(volume[brain])
    # Stored world position agrees: the lesion centre recorded in the truth is on the same side of the head.
    head = np.linalg.inv(np.array(truth["pose"]["head_to_world"]))
    centre = head @ np.r_[truth["lesions"][0]["centre_world_mm"], 1.0]
    assert (centre[0] < 0) == (side == "left")
