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

import functools
import gzip
import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from brain3d.data.atlas import FLAIR_CONTRAST, LOBES, flair_like, mni
from brain3d.data.manifest import COLUMNS
from brain3d.data.reports import healthy_report, laterality_from_report, tumour_report
from brain3d.io import atomic_path, read_json, sha256_file, write_json

GENERATOR_VERSION = 2  # 2: BraTS-sized whole tumours
SIDES = ("left", "right", "bilateral", "undefined")
ORIENTATIONS = ("RAS", "LPS", "LAS", "PIR", "oblique")
LABELS = {"necrosis": 1, "edema": 2, "enhancing": 4}  # BraTS convention, 0 = background
FILES = ("flair.nii.gz", "seg.nii.gz")

# Where gliomas arise (unilateral lesions): mostly frontal, temporal and parietal, as in BraTS.
_LOBE_WEIGHTS = {
    "frontal": 0.34,
    "temporal": 0.26,
    "parietal": 0.2,
    "occipital": 0.07,
    "insula": 0.04,
    "cerebellum": 0.04,
    "deep": 0.03,
    "cingulate": 0.02,
}
_HEAD_CENTRE = np.array([0.0, -18.0, 8.0])  # MNI mm, the pivot of the random head pose
_NECK_VOXELS = 12  # grid rows added below the MNI grid: the cord and the shells around it continue down
_LOBE_SHARE = 0.15  # a lobe is involved when it holds this share of a hemisphere's lesion ...
_LOBE_MIN_ML = 0.5  # ... and at least this volume
_COMPRESSION = 0.2  # relative loss of lateral-ventricle volume recorded as compression
_GZIP_LEVEL = 1

# Whole-tumour size (WT = labels 1 + 2 + 4) per tumour subject, in ml of the head frame (MNI mm; the random
# pose then scales it by its determinant, 0.72-1.36, median 1). BraTS volumes are absolute ml (1 mm grid after
# rigid alignment to SRI24), so the target is absolute ml too: 81 ml is 4.3 % of the 1883 ml MNI brain mask.
# Source: WT label volumes of 74 BraTS 2020 training cases (a fixed 20 % split of the 369; 59 HGG, 15 LGG),
# read from the released segmentations: median 81.3 ml, range 16.6-230.9 ml, HGG 10th / 90th percentiles
# 33.2 / 170.7 ml. Model: a log-normal through that median with the log-SD of those percentiles
# (ln(170.7 / 33.2) / 2.563 = 0.64), truncated to that range: median 78, quartiles 52 / 117, 10th / 90th
# percentiles 36 / 160 ml. Third-party measurement, not a peer-reviewed table (README, "Design notes").
_WT_MEDIAN_ML = 81.3  # before truncation
_WT_LOG_SD = 0.64
_WT_RANGE_ML = (16.6, 230.9)
_BILATERAL_SHARE = (0.3, 0.7)  # a two-lesion bilateral tumour: the left lesion's share of the subject's WT
# Drawn edema reach (mm) -> effective thickness of the edema shell (`_fit_size`): edema reaches only 0.3 of
# it in grey matter and none into CSF or outside the brain. Calibrated on the drawn labels of a 500-subject
# cohort (395 tumours): median drawn / target WT 1.0; cerebellar lesions stay smaller (the cerebellum is).
_EDEMA_REACH = 0.6


@dataclass(frozen=True)
class SubjectSpec:
    """What the cohort plan fixes for one subject; the rest is drawn from (seed, index)."""

    subject: str
    index: int
    seed: int
    cohort: str  # "tumour" or "healthy"
    side: str  # left / right / bilateral / undefined, or "none" for healthy
    orientation: str | None = None  # force one of ORIENTATIONS (tests); None draws one


@dataclass
class _Lesion:
    centre: np.ndarray  # MNI mm
    radius: float  # core radius (mm) before shape noise
    axes: np.ndarray  # relative semi-axes (product ~1)
    rotation: np.ndarray  # (3, 3)
    kind: str  # ring (rim + necrosis) / solid (enhancing) / non_enhancing (label 1 core)
    rim_mm: float
    edema_mm: float
    clip: int  # 0 none, 1 keep x < 0, 2 keep x > 0
    lobe: str  # lobe the centre was drawn in
    hemisphere: str  # left / right / midline
    site: str | None = None  # named midline site (corpus callosum, vermis)


@dataclass(frozen=True, eq=False)
class _Head:
    """The MNI anatomy on a grid extended below (neck), with distance maps used for every subject."""

    affine: np.ndarray
    x: np.ndarray  # 1D MNI mm per axis
    y: np.ndarray
    z: np.ndarray
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    vent: np.ndarray  # float32 lateral-ventricle fraction
    lobe: np.ndarray
    hemi: np.ndarray
    shell: np.ndarray  # flat indices of the voxels 0 < dist_out <= 25 mm, where skull and scalp can be
    dist_out: np.ndarray  # mm from brain (and cord) at `shell`
    dist_in: np.ndarray  # mm to the nearest non-brain voxel
    dist_vent: np.ndarray  # mm to the lateral ventricles
    dirs: np.ndarray  # (3, n) unit vectors from the head centre at `shell`, to vary skull/scalp thickness
    vent_box: tuple[slice, slice, slice]  # bounding box of the lateral ventricles

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brain.shape

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])


