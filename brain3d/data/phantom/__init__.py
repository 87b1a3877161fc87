"""The embedded demo cohort: FLAIR head phantoms with BraTS-style tumours and reports written from truth.

Each subject is the MNI152 brain (`atlas.mni`) in FLAIR-like contrast inside a synthetic CSF rim, skull
and scalp. Tumour subjects get one or two lesions (irregular enhancing rim, necrotic centre, edema spreading
through white matter) that push the surrounding brain and squeeze its CSF. The head is then posed at random
and sampled onto a scanner grid of random orientation and voxel size: the output affine is chosen first and
each voxel's world point is looked up in the phantom, so the stored orientation is exact. A bias field,
Rician noise and an arbitrary int16 scale finish the volume. `truth.json` records what was drawn and the
report written from it. The same seed gives bit-identical files.

World coordinates: the phantom's head frame is MNI mm (x < 0 is the subject's LEFT); `truth.pose` maps it
to the scanner (world) frame of the stored files.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from brain3d.data.atlas import FLAIR_CONTRAST, flair_like
from brain3d.data.manifest import COLUMNS
from brain3d.data.phantom.anatomy import _bias_field, _Head, _head, _skull_and_scalp, reshaped_head
from brain3d.data.phantom.lesions import (
    LABELS,
    _grow_lesion,
    _Lesion,
    _lesion_signal,
    _mass_effect,
    _plan_lesions,
    wt_volume_ml,
)
from brain3d.data.phantom.plan import SIDES, SubjectSpec, largest_remainder, plan_cohort
from brain3d.data.phantom.scanner import (
    ORIENTATIONS,
    _acquire,
    _brain_grid,
    _random_pose,
    _sample_labels,
    _storage_grid,
    _write_nifti,
)
from brain3d.data.phantom.truth import _healthy_truth, _tumour_truth
from brain3d.data.reports import healthy_report, laterality_from_report, tumour_report
from brain3d.fileio import read_json, sha256_file, write_json

__all__ = [
    "FILES",
    "GENERATOR_VERSION",
    "LABELS",
    "ORIENTATIONS",
    "SIDES",
    "SubjectSpec",
    "generate_cohort",
    "largest_remainder",
    "plan_cohort",
    "simulate_brain",
    "simulate_subject",
    "wt_volume_ml",
]

GENERATOR_VERSION = 2  # 2: BraTS-sized whole tumours
FILES = ("flair.nii.gz", "seg.nii.gz")


# ------------------------------------------------------------------------------------------------- cohort


def generate_cohort(
    out_dir: Path,
    *,
    n_subjects: int,
    seed: int,
    healthy_fraction: float,
    laterality_mix: dict[str, float],
    workers: int,
    root: Path | None = None,
    progress: bool = True,
    reshaped: bool = False,
) -> pd.DataFrame:
    """Write the phantom cohort under `out_dir/<subject>/` and return its manifest rows (COLUMNS).

    Subjects run in parallel (`workers` processes); one whose files match its truth.json is reused, so an
    interrupted run resumes. Paths are relative to `root` when given (and under it). With `reshaped` every
    subject has its own anatomy (`anatomy.reshaped_head`), not the MNI brain.
    """
    from joblib import Parallel, delayed
    from tqdm import tqdm

    out_dir = Path(out_dir)
    specs = plan_cohort(n_subjects, seed, healthy_fraction, laterality_mix, reshaped)
    jobs = Parallel(n_jobs=workers, return_as="generator")(
        delayed(simulate_subject)(s, out_dir) for s in specs
    )
    truths = list(tqdm(jobs, total=len(specs), desc="phantom cohort", unit="subject", disable=not progress))
    rows = [_manifest_row(t, out_dir, root) for t in truths]
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("subject").reset_index(drop=True)


def _manifest_row(truth: dict, out_dir: Path, root: Path | None) -> dict:
    folder = out_dir / truth["subject"]
    return {
        "subject": truth["subject"],
        "cohort": truth["cohort"],
        "source": "phantom",
        "volume": _rel(folder / FILES[0], root),
        "seg": _rel(folder / FILES[1], root),
        "report": truth["report"],
        "laterality": truth["side"],
        "sha256": truth["files"][FILES[0]],
        "skull_stripped": False,
    }


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).resolve().as_posix()


# ------------------------------------------------------------------------------------------------ subject


def simulate_subject(spec: SubjectSpec, out_dir: Path) -> dict:
    """Write one subject's flair/seg/truth under `out_dir/<subject>/` (or reuse valid ones); return truth."""
    folder = Path(out_dir) / spec.subject
    existing = _reusable_truth(spec, folder)
    if existing is not None:
        return existing

    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, spec.index]))
    head = _subject_head(spec)
    pose, pose_info = _random_pose(rng)
    image, labels, maps, lesions, boxes, shift = _lesioned_brain(spec, head, rng)
    image = _skull_and_scalp(image, head, rng)
    image *= _bias_field(head, rng)

    affine, shape, storage = _storage_grid(head, image, pose, rng, spec.orientation)
    to_template = np.linalg.inv(head.affine) @ np.linalg.inv(pose) @ affine
    flair = ndi.affine_transform(
        image,
        to_template[:3, :3],
        to_template[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
        output=np.float32,
    )
    acquisition = _acquire(flair, rng)
    seg = np.zeros(shape, np.uint8)
    # Every lesion voxel lies in the union of the lesion boxes.
    region = (
        tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
        if boxes
        else None
    )
    if region:
        _sample_labels(seg, labels, region, to_template, head, pose, affine)

    folder.mkdir(parents=True, exist_ok=True)
    hashes = {
        FILES[0]: _write_nifti(folder / FILES[0], acquisition.pop("data"), affine),
        FILES[1]: _write_nifti(folder / FILES[1], seg, affine),
    }
    truth = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "subject": spec.subject,
        "cohort": spec.cohort,
        "side": spec.side,
        "pose": pose_info,
        "storage": storage,
        "acquisition": acquisition,
        "files": hashes,
    }
    if region:
        truth.update(_tumour_truth(spec.side, lesions, labels, region, maps["vent"], head, pose, shift))
        truth["report"] = tumour_report(truth, rng)
        if laterality_from_report(truth["report"]) != spec.side:
            raise RuntimeError(f"{spec.subject}: report laterality disagrees with truth: {truth['report']}")
    else:
        truth.update(_healthy_truth(), report=healthy_report(spec.subject))
    write_json(folder / "truth.json", truth)
    return truth


