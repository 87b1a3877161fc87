"""Preprocessing (SPEC §3): skull strip -> canonical RAS -> 1st-99th percentile clip inside the brain
mask, scaled to [0, 1] -> resample to (D, H, W).

Array convention of the whole project: voxel order RAS transposed to (z, y, x) = (D, H, W); D runs
inferior->superior, H posterior->anterior, W from the subject's LEFT (index 0) to RIGHT. The output grid
is aligned with the world (scanner RAS) axes and centred on the brain, so an oblique or flipped file
ends in the same orientation as any other. One function, `standardize`, is used by training, the
baselines, LIME and the CLI.

Kept whole (about 410 lines): the grid, resampling, the brain/FLAIR checks and the cohort driver with its
resumable cache are the steps of that one function's pipeline, and split apart they would be read together.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from brain3d.data import nifti
from brain3d.data.manifest import InputError


@dataclass(frozen=True)
class Grid:
    """An output grid: (D, H, W) voxels with a RAS-aligned affine (x = W, y = H, z = D)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:  # (x, y, z) mm
        return np.abs(np.diag(self.affine)[:3])


def brain_grid(
    mask_img: nib.Nifti1Image, shape: tuple[int, int, int], fov_mm: tuple | None = None, margin: float = 0.06
) -> Grid:
    """RAS-aligned grid of `shape` (D, H, W) centred on the brain mask's world bounding box.

    With `fov_mm` (D, H, W) the field of view is fixed; otherwise it is the bounding box plus `margin`
    on each side, which removes field-of-view differences between cohorts (a shortcut a model could
    otherwise learn instead of the pathology).
    """
    mask = np.asarray(mask_img.dataobj) > 0
    if not mask.any():
        raise ValueError("empty brain mask")
    ijk = np.argwhere(mask)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    lo, hi = ijk.min(0), ijk.max(0)
    box = lo + corners * (hi - lo)
    world = nib.affines.apply_affine(mask_img.affine, box)
    wmin, wmax = world.min(0), world.max(0)
    centre = (wmin + wmax) / 2
    n_xyz = np.array(shape[::-1], dtype=float)
    if fov_mm is not None:
        extent = np.array(fov_mm[::-1], dtype=float)
    else:
        extent = (wmax - wmin) * (1 + 2 * margin)
    spacing = extent / n_xyz
    affine = np.diag([*spacing, 1.0])
    # voxel centres span [centre - extent/2 + spacing/2, centre + extent/2 - spacing/2]
    affine[:3, 3] = centre - extent / 2 + spacing / 2
    return Grid(tuple(int(s) for s in shape), affine)


