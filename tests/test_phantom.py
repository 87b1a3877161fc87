"""The phantom cohort: exact mix, bit-identical reruns, honest orientation, skull/scalp, truth vs report,
resume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import check_tumour_report
from scipy import ndimage as ndi

from brain3d.data import phantom
from brain3d.data.atlas import mni
from brain3d.data.manifest import COLUMNS, validate
from brain3d.data.phantom import (
    FILES,
    LABELS,
    ORIENTATIONS,
    SubjectSpec,
    generate_cohort,
    largest_remainder,
    plan_cohort,
    simulate_subject,
    wt_volume_ml,
)
from brain3d.data.reports import healthy_report
from brain3d.fileio import read_json, sha256_file

N, SEED = 10, 3  # 2 healthy; tumours 4 left, 3 right, 1 bilateral (largest remainder of the paper's mix)
# The paper's cohort mix as fixed test inputs (params.yaml's demo profile sets the pipeline's own).
MIX = {"left": 0.425, "right": 0.407, "bilateral": 0.146, "undefined": 0.022}
PLAN = {"healthy_fraction": 0.21, "laterality_mix": MIX}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    out = root / "data" / "phantom"
    df = generate_cohort(out, n_subjects=N, seed=SEED, **PLAN, workers=2, root=root, progress=False)
    return root, out, df


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def brain_in_file(truth: dict, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The MNI brain mask carried through the subject's pose onto the stored grid (nearest neighbour)."""
    atlas = mni(2)
    pose = np.array(truth["pose"]["head_to_world"])
    m = np.linalg.inv(atlas.affine) @ np.linalg.inv(pose) @ affine
    return (
        ndi.affine_transform(atlas.brain.astype(np.uint8), m[:3, :3], m[:3, 3], output_shape=shape, order=0)
        > 0
    )


# ---------------------------------------------------------------------------------------------------- plan


def test_cohort_mix_counts_are_exact():
    specs = plan_cohort(120, seed=42, **PLAN)
    sides = [s.side for s in specs]
    assert {k: sides.count(k) for k in ("none", "left", "right", "bilateral", "undefined")} == {
        "none": 25,
        "left": 40,
        "right": 39,
        "bilateral": 14,
        "undefined": 2,
    }
    assert [s.subject for s in specs] == [f"phantom-{i:04d}" for i in range(1, 121)]
    assert [s.side for s in plan_cohort(120, seed=42, **PLAN)] == sides  # seeded order ...
    assert [s.side for s in plan_cohort(120, seed=43, **PLAN)] != sides  # ... that depends on the seed
    custom = [
        s.side for s in plan_cohort(37, seed=1, healthy_fraction=0.3, laterality_mix={"left": 1, "right": 2})
    ]
    assert (custom.count("none"), custom.count("left"), custom.count("right")) == (11, 9, 17)
    assert largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    with pytest.raises(ValueError):
        plan_cohort(10, seed=42, healthy_fraction=0.2, laterality_mix={"middle": 1.0})


def test_manifest_rows(cohort):
    root, out, df = cohort
    assert list(df.columns) == COLUMNS and len(df) == N
    assert validate(df, root) == []
    assert (df["source"] == "phantom").all() and not df["skull_stripped"].any()
    assert sorted(df["laterality"]) == sorted(["none"] * 2 + ["left"] * 4 + ["right"] * 3 + ["bilateral"])
    for row in df.itertuples():
        assert not Path(row.volume).is_absolute() and (root / row.volume).exists()
        assert row.volume == f"data/phantom/{row.subject}/flair.nii.gz"
        assert sha256_file(root / row.volume) == row.sha256


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_in_another_process(cohort, tmp_path):
    _, out, df = cohort
    specs = {s.subject: s for s in plan_cohort(N, seed=SEED, **PLAN)}
    for subject in (
        df.loc[df.cohort == "tumour", "subject"].iloc[0],
        df.loc[df.cohort == "healthy", "subject"].iloc[0],
    ):
        simulate_subject(specs[subject], tmp_path)  # in this process; the cohort ran in worker processes
        for name in (*FILES, "truth.json"):
            assert (tmp_path / subject / name).read_bytes() == (out / subject / name).read_bytes(), (
                subject,
                name,
            )
        assert (out / subject / FILES[0]).read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime
    other = SubjectSpec(specs[subject].subject, specs[subject].index, SEED + 1, "healthy", "none")
    simulate_subject(other, tmp_path / "other")
    assert (tmp_path / "other" / subject / FILES[0]).read_bytes() != (out / subject / FILES[0]).read_bytes()


