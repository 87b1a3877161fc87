"""The scanner: the random head pose, storage orientations (`ORIENTATIONS`, axis codes), the stored grid
around the posed head (`_storage_grid`) or brain (`_brain_grid`), nearest-neighbour label sampling onto it,
Rician noise with an arbitrary int16 scale (`_acquire`), and NIfTI files whose bytes depend only on their
data (`_write_nifti`)."""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from brain3d.data.phantom.anatomy import _HEAD_CENTRE, _Head, _rotation
from brain3d.data.phantom.truth import _round
from brain3d.fileio import atomic_path

ORIENTATIONS = ("RAS", "LPS", "LAS", "PIR", "oblique")
_GZIP_LEVEL = 1


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


def _box_grid(
    lo: np.ndarray, hi: np.ndarray, pose: np.ndarray, linear: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the voxel grid with axes `linear` (direction x spacing) that covers the head-space
    box [lo, hi] after `pose`."""
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