def resample(img: nib.Nifti1Image, grid: Grid, order: int = 1) -> np.ndarray:
    """Sample `img` on `grid`; returns (D, H, W). Linear resampling is anti-aliased when downsampling."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    # output voxel (x, y, z) -> input voxel
    matrix = np.linalg.inv(img.affine) @ grid.affine
    if order > 0:
        # input voxels spanned by one output voxel step, per input axis -> Gaussian anti-aliasing
        ratio = np.abs(matrix[:3, :3]).max(1)
        sigma = np.maximum(0.0, (ratio - 1.0) / 2.0)
        if sigma.any():
            data = ndimage.gaussian_filter(data, sigma=sigma)
    out = ndimage.affine_transform(
        data,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(grid.shape[::-1]),
        order=order,
        mode="constant",
        cval=0.0,
    )
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def standardize(
    img: nib.Nifti1Image, shape: tuple[int, int, int], mask=None, *, fov_mm: tuple | None = None
) -> np.ndarray:
    """Float32 (D, H, W) volume in [0, 1] in the project's array convention (see module docstring).

    `mask` is a brain mask in `img`'s voxel grid (bool array or NIfTI); None means the volume is already
    brain-extracted and its non-zero voxels are the brain.
    """
    volume, _ = standardize_with_grid(img, shape, mask, fov_mm=fov_mm)
    return volume


def standardize_with_grid(
    img: nib.Nifti1Image, shape: tuple[int, int, int], mask=None, *, fov_mm: tuple | None = None
) -> tuple[np.ndarray, Grid]:
    """`standardize`, also returning the output grid (to resample label maps identically)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if mask is None:
        mask_arr = data != 0
    else:
        mask_arr = np.asarray(mask.dataobj if isinstance(mask, nib.spatialimages.SpatialImage) else mask) > 0
        if mask_arr.shape != data.shape:
            raise ValueError(f"mask shape {mask_arr.shape} does not match volume shape {data.shape}")
    if mask_arr.sum() < 10:
        raise ValueError("brain mask is empty: nothing to normalise")
    canon = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    canon_mask = nib.as_closest_canonical(nib.Nifti1Image(mask_arr.astype(np.uint8), img.affine))
    vol = np.asarray(canon.dataobj, dtype=np.float32)
    m = np.asarray(canon_mask.dataobj) > 0
    lo, hi = np.percentile(vol[m], [1.0, 99.0])
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        raise ValueError("constant intensity inside the brain mask")
    scaled = np.where(m, (np.clip(vol, lo, hi) - lo) / (hi - lo), 0.0).astype(np.float32)
    grid = brain_grid(canon_mask, shape, fov_mm)
    out = resample(nib.Nifti1Image(scaled, canon.affine), grid, order=1)
    out_mask = resample(nib.Nifti1Image(m.astype(np.float32), canon.affine), grid, order=1) > 0.5
    return np.clip(out * out_mask, 0.0, 1.0).astype(np.float32), grid


def resample_labels(seg: nib.Nifti1Image, grid: Grid) -> np.ndarray:
    """A label map (e.g. BraTS 0/1/2/4) on the same grid as its volume, nearest neighbour, uint8."""
    return resample(seg, grid, order=0).round().astype(np.uint8)


@functools.cache
def _template(shape: tuple[int, int, int]) -> np.ndarray:
    from brain3d.data.atlas import flair_like, mni

    atlas = mni(2)
    image = nib.Nifti1Image(
        (flair_like(atlas.gm, atlas.wm, atlas.csf) * atlas.brain).astype(np.float32), atlas.affine
    )
    return standardize(image, shape, atlas.brain)


@functools.cache
def tissue_maps(shape: tuple[int, int, int], fov_mm: tuple | None) -> np.ndarray:
    """(3, D, H, W): the MNI GM, WM and CSF fractions framed as `standardize` frames the MNI brain (the FLAIR
    check's starting point, brain3d/data/sequence.py); read-only, cached per grid."""
    from brain3d.data.atlas import mni

    atlas = mni(2)
    grid = brain_grid(nib.Nifti1Image(atlas.brain.astype(np.uint8), atlas.affine), shape, fov_mm)
    out = np.stack(
        [
            resample(nib.Nifti1Image(np.asarray(m, np.float32), atlas.affine), grid)
            for m in (atlas.gm, atlas.wm, atlas.csf)
        ]
    ).astype(np.float32)
    out.setflags(write=False)
    return out


def _moved_tissue_maps(warp, grid: Grid) -> np.ndarray:
    """(3, D, H, W): the MNI GM, WM and CSF fractions moved by a skull strip's template registration
    (skullstrip.TemplateWarp) onto the standardised `grid`."""
    moved = warp.tissue_maps(grid.affine, grid.shape[::-1])
    return np.ascontiguousarray(moved.transpose(0, 3, 2, 1))  # (3, x, y, z) -> (3, D, H, W)


