"""DICOM in: a folder holding one FLAIR series, read into a NIfTI image with SimpleITK.

SimpleITK (ITK + GDCM) groups the files by series, orders the slices along the slice normal from their
ImagePositionPatient (not their file names or instance numbers) and builds the direction cosines from
ImageOrientationPatient: the steps where hand-rolled readers go wrong with oblique or reversed series. It is
also what Med3DVLM's loaders use. pydicom + dicom2nifti would need two packages for the same result.

ITK's physical space is LPS; NIfTI's world is RAS, so the affine flips the first two world axes.

GDCM sets the C library's locale to "C" while it writes (for its number formatting) and leaves it there, which
turns Python's default text encoding into ASCII for the rest of the process (every `subprocess.run(text=True)`
after it then fails on non-ASCII output). Every SimpleITK call here restores the locale it found.
"""

from __future__ import annotations

import contextlib
import locale
from pathlib import Path

import nibabel as nib
import numpy as np

from brain3d.data.manifest import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@contextlib.contextmanager
def _locale_kept():
    """The process locale as it was, whatever SimpleITK does inside (also a decorator)."""
    saved = locale.setlocale(locale.LC_ALL)  # a query: every category, as one string
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def is_dicom_folder(path: Path) -> bool:
    """A folder with at least one readable file carrying the DICOM preamble ("DICM" at byte 128); False for a
    folder that cannot be listed."""
    try:
        files = [f for f in path.iterdir() if f.is_file()] if path.is_dir() else []
    except OSError:
        return False
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


@_locale_kept()
def read_series(folder: Path, *, max_voxels: int) -> nib.Nifti1Image:
    """The one DICOM series in `folder` as a float32 NIfTI (RAS world). InputError for no series, several
    series, more than `max_voxels` voxels (`preprocess.max_voxels`, checked on the file headers before any
    pixel is read), a missing slice or non-uniform slice spacing, or a series ITK cannot read."""
    import SimpleITK as sitk

    try:
        next(folder.iterdir(), None)
    except OSError as exc:  # GDCM would see no series where the folder cannot be listed
        raise InputError(folder.name, folder, f"cannot read the folder ({exc.strerror or exc})") from exc
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(folder.name, folder, "no DICOM series in the folder")
    if len(ids) > 1:
        raise InputError(
            folder.name, folder, f"{len(ids)} DICOM series in one folder; give a folder holding one"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
    if len(files) < 2:
        raise InputError(folder.name, folder, "a DICOM series of one slice is not a 3D volume")
    problem = _geometry_problem(files, max_voxels)
    if problem:
        raise InputError(folder.name, folder, problem)
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(
            folder.name, folder, f"unreadable DICOM series ({str(exc).splitlines()[0]})"
        ) from exc
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (z, y, x) -> voxel (i, j, k)
    affine = np.eye(4)
    cosines = np.array(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = LPS_TO_RAS @ cosines @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return nib.Nifti1Image(data, affine)


def _geometry_problem(files: list[str], max_voxels: int) -> str:
    """Why the slices (in GDCM's order) do not form one regular volume, from their headers only: too many
    voxels, or gaps between slice positions along the slice normal that are not all equal (ITK only warns
    and records ITK_non_uniform_sampling_deviation); "" when they do."""
    import SimpleITK as sitk

    header = sitk.ImageFileReader()
    positions, normal = [], None
    for f in files:
        header.SetFileName(f)
        try:
            header.ReadImageInformation()
            position = [float(v) for v in header.GetMetaData("0020|0032").split("\\")]
            cosines = np.array([float(v) for v in header.GetMetaData("0020|0037").split("\\")])
            if len(position) != 3 or len(cosines) != 6:
                raise ValueError(f"{len(position)} position and {len(cosines)} orientation values")
        except (RuntimeError, ValueError) as exc:  # unreadable header, tag missing or not numbers
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"{Path(f).name}: no usable ImagePositionPatient/ImageOrientationPatient ({why})"
        if normal is None:
            columns, rows, _ = header.GetSize()
            if columns * rows * len(files) > max_voxels:
                return (
                    f"{len(files)} slices of {columns}x{rows} = {columns * rows * len(files)} voxels, more "
                    f"than preprocess.max_voxels ({max_voxels})"
                )
            normal = np.cross(cosines[:3], cosines[3:6])
        positions.append(float(np.dot(position, normal)))
    gaps = np.abs(np.diff(positions))
    usual = float(np.median(gaps))
    odd = np.flatnonzero(np.abs(gaps - usual) > max(0.01, 0.01 * usual))
    if not odd.size:
        return ""
    i = int(odd[0])
    missing = round(gaps[i] / usual) - 1
    if gaps[i] < 0.01:
        why = "two slices at the same position (a duplicate slice)"
    elif missing >= 1 and abs(gaps[i] / usual - missing - 1) < 0.1:
        why = "a slice is missing" if missing == 1 else f"{missing} slices are missing"
    else:
        why = "non-uniform slice spacing"
    return (
        f"slices {i + 1} and {i + 2} ({Path(files[i]).name}, {Path(files[i + 1]).name}) are "
        f"{gaps[i]:.1f} mm apart, the others {usual:.1f} mm: {why}"
    )


@_locale_kept()
def write_series(img: nib.Nifti1Image, folder: Path, description: str = "AX FLAIR") -> list[Path]:
    """One axial DICOM series (MR, int16, one file per slice along the image's third axis) from a NIfTI image:
    for tests and for people who want to check a reader. Returns the files in slice order."""
    import uuid

    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(img.dataobj, dtype=np.float32)
    scale = 4000.0 / max(float(data.max()), 1e-6)
    image = sitk.GetImageFromArray(np.round(data * scale).astype(np.int16).transpose(2, 1, 0))
    ras = img.affine[:3, :3]
    spacing = np.linalg.norm(ras, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple((LPS_TO_RAS @ ras / spacing).ravel().tolist()))
    image.SetOrigin(tuple((LPS_TO_RAS @ img.affine[:3, 3]).tolist()))
    uid = f"2.25.{uuid.uuid4().int}"  # a UUID-derived UID (DICOM PS3.5 B.2; at most 44 characters), new per call
    direction = image.GetDirection()
    series_tags = [
        ("0008|0060", "MR"),
        ("0008|103e", description),
        ("0020|000d", uid + ".1"),
        ("0020|000e", uid + ".2"),
        ("0008|0008", "ORIGINAL\\PRIMARY\\AXIAL"),
        ("0020|0037", "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3]))),
        ("0018|0050", f"{spacing[2]:.6f}"),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in series_tags:
            plane.SetMetaData(tag, value)
        plane.SetMetaData(
            "0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        )
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0008|0018", f"{uid}.3.{k + 1}")
        files.append(folder / f"slice{k + 1:04d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(plane)
    return files