# ------------------------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_left_lesion_is_on_the_subject_left_in_any_storage_orientation(orientation, tmp_path):
    spec = SubjectSpec(
        f"lat-{orientation}", ORIENTATIONS.index(orientation) + 1, 5, "tumour", "left", orientation
    )
    truth = simulate_subject(spec, tmp_path)
    seg, affine = load(tmp_path / spec.subject / FILES[1])
    flair_img = nib.load(str(tmp_path / spec.subject / FILES[0]))
    assert np.allclose(flair_img.affine, affine, atol=1e-4)
    assert flair_img.header["qform_code"] > 0 and flair_img.header["sform_code"] > 0
    assert np.allclose(flair_img.get_qform(), flair_img.get_sform(), atol=1e-3)
    code = "".join(nib.aff2axcodes(affine))
    assert code == truth["storage"]["orientation"]
    if orientation != "oblique":
        assert code == orientation
    else:
        rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        assert np.abs(rotation).max(axis=0).min() < np.cos(np.radians(4))  # really oblique

    world = world_points(seg > 0, affine)
    assert len(world) > 50
    # The head may be turned and shifted in the scanner: express the lesion in the head's own frame.
    head = np.c_[world, np.ones(len(world))] @ np.linalg.inv(np.array(truth["pose"]["head_to_world"])).T
    assert (head[:, 0] < 0).all()
    assert np.linalg.norm(world.mean(axis=0) - truth["lesions"][0]["centre_world_mm"]) < 4.0
    # A right-side lesion drawn from the same numbers lands on the other side.
    mirror = SubjectSpec(spec.subject + "-r", spec.index, spec.seed, "tumour", "right", orientation)
    truth_r = simulate_subject(mirror, tmp_path)
    seg_r, affine_r = load(tmp_path / mirror.subject / FILES[1])
    world_r = world_points(seg_r > 0, affine_r)
    head_r = (
        np.c_[world_r, np.ones(len(world_r))] @ np.linalg.inv(np.array(truth_r["pose"]["head_to_world"])).T
    )
    assert (head_r[:, 0] > 0).all()


# ------------------------------------------------------------------------------------------ reshaped anatomy


def test_a_reshaped_subject_has_its_own_brain_with_its_sides_kept(tmp_path):
    from brain3d.data.phantom.anatomy import _head, reshaped_head

    mni_head, own = _head(), reshaped_head(2028, 3)
    assert own.shape == mni_head.shape
    changed = float((own.brain != mni_head.brain).mean()) / float(mni_head.brain.mean())
    assert changed > 0.05, f"only {changed:.3f} of the brain moved: not another anatomy"
    x = own.x[:, None, None]
    assert (own.hemi == 1).any() and (own.hemi == 2).any()
    left, right = np.broadcast_to(x, own.shape)[own.hemi == 1], np.broadcast_to(x, own.shape)[own.hemi == 2]
    assert (left < 0).mean() > 0.99 and (right > 0).mean() > 0.99  # the midline stays the midline
    assert reshaped_head(2028, 3) is own and reshaped_head(2028, 4).brain.sum() != own.brain.sum()

    spec = SubjectSpec("own-1", 3, 2028, "tumour", "bilateral", reshaped=True)
    truth = simulate_subject(spec, tmp_path)  # raises if the report's side disagreed with the truth's
    assert truth["spec"]["reshaped"]
    assert {les["hemisphere"] for les in truth["lesions"]} <= {"left", "right", "midline"}
    plain = simulate_subject(SubjectSpec("mni-1", 3, 2028, "tumour", "bilateral"), tmp_path)
    assert truth["files"][FILES[0]] != plain["files"][FILES[0]]