def brain_similarity(volume: np.ndarray) -> float:
    """ "Is this a brain FLAIR?": correlation of the internal structure of a standardised volume with the
    MNI FLAIR-like template standardised the same way. Both are clipped at their median inside the brain
    (so a bright tumour cannot dominate), smoothed (sigma 1 voxel) and compared inside their eroded
    common mask (so the outline, which any blob shares after framing, does not count). Measured on the
    phantom cohort: >= 0.29 (0.8 typical); noise, ellipsoids, boxes of noise: <= 0.05."""
    template = _template(tuple(volume.shape))
    inside = ndimage.binary_erosion((volume > 0) & (template > 0), iterations=3)
    if inside.sum() < 50:
        return 0.0
    a, b = (ndimage.gaussian_filter(np.minimum(x, np.median(x[x > 0])), 1.0) for x in (volume, template))
    if a[inside].std() == 0:
        return 0.0
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


@dataclass
class Preprocessed:
    volume: np.ndarray  # (D, H, W) float32 in [0, 1]
    seg: np.ndarray | None  # (D, H, W) uint8 or None
    qc: dict


def preprocess_settings(p: dict) -> dict:
    """The keywords of `preprocess_subject` / `preprocess_cohort` that the `preprocess` params section sets, read
    in one place (`min_similarity` is `min_brain_similarity`); the shape, workers and error policy stay the
    caller's, which may also override one of these (the CLI's --skull-strip)."""
    return {
        "skull_strip": p["skull_strip"],
        "fov_mm": p["fov_mm"],
        "min_similarity": p["min_brain_similarity"],
        "sequence": p["sequence"],
        "max_voxels": p["max_voxels"],
    }


def preprocess_subject(  # noqa: C901 (one linear pipeline of checks)
    subject: str,
    volume_path: str | Path,
    shape: tuple[int, int, int],
    *,
    skull_stripped: bool,
    skull_strip: str,
    fov_mm: tuple | None,
    min_similarity: float,
    sequence: str,
    max_voxels: int,
    seg_path: str | Path | None = None,
) -> Preprocessed:
    """Load, validate, skull strip (unless already stripped), standardise, check the sequence; returns volume,
    labels, QC (with the sequence check's columns).

    `skull_strip`, `fov_mm`, `min_similarity`, `sequence` and `max_voxels` are the `preprocess` params
    (`skull_strip`, `fov_mm`, `min_brain_similarity`, `sequence`: "FLAIR" refuses a scan whose tissue contrast
    is not FLAIR's with a `SequenceError`, "any" records what it looks like; `max_voxels`: a NIfTI header
    claiming more is refused before any voxel is read); no defaults, so a caller cannot preprocess
    differently from the pipeline by omission.
    """
    from brain3d.data.sequence import SequenceError, check_sequence
    from brain3d.data.skullstrip import skull_strip as strip

    if sequence not in ("FLAIR", "any"):
        raise ValueError(f"preprocess.sequence must be 'FLAIR' or 'any', got '{sequence}'")

    t0 = time.perf_counter()
    img = nifti.load(volume_path, subject, max_voxels=max_voxels)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    try:
        mask, warp = (None, None) if skull_stripped else strip(img, skull_strip)
        data = np.asarray(img.dataobj, dtype=np.float32)
        mask_arr = data != 0 if mask is None else mask
        volume, grid = standardize_with_grid(img, shape, mask, fov_mm=fov_mm)
    except ValueError as exc:
        raise InputError(subject, volume_path, f"preprocessing failed: {exc}") from exc
    brain_ml = float(mask_arr.sum() * np.prod(zooms) / 1000.0)
    if brain_ml < 200 or brain_ml > 3000:
        raise InputError(
            subject,
            volume_path,
            f"brain mask of {brain_ml:.0f} ml is implausible: not a brain volume, or skull stripping failed",
        )
    similarity = brain_similarity(volume)
    try:
        check = (
            check_sequence(volume, _moved_tissue_maps(warp, grid), aligned=True)
            if warp is not None  # the skull strip's registration already put the template on this brain
            else check_sequence(volume, tissue_maps(tuple(shape), None if fov_mm is None else tuple(fov_mm)))
        )
    except ValueError as exc:
        if similarity >= min_similarity:
            raise InputError(subject, volume_path, f"sequence check failed: {exc}") from exc
        check = None
    if (
        similarity < min_similarity
    ):  # a brain of another sequence correlates poorly too: say which, if it shows
        seen = f"; {check.reason}" if check is not None and check.looks_like in ("T1", "T2") else ""
        raise InputError(
            subject,
            volume_path,
            f"does not look like a brain FLAIR (correlation {similarity:.2f} "
            f"with the MNI template after preprocessing, minimum {min_similarity}){seen}",
        )
    if sequence == "FLAIR" and not check.is_flair:
        raise SequenceError(subject, volume_path, f"{check.reason}; Brain3D reads FLAIR")
    seg = None
    if seg_path:
        seg_img = (
            nifti.load(seg_path, subject, max_voxels=max_voxels, label_map=True)
            if Path(seg_path).exists()
            else None
        )
        if seg_img is None:
            raise InputError(subject, seg_path, "label map not found")
        if seg_img.shape != img.shape:
            raise InputError(
                subject, seg_path, f"label map shape {seg_img.shape} != volume shape {img.shape}"
            )
        canon_seg = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(seg_img.dataobj), img.affine))
        seg = resample_labels(canon_seg, grid)
    raw = data[mask_arr]
    qc = {
        "subject": subject,
        "status": "ok",
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "oblique": bool(_obliquity(img.affine) > 1e-3),
        "voxel_mm": "x".join(f"{z:.2f}" for z in zooms),
        "input_shape": "x".join(str(s) for s in img.shape),
        "brain_ml": round(brain_ml, 1),
        "raw_p1": float(np.percentile(raw, 1)),
        "raw_p99": float(np.percentile(raw, 99)),
        "raw_mean": float(raw.mean()),
        "out_spacing_mm": "x".join(f"{s:.2f}" for s in grid.spacing[::-1]),
        "out_mean": float(volume[volume > 0].mean()) if (volume > 0).any() else 0.0,
        "brain_similarity": round(similarity, 3),
        "lesion_ml": float((seg > 0).sum() * np.prod(grid.spacing) / 1000.0)
        if seg is not None
        else float("nan"),
        **check.qc(),
        "seconds": round(time.perf_counter() - t0, 3),
        "error": "",
    }
    return Preprocessed(volume, seg, qc)