# --------------------------------------------------------------------------------------------- cohort plan


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` into integer counts proportional to `weights` (Hamilton's method; ties by key order)."""
    norm = sum(weights.values())
    if norm <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    quotas = {k: total * w / norm for k, w in weights.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    order = sorted(quotas, key=lambda k: counts[k] - quotas[k])  # largest remainder first, stable
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def plan_cohort(
    n_subjects: int,
    seed: int,
    healthy_fraction: float,
    laterality_mix: dict[str, float],
) -> list[SubjectSpec]:
    """The subjects of a cohort: exact healthy/laterality counts, in a seeded shuffled order (the values come
    from params.yaml `download`: n_subjects, seed, healthy_fraction, laterality_mix {side: weight})."""
    mix = dict(laterality_mix)
    unknown = set(mix) - set(SIDES)
    if unknown:
        raise ValueError(f"laterality_mix: unknown side(s) {sorted(unknown)}; expected {SIDES}")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ValueError(f"healthy_fraction must be in [0, 1], got {healthy_fraction}")
    n_healthy = round(healthy_fraction * n_subjects)
    counts = largest_remainder(n_subjects - n_healthy, {s: mix.get(s, 0.0) for s in SIDES})
    kinds = ["none"] * n_healthy + [s for s in SIDES for _ in range(counts[s])]
    order = np.random.default_rng(seed).permutation(len(kinds))
    return [
        SubjectSpec(
            f"phantom-{i + 1:04d}", i + 1, seed, "healthy" if kinds[k] == "none" else "tumour", kinds[k]
        )
        for i, k in enumerate(order)
    ]


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
) -> pd.DataFrame:
    """Write the phantom cohort under `out_dir/<subject>/` and return its manifest rows (COLUMNS).

    Subjects run in parallel (`workers` processes); one whose files match its truth.json is reused, so an
    interrupted run resumes. Paths are relative to `root` when given (and under it).
    """
    from joblib import Parallel, delayed
    from tqdm import tqdm

    out_dir = Path(out_dir)
    specs = plan_cohort(n_subjects, seed, healthy_fraction, laterality_mix)
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
    head = _head()
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
    head = _head()
    pose, _ = _random_pose(rng)
    image, labels, _, _, boxes, _ = _lesioned_brain(spec, head, rng)
    image *= _bias_field(head, rng)
    affine, shape = _brain_grid(head, pose, rng, spec.orientation)
    to_template = np.linalg.inv(head.affine) @ np.linalg.inv(pose) @ affine
    matrix, offset = to_template[:3, :3], to_template[:3, 3]
    common = dict(output_shape=shape, mode="constant", cval=0, prefilter=False)
    flair = ndi.affine_transform(image, matrix, offset, order=1, output=np.float32, **common)
    brain = ndi.affine_transform(head.brain.view(np.uint8), matrix, offset, order=0, output=np.uint8,
                                 **common)
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


# -------------------------------------------------------------------------------------------------- anatomy


@functools.cache
def _head() -> _Head:
    """The MNI 2 mm anatomy with a neck below it and the distance maps, built once per process."""
    atlas = mni(2)
    pad = ((0, 0), (0, 0), (_NECK_VOXELS, 0))
    affine = atlas.affine.copy()
    affine[2, 3] -= _NECK_VOXELS * affine[2, 2]
    brain = np.pad(atlas.brain, pad)
    cord = np.zeros_like(brain)
    cord[:, :, :_NECK_VOXELS] = atlas.brain[:, :, :1]  # the medulla continues down as the cord
    wm = np.pad(atlas.wm, pad) + cord
    spacing = float(affine[0, 0])
    x, y, z = (affine[i, i] * np.arange(n) + affine[i, 3] for i, n in enumerate(brain.shape))
    vent = np.pad(atlas.ventricles, pad)
    dist_out = ndi.distance_transform_edt(~(brain | cord), sampling=spacing).ravel()
    shell = np.flatnonzero((dist_out > 0) & (dist_out <= 25.0))
    offsets = np.stack(
        [c[i] - c0 for c, i, c0 in zip((x, y, z), np.unravel_index(shell, brain.shape), _HEAD_CENTRE)]
    )
    offsets /= np.maximum(np.linalg.norm(offsets, axis=0), 1e-3)
    f32 = np.float32
    head = _Head(
        affine=affine,
        x=x,
        y=y,
        z=z,
        brain=brain,
        gm=np.pad(atlas.gm, pad),
        wm=wm.astype(f32),
        csf=np.pad(atlas.csf, pad),
        vent=vent.astype(f32),
        lobe=np.pad(atlas.lobe, pad),
        hemi=np.pad(atlas.hemi, pad),
        shell=shell,
        dist_out=dist_out[shell].astype(f32),
        dist_in=ndi.distance_transform_edt(brain, sampling=spacing).astype(f32),
        dist_vent=ndi.distance_transform_edt(~vent, sampling=spacing).astype(f32),
        dirs=offsets.astype(f32),
        vent_box=ndi.find_objects(vent.astype(np.uint8))[0],
    )
    for value in vars(head).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # shared by every subject of the process
    return head


def _skull_and_scalp(image: np.ndarray, head: _Head, rng: np.random.Generator) -> np.ndarray:
    """Wrap the brain in a CSF rim, a dark skull (faint diploe) and a bright fatty scalp (in place).

    Layer thicknesses vary smoothly around the head so the shells are not plain offsets of the brain.
    """
    rim, skull, scalp = rng.uniform(1.0, 3.0), rng.uniform(4.0, 7.0), rng.uniform(3.0, 6.0)
    tilt = rng.normal(size=3)
    tilt *= rng.uniform(0.05, 0.15) / np.linalg.norm(tilt)
    dist = head.dist_out / (1.0 + tilt.astype(np.float32) @ head.dirs)
    inner, outer = rim + skull, rim + skull + scalp
    fat, diploe = rng.uniform(0.85, 1.0), rng.uniform(0.1, 0.22)
    conditions = [
        dist <= rim,
        (dist > rim + skull / 3) & (dist <= inner - skull / 3),
        dist <= inner,
        dist <= inner + 0.3 * scalp,
        dist <= outer - 1.0,
        dist <= outer,
    ]
    values = [0.06, diploe, 0.03, 0.35, fat, 0.5]
    np.put(image, head.shell, np.select(conditions, values, default=0.0))  # no brain tissue there
    return image


def _bias_field(head: _Head, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field in [0.8, 1.2]: a random quadratic polynomial over the head."""
    x, y, z = (((a - c) / 100.0).astype(np.float32) for a, c in zip((head.x, head.y, head.z), _HEAD_CENTRE))
    c = rng.normal(size=9).astype(np.float32)
    field = (
        (c[0] * x + c[3] * x * x)[:, None, None]
        + (c[1] * y + c[4] * y * y)[None, :, None]
        + (c[2] * z + c[5] * z * z)[None, None, :]
        + (c[6] * np.outer(x, y))[:, :, None]
        + (c[7] * np.outer(y, z))[None]
        + (c[8] * np.outer(x, z))[:, None, :]
    )
    field -= field.mean()
    field *= rng.uniform(0.08, 0.2) / np.abs(field).max()
    field += 1.0
    return field


# -------------------------------------------------------------------------------------------------- tumours


def _plan_lesions(side: str, head: _Head, rng: np.random.Generator) -> list[_Lesion]:
    """One lesion per hemisphere side; bilateral = one per side or one crossing the corpus callosum;
    undefined = a small midline lesion (corpus callosum or vermis).

    Left, right and bilateral subjects draw their whole-tumour volume from the BraTS-sized distribution
    (`wt_volume_ml`; a two-lesion bilateral tumour splits it between the sides); the radius drawn here only
    sets the core / edema proportion. Undefined-side lesions stay small: a large one would reach into a
    hemisphere and its side could be named."""
    if side in ("left", "right"):
        return [_lateral_lesion(side, head, rng, rng.uniform(7.5, 20.0), wt_volume_ml(rng))]
    if side == "bilateral":
        volume = wt_volume_ml(rng)
        if rng.random() < 0.6:
            share = rng.uniform(*_BILATERAL_SHARE)
            return [
                _lateral_lesion(s, head, rng, rng.uniform(7.5, 17.0), volume * f)
                for s, f in (("left", share), ("right", 1.0 - share))
            ]
        radius = rng.uniform(12.0, 20.0)
        return [_midline_lesion("corpus callosum", head, rng, radius, crossing=True, volume_ml=volume)]
    if side == "undefined":
        site = "corpus callosum" if rng.random() < 0.5 else "vermis"
        return [_midline_lesion(site, head, rng, rng.uniform(7.5, 11.0), crossing=False)]
    raise ValueError(f"no lesion plan for side '{side}'")


def wt_volume_ml(rng: np.random.Generator) -> float:
    """One tumour subject's whole-tumour volume (ml): the BraTS 2020 log-normal truncated to its range
    (inverse CDF of one uniform draw)."""
    lo, hi = (NormalDist().cdf(math.log(v / _WT_MEDIAN_ML) / _WT_LOG_SD) for v in _WT_RANGE_ML)
    return _WT_MEDIAN_ML * math.exp(_WT_LOG_SD * NormalDist().inv_cdf(rng.uniform(lo, hi)))


def _fit_size(
    volume_ml: float, radius: float, edema_mm: float, edema_cap: float = math.inf
) -> tuple[float, float]:
    """Core radius and edema reach (mm) scaled together so the whole tumour holds about `volume_ml`: a
    sphere of radius core + _EDEMA_REACH x edema. A capped edema leaves the rest of the volume to the core."""
    outer = (3000.0 * volume_ml / (4.0 * math.pi)) ** (1 / 3)
    scale = outer / (radius + _EDEMA_REACH * edema_mm)
    radius, edema_mm = radius * scale, edema_mm * scale
    if edema_mm > edema_cap:
        edema_mm = edema_cap
        radius = outer - _EDEMA_REACH * edema_cap
    return radius, edema_mm


def _unit_volume(axes: np.ndarray) -> np.ndarray:
    """Relative semi-axes rescaled to product 1, so the radius alone sets the lesion volume."""
    return axes / np.prod(axes) ** (1 / 3)


def _lesion_kind(rng: np.random.Generator) -> tuple[str, float, float]:
    kind = str(rng.choice(["ring", "solid", "non_enhancing"], p=[0.6, 0.25, 0.15]))
    edema = rng.uniform(5.0, 25.0) if rng.random() < 0.92 else 0.0
    return kind, rng.uniform(2.5, 6.0), edema


def _lateral_lesion(
    side: str, head: _Head, rng: np.random.Generator, radius: float, volume_ml: float
) -> _Lesion:
    hemi = 1 if side == "left" else 2
    names = list(_LOBE_WEIGHTS)
    lobe = names[rng.choice(len(names), p=np.array(list(_LOBE_WEIGHTS.values())))]
    axes = _unit_volume(rng.uniform(0.8, 1.25, 3))
    rotation = _rotation(rng.normal(size=3), rng.uniform(0, 180))
    kind, rim, edema = _lesion_kind(rng)
    radius, edema = _fit_size(volume_ml, radius, edema)
    x = np.abs(head.x)[:, None, None]
    for attempt in range(12):
        if attempt == 6:
            lobe = "frontal"  # a large lesion that fits nowhere in a small lobe goes to the largest
        extent = radius * axes.max() * 1.2
        ok = (
            (head.lobe == LOBES.index(lobe) + 1)
            & (head.hemi == hemi)
            & (x >= extent + 2.0)
            & (head.dist_in >= 0.6 * radius + 4.0)
            & (head.dist_vent >= 0.5 * radius)
        )
        centre = _random_voxel(ok, head, rng)
        if centre is not None:
            return _Lesion(centre, radius, axes, rotation, kind, rim, edema, hemi, lobe, side)
        radius = max(7.5, radius * 0.85)
    raise RuntimeError(f"no room for a {side} lesion")  # unreachable with the MNI anatomy


def _midline_lesion(
    site: str,
    head: _Head,
    rng: np.random.Generator,
    radius: float,
    crossing: bool,
    volume_ml: float | None = None,
) -> _Lesion:
    """A lesion centred on the midline; `volume_ml` (a bilateral crossing tumour) sizes it, else the drawn
    radius stands (small undefined-side lesions)."""
    x, y, z = head.x[:, None, None], head.y[None, :, None], head.z[None, None, :]
    if site == "vermis":
        ok = (
            (x == 0)
            & (head.lobe == LOBES.index("cerebellum") + 1)
            & (head.gm > 0.4)
            & (z <= -15)
            & (head.dist_in >= 0.6 * radius)
        )
        lobe = "cerebellum"
    else:
        ok = (x == 0) & (head.wm > 0.5) & (z >= 10) & (z <= 28) & (y >= -35) & (y <= 25)
        lobe = "cingulate"
    # A crossing lesion is wide across the midline (butterfly); an undefined one stays narrow and long.
    stretch = (
        np.array([rng.uniform(1.3, 1.6), rng.uniform(0.9, 1.2), 0.8])
        if crossing
        else np.array([0.8, rng.uniform(1.1, 1.4), 1.0])
    )
    axes = _unit_volume(stretch)
    rotation = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(-15, 15))  # keeps the long axis in place
    kind, rim, edema = _lesion_kind(rng)
    cap = rng.uniform(8.0, 20.0) if crossing else rng.uniform(3.0, 8.0)
    edema = min(edema, cap)
    if volume_ml is not None:
        radius, edema = _fit_size(volume_ml, radius, edema, cap)
    centre = _random_voxel(ok, head, rng)
    if centre is None:
        raise RuntimeError(f"no midline voxel for a {site} lesion")
    return _Lesion(centre, radius, axes, rotation, kind, rim, edema, 0, lobe, "midline", site)


def _random_voxel(mask: np.ndarray, head: _Head, rng: np.random.Generator) -> np.ndarray | None:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    i, j, k = np.unravel_index(idx[rng.integers(idx.size)], mask.shape)
    return np.array([head.x[i], head.y[j], head.z[k]])


def _box(head: _Head, centre: np.ndarray, half_mm: float) -> tuple[slice, slice, slice]:
    """Grid slices of the cube of half-size `half_mm` around `centre`, clipped to the grid."""
    ijk = (centre - head.affine[:3, 3]) / head.spacing
    half = half_mm / head.spacing
    return tuple(
        slice(max(0, int(c - half)), min(n, int(math.ceil(c + half)) + 1)) for c, n in zip(ijk, head.shape)
    )


def _offsets(head: _Head, box: tuple[slice, ...], centre: np.ndarray) -> list[np.ndarray]:
    return [
        np.asarray(a[s] - c, np.float32).reshape(shape)
        for a, s, c, shape in zip((head.x, head.y, head.z), box, centre, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)))
    ]


def _mass_effect(
    lesion: _Lesion, head: _Head, maps: dict[str, np.ndarray], rng: np.random.Generator
) -> float:
    """Push the brain radially away from a lesion and efface the CSF (sulci, ventricle) it squeezes.

    The push is largest at the core edge, falls smoothly to 0 at `reach` beyond it and fades near the brain
    surface, so the outline of the brain stays put. Returns the largest push at the midline (mm).
    """
    size = np.clip((lesion.radius - 6.0) / 10.0, 0.0, 1.0)
    push = lesion.radius * rng.uniform(0.25, 0.5) * size
    reach = 0.8 * lesion.radius + rng.uniform(12.0, 25.0)
    efface = rng.uniform(0.6, 1.0) * size
    if push <= 0:
        return 0.0
    box = _box(head, lesion.centre, lesion.radius * lesion.axes.max() + reach + head.spacing)
    dx, dy, dz = _offsets(head, box, lesion.centre)
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    t = np.clip((dist - lesion.radius) / reach, 0.0, 1.0)
    falloff = np.where(dist < lesion.radius, 1.0, 1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)
    along = push * np.minimum(dist / lesion.radius, 1.0) * falloff * np.clip(head.dist_in[box] / 8.0, 0, 1)
    along /= np.maximum(dist, 1e-3)
    shifted = [dx * along, dy * along, dz * along]
    # Backward mapping: the value at p comes from p - u(p), in the box's own voxel coordinates; only the
    # voxels that move are interpolated.
    moving = np.nonzero(along > 1e-4)
    coords = np.stack([i - s[moving] / head.spacing for i, s in zip(moving, shifted)])
    for name in ("gm", "wm", "csf", "vent"):
        part = maps[name][box]
        part[moving] = ndi.map_coordinates(part, coords, order=1, mode="nearest")
    gm, wm, csf = maps["gm"][box], maps["wm"][box], maps["csf"][box]
    lost = csf * efface * falloff
    to_gm = gm / np.maximum(gm + wm, 1e-6)
    maps["gm"][box] = gm + lost * to_gm
    maps["wm"][box] = wm + lost * (1.0 - to_gm)
    maps["csf"][box] = csf - lost
    maps["vent"][box] *= 1.0 - efface * falloff
    midline = (np.abs(head.x[box[0]]) < 1e-6)[:, None, None] & head.brain[box]
    return float(np.abs(shifted[0])[np.broadcast_to(midline, dist.shape)].max(initial=0.0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=2.5)
    return field / max(float(field.std()), 1e-6)


def _grow_lesion(
    lesion: _Lesion, head: _Head, maps: dict[str, np.ndarray], labels: np.ndarray, rng: np.random.Generator
) -> tuple[slice, ...]:
    """Draw a lesion's BraTS labels into `labels`: a noise-distorted ellipsoidal core (enhancing rim around
    necrosis, solid enhancement, or a non-enhancing core) and edema reaching further along white matter."""
    extent = lesion.radius * lesion.axes.max()
    box = _box(head, lesion.centre, 1.4 * extent + 1.6 * lesion.edema_mm + 6.0)
    offsets = np.stack(np.broadcast_arrays(*_offsets(head, box, lesion.centre)))
    local = np.tensordot((lesion.rotation.T / lesion.axes[:, None]).astype(np.float32), offsets, axes=1)
    shape = offsets.shape[1:]
    rho = np.linalg.norm(local, axis=0) / lesion.radius
    rho += rng.uniform(0.08, 0.18) * _smooth_noise(rng, shape, 3.0)
    rho += rng.uniform(0.02, 0.06) * _smooth_noise(rng, shape, 1.0)

    allowed = head.brain[box].copy()
    infratentorial = head.lobe[box] == LOBES.index("cerebellum") + 1
    allowed &= infratentorial if lesion.lobe == "cerebellum" else ~infratentorial
    if lesion.clip:
        x = head.x[box[0]][:, None, None]
        allowed &= (x < -1.0) if lesion.clip == 1 else (x > 1.0)
    core = (rho < 1.0) & allowed
    out = np.zeros(shape, np.uint8)
    if lesion.edema_mm > 0:
        reach = lesion.edema_mm * (0.3 + 0.7 * maps["wm"][box]) * (1.0 + 0.3 * _smooth_noise(rng, shape, 4.0))
        from_core = ndi.distance_transform_edt(~core, sampling=head.spacing)
        out[(from_core > 0) & (from_core < reach) & allowed & (maps["csf"][box] < 0.5)] = LABELS["edema"]
    if lesion.kind == "non_enhancing":
        out[core] = LABELS["necrosis"]
    else:
        out[core] = LABELS["enhancing"]
        if lesion.kind == "ring":
            out[core & (rho < 1.0 - lesion.rim_mm / lesion.radius)] = LABELS["necrosis"]
    region = labels[box]
    region[out > 0] = out[out > 0]
    return box


def _lesion_signal(
    image: np.ndarray, labels: np.ndarray, box: tuple[slice, ...], rng: np.random.Generator
) -> None:
    """FLAIR signal in a lesion box: edema brightest, enhancing rim high, necrosis intermediate and
    heterogeneous; blended into the surrounding brain over about one voxel."""
    lab = labels[box]
    base = image[box]
    texture = _smooth_noise(rng, lab.shape, 1.0)
    target = base.copy()
    edema, rim, necrosis = rng.uniform(1.08, 1.25), rng.uniform(0.88, 1.0), rng.uniform(0.4, 0.68)
    for label, level, spread in (
        (LABELS["edema"], edema, 0.04),
        (LABELS["enhancing"], rim, 0.06),
        (LABELS["necrosis"], necrosis, 0.1),
    ):
        hit = lab == label
        target[hit] = level + spread * texture[hit]
    band = ndi.binary_dilation(lab > 0, iterations=2)
    image[box] = np.where(band, ndi.gaussian_filter(target, 0.7), base)


# ------------------------------------------------------------------------------------------------ truth


def _healthy_truth() -> dict:
    """The truth fields of a healthy subject: the same schema as a tumour's, with nothing found."""
    return {
        "lobes": {"left": [], "right": [], "midline": []},
        "lesions": [],
        "findings": {
            "edema": False,
            "necrosis": False,
            "enhancement": False,
            "periventricular": False,
            "ventricle_compression": {"present": False, "side": None},
            "midline_shift_mm": 0.0,
        },
        "volumes_ml": {name: 0.0 for name in (*LABELS, "core", "total")},
        "max_diameter_mm": 0.0,
    }


def _tumour_truth(
    side: str,
    lesions: list[_Lesion],
    labels: np.ndarray,
    region: tuple[slice, ...],
    vent: np.ndarray,
    head: _Head,
    pose: np.ndarray,
    shift: float,
) -> dict:
    """Lobes, findings, volumes, diameters and centres measured on the drawn labels (scaled by the pose).

    `region` bounds every lesion voxel, so the measurements only look there.
    """
    linear = pose[:3, :3]
    voxel_ml = float(head.spacing**3 * abs(np.linalg.det(linear)) / 1000.0)
    scale = float(abs(np.linalg.det(linear)) ** (1 / 3))
    lab = labels[region]
    xs, ys, zs = (a[r] for a, r in zip((head.x, head.y, head.z), region))
    idx = np.nonzero(lab)
    points_all, values_all = np.stack([xs[idx[0]], ys[idx[1]], zs[idx[2]]], axis=1), lab[idx]
    entries = []
    for lesion in lesions:
        # Lesions never share a side: a clipped one owns the labels on its side of the midline.
        own = (
            slice(None)
            if not lesion.clip
            else points_all[:, 0] < 0
            if lesion.clip == 1
            else points_all[:, 0] > 0
        )
        points, values = points_all[own], values_all[own]
        core = points[(values == LABELS["enhancing"]) | (values == LABELS["necrosis"])]
        centre = points.mean(axis=0)
        entries.append(
            {
                "hemisphere": lesion.hemisphere,
                "lobe": lesion.lobe,
                "site": lesion.site,
                "kind": lesion.kind,
                "centre_mni_mm": _round(centre),
                "centre_world_mm": _round(linear @ centre + pose[:3, 3]),
                "volumes_ml": _volumes(values, voxel_ml),
                "core_diameter_mm": _diameter(core @ linear.T, head.spacing * scale),
                "lesion_diameter_mm": _diameter(points @ linear.T, head.spacing * scale),
            }
        )
    volumes = _volumes(values_all, voxel_ml)

    box = head.vent_box
    x = head.x[box[0]][:, None, None]
    before, after = head.vent[box], vent[box] * (labels[box] == 0)
    halves = {"left": np.broadcast_to(x < 0, before.shape), "right": np.broadcast_to(x > 0, before.shape)}
    change = {s: round(float(after[m].sum()) / float(before[m].sum()) - 1.0, 3) for s, m in halves.items()}
    squeezed = [s for s in halves if change[s] <= -_COMPRESSION]
    if side in halves:
        squeezed = [s for s in squeezed if s == side]  # a unilateral lesion: only the ipsilateral ventricle
    compression_side = None
    if squeezed:
        compression_side = "midline" if side == "undefined" else "both" if len(squeezed) == 2 else squeezed[0]
    near_ventricle = ndi.binary_dilation(lab > 0, iterations=1) & (vent[region] > 0.5)
    return {
        "lobes": _lobes_involved(side, lab > 0, head.lobe[region], head.hemi[region], head.spacing),
        "lesions": entries,
        "findings": {
            "edema": volumes["edema"] >= 0.5,
            "necrosis": volumes["necrosis"] >= 0.3,
            "enhancement": volumes["enhancing"] >= 0.3,
            "periventricular": bool(near_ventricle.any()),
            "ventricle_compression": {
                "present": bool(squeezed),
                "side": compression_side,
                "volume_change": change,
            },
            "midline_shift_mm": round(shift * scale, 1),
        },
        "volumes_ml": volumes,
        "max_diameter_mm": max(e["core_diameter_mm"] for e in entries),
    }


def _volumes(lab: np.ndarray, voxel_ml: float) -> dict[str, float]:
    counts = {name: int((lab == value).sum()) for name, value in LABELS.items()}
    vol = {name: round(n * voxel_ml, 2) for name, n in counts.items()}
    vol["core"] = round((counts["necrosis"] + counts["enhancing"]) * voxel_ml, 2)
    vol["total"] = round(sum(counts.values()) * voxel_ml, 2)
    return vol


def _diameter(points: np.ndarray, voxel_mm: float) -> float:
    """Largest distance across a set of voxel centres, plus one voxel (their extent)."""
    if len(points) < 2:
        return round(voxel_mm * len(points), 1)
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:  # flat or tiny sets: use all points
        pass
    return round(float(pdist(points).max()) + voxel_mm, 1)


def _lobes_involved(
    side: str, lesion: np.ndarray, lobe: np.ndarray, hemi: np.ndarray, spacing: float
) -> dict[str, list[str]]:
    """Per hemisphere, the lobes holding a clear share of that hemisphere's lesion (largest first).

    A unilateral lesion lists its own side only; only a midline (undefined-side) lesion lists the
    midline voxels (vermis, the x = 0 plane) under "midline"."""
    voxel_ml = spacing**3 / 1000.0
    out: dict[str, list[str]] = {}
    for key, value in (("left", 1), ("right", 2), ("midline", 0)):
        counts = np.bincount(lobe[lesion & (hemi == value)], minlength=len(LOBES) + 1)[1:]
        total = counts.sum()
        if (
            total == 0
            or (side in ("left", "right") and key != side)
            or (key == "midline" and side != "undefined")
        ):
            out[key] = []
            continue
        order = np.argsort(-counts, kind="stable")
        chosen = [
            LOBES[i]
            for i in order
            if counts[i] >= _LOBE_SHARE * total and counts[i] * voxel_ml >= _LOBE_MIN_ML
        ]
        out[key] = chosen or [LOBES[order[0]]]
    return out


def _round(v: np.ndarray, digits: int = 2) -> list[float]:
    return [round(float(a), digits) for a in v]


# ---------------------------------------------------------------------------------------------- acquisition


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _random_pose(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Head-to-world affine: rotation up to 12 deg about the head centre, shift up to 10 mm, scale 0.92-1.08
    (with a little per-axis variation of head shape)."""
    angle = rng.uniform(0.0, 12.0)
    rotation = _rotation(rng.normal(size=3), angle)
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.0, 10.0) / np.linalg.norm(shift)
    pose = np.eye(4)
    pose[:3, :3] = rotation * scale
    pose[:3, 3] = _HEAD_CENTRE + shift - pose[:3, :3] @ _HEAD_CENTRE
    info = {
        "head_to_world": [_round(row, 6) for row in pose],
        "rotation_deg": round(angle, 2),
        "translation_mm": _round(shift),
        "scale": _round(scale),
    }
    return pose, info


def _axcodes_matrix(code: str) -> np.ndarray:
    """Columns: the world direction of each voxel axis for a nibabel axis code such as 'LPS'."""
    unit = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
    return np.array([unit[c] for c in code], float).T


def _storage_grid(
    head: _Head, image: np.ndarray, pose: np.ndarray, rng: np.random.Generator, orientation: str | None
) -> tuple[np.ndarray, tuple[int, int, int], dict]:
    """Choose the stored grid first: orientation, voxel size and a field of view around the posed head."""
    kind = orientation or str(rng.choice(ORIENTATIONS))
    if kind not in ORIENTATIONS:
        raise ValueError(f"unknown orientation '{kind}', expected one of {ORIENTATIONS}")
    base = str(rng.choice(ORIENTATIONS[:-1])) if kind == "oblique" else kind
    directions = _axcodes_matrix(base)
    tilt = 0.0
    if kind == "oblique":
        tilt = rng.uniform(5.0, 20.0)
        directions = _rotation(rng.normal(size=3), tilt) @ directions
    if rng.random() < 0.5:
        voxel = np.full(3, rng.uniform(1.5, 2.5))
    else:
        voxel = np.full(3, rng.uniform(1.0, 1.4))
        voxel[rng.integers(3)] = rng.uniform(3.0, 4.5)
    # Field of view: the head (anything non-air) down to the upper neck, with a random margin of air.
    inside = image > 0
    lo, hi = [], []
    for axis, coords in enumerate((head.x, head.y, head.z)):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(coords[hit[0]])
        hi.append(coords[hit[-1]])
    lo[2] = max(lo[2], rng.uniform(-76.0, -68.0))  # the field of view ends at the foramen magnum
    lo, hi = np.array(lo) - rng.uniform(2, 8, 3), np.array(hi) + rng.uniform(2, 8, 3)
    affine, shape = _box_grid(lo, hi, pose, directions * voxel)
    storage = {
        "orientation": "".join(nib.aff2axcodes(affine)),
        "kind": kind,
        "oblique_deg": round(tilt, 2),
        "voxel_size_mm": _round(voxel),
        "shape": list(shape),
        "affine": [_round(r, 6) for r in affine],
    }
    return affine, shape, storage


def _box_grid(lo: np.ndarray, hi: np.ndarray, pose: np.ndarray, linear: np.ndarray
              ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the voxel grid with axes `linear` (direction x spacing) that covers the head-space box
    [lo, hi] after `pose`."""
    corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    world = corners @ pose[:3, :3].T + pose[:3, 3]
    ijk = world @ np.linalg.inv(linear).T
    start = ijk.min(axis=0)
    shape = tuple(int(n) for n in np.ceil(ijk.max(axis=0) - start) + 1)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = linear @ start
    return affine, shape


_BRAIN_VOXEL_MM = (2.0, 3.0)  # `_brain_grid`'s voxel size (mm), finer than the demo grid's 2.7-5.7 mm spacing


def _brain_grid(
    head: _Head, pose: np.ndarray, rng: np.random.Generator, orientation: str | None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """`_storage_grid` for a brain without a head (`simulate_brain`): oblique as often as in the cohort, else
    world-aligned (the other axis orders give the same grid after canonical reorientation); isotropic
    `_BRAIN_VOXEL_MM` voxels (the cohort's 1-4.5 mm ones finer than the standardised grid only cost time);
    field of view the posed brain's box plus 2-8 mm of air."""
    kind = orientation or str(rng.choice(ORIENTATIONS))
    if kind not in ORIENTATIONS:
        raise ValueError(f"unknown orientation '{kind}', expected one of {ORIENTATIONS}")
    directions = _rotation(rng.normal(size=3), rng.uniform(5.0, 20.0)) if kind == "oblique" else np.eye(3)
    voxel = rng.uniform(*_BRAIN_VOXEL_MM)
    box = ndi.find_objects(head.brain.view(np.uint8))[0]
    lo = np.array([c[b.start] for c, b in zip((head.x, head.y, head.z), box)]) - rng.uniform(2, 8, 3)
    hi = np.array([c[b.stop - 1] for c, b in zip((head.x, head.y, head.z), box)]) + rng.uniform(2, 8, 3)
    affine, shape = _box_grid(lo, hi, pose, directions * voxel)
    return affine, shape


def _sample_labels(
    seg: np.ndarray,
    labels: np.ndarray,
    region: tuple[slice, ...],
    to_template: np.ndarray,
    head: _Head,
    pose: np.ndarray,
    affine: np.ndarray,
) -> None:
    """Nearest-neighbour labels on the stored grid, sampling only the part that can hold the lesion."""
    lo = np.array([r.start for r in region]) - 1.0
    hi = np.array([r.stop for r in region]) + 0.0
    corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    to_grid = np.linalg.inv(affine) @ pose @ head.affine
    ijk = corners @ to_grid[:3, :3].T + to_grid[:3, 3]
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, seg.shape)
    if np.any(stop <= start):
        return
    shifted = to_template.copy()
    shifted[:3, 3] += to_template[:3, :3] @ start
    seg[tuple(slice(a, b) for a, b in zip(start, stop))] = ndi.affine_transform(
        labels,
        shifted[:3, :3],
        shifted[:3, 3],
        output_shape=tuple(stop - start),
        order=0,
        mode="constant",
        cval=0,
        output=np.uint8,
    )


def _acquire(flair: np.ndarray, rng: np.random.Generator) -> dict:
    """Rician noise (1-3 % of the bright-tissue level) and an arbitrary int16 intensity scale (in place)."""
    sigma = rng.uniform(0.01, 0.03)
    real = rng.standard_normal(flair.shape, dtype=np.float32)
    real *= sigma
    flair += real
    np.square(flair, out=flair)
    imag = rng.standard_normal(flair.shape, dtype=np.float32)
    imag *= sigma
    np.square(imag, out=imag)
    flair += imag
    np.sqrt(flair, out=flair)
    scale = float(np.exp(rng.uniform(math.log(400.0), math.log(12000.0))))
    flair *= scale
    data = np.clip(np.rint(flair), 0, np.iinfo(np.int16).max).astype(np.int16)
    return {"data": data, "noise_sigma": round(sigma, 4), "intensity_scale": round(scale, 2)}


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    """Atomically write a .nii.gz whose bytes depend only on the data (gzip mtime 0); return its sha256."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()