# ----------------------------------------------------------------------------------------- skull and scalp


def test_head_has_dark_skull_between_brain_and_bright_scalp(cohort):
    _, out, df = cohort
    for subject in df["subject"].iloc[:3]:
        truth = read_json(out / subject / "truth.json")
        data, affine = load(out / subject / FILES[0])
        data = data.astype(np.float32)
        brain = brain_in_file(truth, data.shape, affine)
        level = float(np.median(data[brain]))
        bright = data > 0.5 * level
        outside = ~ndi.binary_dilation(brain, iterations=1)
        scalp = bright & outside
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        assert scalp.sum() * voxel_ml > 100, subject  # a real scalp, not a few stray voxels
        # A global threshold cannot tell brain from scalp: the scalp is as bright as the brain ...
        assert np.percentile(data[scalp], 90) > level, subject
        # ... but a dark skull separates them: the bright component holding the brain barely touches it.
        labels, _ = ndi.label(bright)
        brain_label = np.bincount(labels[brain & bright]).argmax()
        assert (labels[scalp] == brain_label).mean() < 0.03, subject


# ------------------------------------------------------------------------------------------ truth, report


def test_truth_report_and_labels_agree(cohort):
    _, out, df = cohort
    for row in df.itertuples():
        truth = read_json(out / row.subject / "truth.json")
        seg, affine = load(out / row.subject / FILES[1])
        assert truth["report"] == row.report and truth["side"] == row.laterality
        if row.cohort == "healthy":
            assert row.report == healthy_report(row.subject) and not seg.any()
            continue
        check_tumour_report(truth, row.report)
        assert set(np.unique(seg)) <= {0, *LABELS.values()}
        findings = truth["findings"]
        for name, flag in (("edema", "edema"), ("necrosis", "necrosis"), ("enhancing", "enhancement")):
            assert findings[flag] == (
                truth["volumes_ml"][name] >= 0.3 if name != "edema" else truth["volumes_ml"][name] >= 0.5
            )
        # Volumes in truth match the stored label map (different grid, nearest neighbour).
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        assert (seg > 0).sum() * voxel_ml == pytest.approx(truth["volumes_ml"]["total"], rel=0.2)
        lesion_lobes = [lobe for key in ("left", "right", "midline") for lobe in truth["lobes"][key]]
        assert lesion_lobes and all(
            truth["lobes"][k] == []
            for k in ("left", "right")
            if row.laterality not in (k, "bilateral", "undefined")
        )
        assert 10 < truth["max_diameter_mm"] < 100  # BraTS-sized cores: median ~4 cm, the largest ~9 cm


def test_lesion_signal_on_flair(cohort):
    _, out, df = cohort
    checked = 0
    for subject in df.loc[df.cohort == "tumour", "subject"]:
        truth = read_json(out / subject / "truth.json")
        if truth["volumes_ml"]["edema"] < 5 or truth["volumes_ml"]["necrosis"] < 2:
            continue
        flair, affine = load(out / subject / FILES[0])
        seg, _ = load(out / subject / FILES[1])
        brain = brain_in_file(truth, flair.shape, affine) & (seg == 0)
        edema = flair[seg == LABELS["edema"]].mean()
        assert edema > 1.3 * np.median(flair[brain]), subject  # edema is bright
        assert edema > flair[seg == LABELS["necrosis"]].mean(), subject  # necrosis intermediate
        checked += 1
    assert checked >= 2