def _obliquity(affine: np.ndarray) -> float:
    rot = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(0))
    return float(np.abs(np.abs(rot) - (np.abs(rot) > 0.5)).max())


RUN_SPECIFIC = ["seconds"]  # QC columns that differ between identical runs: kept out of qc.csv


def preprocess_cohort(
    manifest,
    root: Path,
    out_dir: Path,
    *,
    shape: tuple[int, int, int],
    skull_strip: str,
    fov_mm: tuple | None,
    workers: int,
    on_error: str,
    min_similarity: float,
    sequence: str,
    max_voxels: int,
    progress: bool = True,
):
    """Preprocess every manifest row in parallel, resumably, collecting every bad subject. Every keyword but
    `progress` is a `preprocess` param (`min_similarity` is `min_brain_similarity`); none has a default.

    Writes `out_dir/volumes/<subject>.npy`, `out_dir/seg/<subject>.npy` (when a label map exists),
    `out_dir/qc.csv` and `out_dir/manifest.csv` (the subjects that succeeded). With on_error="fail" all
    bad subjects are reported together in one `CohortError`; with "skip" they are flagged in qc.csv.
    Returns (qc DataFrame, manifest of successful subjects). The returned QC holds each subject's
    preprocessing `seconds` (for MLflow); qc.csv leaves them out, so that identical runs write identical files.
    """
    import json

    import pandas as pd
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from brain3d import fileio
    from brain3d.cache import cache_dir, link_or_copy
    from brain3d.data import manifest as mf

    if on_error not in ("fail", "skip"):
        raise ValueError(f"preprocess.on_error must be 'fail' or 'skip', got '{on_error}'")
    problems = mf.validate(manifest, root)
    bad = {e.subject for e in problems}
    key = fileio.fingerprint(
        {
            "shape": list(shape),
            "skull_strip": skull_strip,
            "fov_mm": fov_mm,
            "min_similarity": min_similarity,
            "sequence": sequence,
            "max_voxels": max_voxels,
        }
    )  # cache_dir adds the code
    cache = cache_dir("preprocess", key)

    def stem(row) -> Path:
        return cache / f"{row.subject}-{row.sha256[:16]}"

    todo = [
        r
        for r in manifest.itertuples(index=False)
        if r.subject not in bad and not stem(r).with_suffix(".json").exists()
    ]
    jobs = (
        delayed(_preprocess_to_cache)(
            r,
            str(root),
            str(stem(r)),
            tuple(shape),
            skull_strip,
            fov_mm,
            min_similarity,
            sequence,
            max_voxels,
        )
        for r in todo
    )
    results = Parallel(n_jobs=workers, return_as="generator_unordered")(jobs)
    for err in tqdm(results, total=len(todo), desc="preprocess", disable=not progress, unit="subject"):
        if err is not None:
            problems.append(err)
    if problems and on_error == "fail":
        raise mf.CohortError(problems)

    failed = {e.subject: str(e.reason) for e in problems}
    qc_rows, ok_rows = [], []
    for row in manifest.itertuples(index=False):
        if row.subject in failed:
            qc_rows.append({"subject": row.subject, "status": "error", "error": failed[row.subject]})
            continue
        s = stem(row)
        qc_rows.append(json.loads(s.with_suffix(".json").read_text()))
        link_or_copy(s.with_suffix(".npy"), out_dir / "volumes" / f"{row.subject}.npy")
        if Path(f"{s}.seg.npy").exists():
            link_or_copy(f"{s}.seg.npy", out_dir / "seg" / f"{row.subject}.npy")
        ok_rows.append(row._asdict())
    qc = pd.DataFrame(qc_rows)
    qc = qc[
        ["subject", "status", "error", *[c for c in qc.columns if c not in ("subject", "status", "error")]]
    ]
    fileio.write_csv(out_dir / "qc.csv", qc.drop(columns=RUN_SPECIFIC, errors="ignore"))
    ok = pd.DataFrame(ok_rows, columns=mf.COLUMNS)
    fileio.write_csv(out_dir / "manifest.csv", ok)
    return qc, ok


