"""The scans a user names, for inference (`brain3d report`): folders expanded into NIfTI files and DICOM
series folders, and each scan preprocessed as training preprocesses it (a DICOM series converted first), in a
worker process where every failure, expected or not, becomes a reason for that scan alone."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports this module before it quiets the libraries preprocessing loads
    from brain3d.data.preprocess import Preprocessed


def expand(paths: list[Path]) -> list[Path]:
    """The scans named: files and DICOM series folders as given (a missing file fails later, with its reason),
    other folders searched for .nii / .nii.gz files and DICOM series folders (recursively, sorted); each once.
    A folder that cannot be listed is kept as a scan, so that its row says why it was not read."""
    from brain3d.data.dicom import is_dicom_folder

    out: list[Path] = []
    for path in paths:
        found = _scans_below(path) if path.is_dir() and not is_dicom_folder(path) else [path]
        out += [p for p in found if p not in out]
    return out


def _scans_below(folder: Path) -> list[Path]:
    from brain3d.data.dicom import is_dicom_folder

    found: list[Path] = []
    unlisted: list[OSError] = []  # folders that cannot be listed (no permission)
    for root, dirs, files in os.walk(folder, onerror=unlisted.append):
        here = Path(root)
        series = {d for d in dirs if is_dicom_folder(here / d)}
        found += [here / d for d in series] + [here / f for f in files if f.endswith((".nii", ".nii.gz"))]
        dirs[:] = [d for d in dirs if d not in series]  # a series folder is one scan: not searched further
    return sorted(found + [Path(exc.filename) for exc in unlisted])


def prepare(job: tuple) -> tuple[Preprocessed | None, str, float, str]:
    """Worker (brain3d.workers): job = (scan, shape, preprocess_subject's keywords, what to add to a sequence
    refusal) -> (Preprocessed or None, reason, seconds, traceback or ""). Every failure is a reason, the
    unexpected ones (MemoryError, ANTs' RuntimeError, PermissionError...) with their traceback for a log."""
    import traceback

    from brain3d.data.manifest import InputError
    from brain3d.data.sequence import SequenceError
    from brain3d.runtime import quiet_logs_and_warnings

    quiet_logs_and_warnings()  # a worker process: its libraries keep as quiet as the command's
    scan, shape, kwargs, sequence_hint = job
    t0 = time.perf_counter()
    try:
        return preprocess_scan(scan, shape, **kwargs), "", time.perf_counter() - t0, ""
    except SequenceError as exc:
        return None, f"{exc.reason}{sequence_hint}", time.perf_counter() - t0, ""
    except InputError as exc:
        return None, exc.reason, time.perf_counter() - t0, ""
    except MemoryError:
        return None, "out of memory while preprocessing", time.perf_counter() - t0, traceback.format_exc()
    except Exception as exc:  # this scan fails, the others go on
        reason = f"preprocessing failed ({type(exc).__name__}: {exc})"
        return None, reason, time.perf_counter() - t0, traceback.format_exc()


def preprocess_scan(scan: Path, shape, **kwargs) -> Preprocessed:
    """`preprocess_subject` of a NIfTI file or of a folder holding one DICOM series (converted first)."""
    import tempfile

    import nibabel as nib

    from brain3d.data.dicom import read_series
    from brain3d.data.preprocess import preprocess_subject

    if not scan.is_dir():
        return preprocess_subject(scan.name, scan, shape, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        nib.save(read_series(scan, max_voxels=kwargs["max_voxels"]), Path(tmp) / "series.nii.gz")
        return preprocess_subject(scan.name, Path(tmp) / "series.nii.gz", shape, **kwargs)