def test_ventricle_compression_is_ipsilateral(cohort):
    _, out, df = cohort
    compressed = []
    for subject in df.loc[df.laterality.isin(["left", "right"]), "subject"]:
        truth = read_json(out / subject / "truth.json")
        compression = truth["findings"]["ventricle_compression"]
        if compression["present"]:
            assert compression["side"] == truth["side"], subject
            assert compression["volume_change"][truth["side"]] <= -0.2, subject
            compressed.append(subject)
    assert compressed, (
        "no one-sided tumour of the cohort compresses a ventricle: the check above checked nothing"
    )


# -------------------------------------------------------------------------------------------- tumour size

# BraTS 2020 whole-tumour (labels 1 + 2 + 4) volumes in ml, as cited in phantom/lesions.py and docs/design.md: 74
# training cases, median 81.3, range 16.6-230.9, HGG 10th / 90th percentiles 33.2 / 170.7.
BRATS_WT_MEDIAN, BRATS_WT_RANGE, BRATS_WT_P10_P90 = 81.3, (16.6, 230.9), (33.2, 170.7)


def test_whole_tumour_volumes_are_sized_like_brats():
    rng = np.random.default_rng(0)
    wt = np.array([wt_volume_ml(rng) for _ in range(500)])
    p10, p25, p50, p75, p90 = np.percentile(wt, [10, 25, 50, 75, 90])
    assert p50 == pytest.approx(BRATS_WT_MEDIAN, rel=0.1)
    assert p10 == pytest.approx(BRATS_WT_P10_P90[0], rel=0.2)
    assert p90 == pytest.approx(BRATS_WT_P10_P90[1], rel=0.2)
    assert 45 < p25 < 60 and 100 < p75 < 135  # quartiles of the fitted, truncated log-normal: 52 / 117
    assert BRATS_WT_RANGE[0] <= wt.min() and wt.max() <= BRATS_WT_RANGE[1]


def test_drawn_tumours_hold_their_planned_volume(monkeypatch):
    """Core radius and edema reach fitted to a planned whole-tumour volume grow labels of about that volume
    (mass effect and growth as in `simulate_subject`, on the head grid that truth.json measures)."""
    planned = []

    def record(rng: np.random.Generator) -> float:
        planned.append(wt_volume_ml(rng))
        return planned[-1]

    monkeypatch.setattr(phantom.lesions, "wt_volume_ml", record)  # where _plan_lesions looks it up
    head = phantom._head()
    ratios = []
    for i, side in enumerate(["left", "right", "bilateral"] * 6):
        rng = np.random.default_rng(i)
        planned.clear()
        lesions = phantom._plan_lesions(side, head, rng)
        maps = {k: getattr(head, k).copy() for k in ("gm", "wm", "csf", "vent")}
        labels = np.zeros(head.shape, np.uint8)
        for lesion in lesions:
            phantom._mass_effect(lesion, head, maps, rng)
        for lesion in lesions:
            phantom._grow_lesion(lesion, head, maps, labels, rng)
        ratios.append((labels > 0).sum() * head.spacing**3 / 1000.0 / planned[0])
    print(f"drawn / planned WT: median {np.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    assert 0.85 < np.median(ratios) < 1.2


# -------------------------------------------------------------------------------------------------- resume


def test_resume_skips_finished_subjects_and_redoes_broken_ones(cohort):
    root, out, df = cohort
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    first, second = df["subject"].iloc[0], df["subject"].iloc[1]
    original = (out / first / FILES[1]).read_bytes()
    (out / first / FILES[1]).unlink()
    with open(out / second / FILES[0], "ab") as fh:
        fh.write(b"\0")
    again = generate_cohort(out, n_subjects=N, seed=SEED, **PLAN, workers=1, root=root, progress=False)
    assert again.equals(df)
    assert (out / first / FILES[1]).read_bytes() == original
    assert sha256_file(out / second / FILES[0]) == df.loc[df.subject == second, "sha256"].item()
    untouched = [p for p in stamps if p.parent.name not in (first, second)]
    assert untouched and all(p.stat().st_mtime_ns == stamps[p] for p in untouched)
