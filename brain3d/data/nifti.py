"""Validated NIfTI loading: every way a volume can be unusable becomes one clear `InputError`."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from brain3d.data.manifest import InputError


def load(path: str | Path, subject: str | None = None, *, label_map: bool = False) -> nib.Nifti1Image:
    """Load a 3D NIfTI and check that its voxels are usable.

    Raises `InputError` for: missing file, not a NIfTI, corrupt or truncated data, a true 4D series
    (a trailing singleton dimension is squeezed), non-finite voxels, an all-constant volume, and a
    singular affine. A `label_map` (lesion labels) may be all zero: a healthy subject has no lesion.
    """
    path = Path(path)
    subject = subject or path.name
    img = _open_3d(path, subject)
    data = _usable_voxels(img, path, subject, label_map)
    out = nib.Nifti1Image(data, img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    return out


def _open_3d(path: Path, subject: str) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI header and lazy data of a 3D volume (a trailing singleton 4th dimension squeezed)."""
    if not path.exists():
        raise InputError(subject, path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError... for junk
        raise InputError(subject, path, f"not a readable NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(subject, path, f"not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
        shape = img.shape
    if len(shape) != 3:
        raise InputError(subject, path, f"expected a 3D volume, got shape {tuple(shape)} ({len(shape)}D)")
    if min(shape) < 2:
        raise InputError(subject, path, f"degenerate volume shape {tuple(shape)}")
    return img


def _usable_voxels(img, path: Path, subject: str, label_map: bool) -> np.ndarray:
    """The voxels as float32, refused if unreadable, non-finite, constant (unless a label map), or mapped to
    the world by a singular affine."""
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise InputError(
            subject, path, f"corrupt or truncated voxel data ({type(exc).__name__}: {exc})"
        ) from exc
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(subject, path, f"{int(bad.sum())} non-finite voxel(s) (NaN/Inf)")
    if not label_map and float(data.max()) == float(data.min()):
        raise InputError(subject, path, f"empty volume (every voxel is {float(data.min()):g})")
    if abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise InputError(subject, path, "singular affine (no valid voxel-to-world mapping)")
    return data