def _preprocess_to_cache(
    row,
    root: str,
    stem: str,
    shape,
    skull_strip: str,
    fov_mm,
    min_similarity: float,
    sequence: str,
    max_voxels: int,
):
    """Worker: preprocess one subject into the cache; returns an InputError instead of raising."""
    from brain3d import fileio
    from brain3d.data.manifest import resolve_path
    from brain3d.runtime import set_offline_env

    set_offline_env()
    try:
        seg = resolve_path(row.seg, root) if row.seg else None
        out = preprocess_subject(
            row.subject,
            resolve_path(row.volume, root),
            shape,
            skull_stripped=bool(row.skull_stripped),
            skull_strip=skull_strip,
            seg_path=seg,
            fov_mm=fov_mm,
            min_similarity=min_similarity,
            sequence=sequence,
            max_voxels=max_voxels,
        )
    except InputError as exc:
        return exc
    except Exception as exc:  # an unexpected failure of one subject must not hide the others
        return InputError(row.subject, row.volume, f"{type(exc).__name__}: {exc}")
    fileio.save_npy(f"{stem}.npy", out.volume)
    if out.seg is not None:
        fileio.save_npy(f"{stem}.seg.npy", out.seg)
    fileio.write_json(f"{stem}.json", out.qc)  # written last: its presence marks the subject done
    return None