def _subject_head(spec: SubjectSpec) -> _Head:
    return reshaped_head(spec.seed, spec.index) if spec.reshaped else _head()


def _lesioned_brain(
    spec: SubjectSpec, head: _Head, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[_Lesion], list[tuple[slice, ...]], float]:
    """The subject's brain on the head grid, before skull, pose and scanner: FLAIR-like image (float32),
    BraTS labels (uint8), tissue maps after mass effect, lesions, their label boxes and the largest midline
    shift (mm). Healthy subjects draw only their contrast."""
    maps = {k: getattr(head, k) for k in ("gm", "wm", "csf", "vent")}
    labels = np.zeros(head.shape, np.uint8)
    lesions, boxes, shift = [], [], 0.0
    if spec.cohort == "tumour":
        lesions = _plan_lesions(spec.side, head, rng)
        maps = {k: v.copy() for k, v in maps.items()}
        shift = max(_mass_effect(les, head, maps, rng) for les in lesions)
        boxes = [_grow_lesion(les, head, maps, labels, rng) for les in lesions]

    contrast = tuple(float(c) for c in np.asarray(FLAIR_CONTRAST) * rng.uniform(0.95, 1.05, 3))
    image = flair_like(maps["gm"], maps["wm"], maps["csf"], contrast)
    for box in boxes:
        _lesion_signal(image, labels, box, rng)
    return image, labels, maps, lesions, boxes, shift


def simulate_brain(spec: SubjectSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`simulate_subject` without skull, scalp, files or truth, for a pretraining corpus
    (brain3d/data/corpus.py): (flair int16, seg uint8, brain mask bool, affine) on a scanner grid around the
    brain.

    Anatomy, lesions, pose, contrast, bias field and noise are the cohort's, and everything up to the skull is
    drawn in the same order, so one spec gives the same brain and lesions through both paths. What is left out
    is what preprocessing removes or only approximates: the skull and scalp (stripped), the storage axis order
    (undone by canonical reorientation), anisotropic voxels, the NIfTI round trip and the registration (the
    template brain mask travels through the known pose instead).
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, spec.index]))
    head = _subject_head(spec)
    pose, _ = _random_pose(rng)
    image, labels, _, _, boxes, _ = _lesioned_brain(spec, head, rng)
    image *= _bias_field(head, rng)
    affine, shape = _brain_grid(head, pose, rng, spec.orientation)
    to_template = np.linalg.inv(head.affine) @ np.linalg.inv(pose) @ affine
    matrix, offset = to_template[:3, :3], to_template[:3, 3]
    common = dict(output_shape=shape, mode="constant", cval=0, prefilter=False)
    flair = ndi.affine_transform(image, matrix, offset, order=1, output=np.float32, **common)
    brain = ndi.affine_transform(
        head.brain.view(np.uint8), matrix, offset, order=0, output=np.uint8, **common
    )
    seg = np.zeros(shape, np.uint8)
    if boxes:  # every lesion voxel lies in the union of the lesion boxes
        region = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
        _sample_labels(seg, labels, region, to_template, head, pose, affine)
    return _acquire(flair, rng)["data"], seg, brain > 0, affine


def _reusable_truth(spec: SubjectSpec, folder: Path) -> dict | None:
    """The subject's truth when its three files exist, match the plan and the recorded hashes."""
    truth_path = folder / "truth.json"
    if not truth_path.exists() or not all((folder / f).exists() for f in FILES):
        return None
    try:
        truth = read_json(truth_path)
    except ValueError:
        return None
    if truth.get("generator_version") != GENERATOR_VERSION or truth.get("spec") != asdict(spec):
        return None
    if any(truth.get("files", {}).get(f) != sha256_file(folder / f) for f in FILES):
        return None
    return truth
