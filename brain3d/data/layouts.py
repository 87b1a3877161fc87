"""Where each dataset of the paper profile keeps its files: BraTS 2020 training cases (the CBICA layout or
the Kaggle mirror), TextBraTS FLAIR reports, and the FLAIR of each OpenNeuro ds000221 subject (BIDS). Finding
only: what is found is checked and turned into manifest rows by brain3d.data.sources."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from brain3d.data.fetch import flair_pattern

BRATS_ID = re.compile(r"^BraTS20_Training_(\d{3})$")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class BratsCase:
    """One BraTS20_Training_XXX folder; a missing file is None."""

    subject: str
    folder: Path
    flair: Path | None
    seg: Path | None


@dataclass(frozen=True)
class HealthyScan:
    """The FLAIR chosen for one ds000221 subject."""

    subject: str
    acq: str
    path: Path


def _nifti(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in NIFTI_SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def _seg_file(folder: Path, subject: str) -> Path | None:
    """`<id>_seg.nii[.gz]`, else the folder's only NIfTI named like a segmentation (the Kaggle mirror's
    case 355 ships `W39_1998.09.19_Segm.nii`)."""
    exact = _nifti(folder, f"{subject}_seg")
    if exact:
        return exact
    named = [
        p for p in folder.iterdir() if "seg" in p.name.lower() and p.name.lower().endswith(NIFTI_SUFFIXES)
    ]
    return named[0] if len(named) == 1 else None


def find_brats_cases(brats_dir: Path) -> tuple[Path | None, list[BratsCase]]:
    """The training folder that holds BraTS20_Training_XXX subjects (CBICA layout or Kaggle mirror), and its
    cases sorted by id; (None, []) when there is none. Other files (name_mapping.csv, ...) are ignored."""
    candidates = [
        brats_dir,
        brats_dir / "MICCAI_BraTS2020_TrainingData",
        brats_dir / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData",
    ]
    for folder in candidates:
        subjects = sorted(
            p for p in folder.glob("BraTS20_Training_*") if p.is_dir() and BRATS_ID.match(p.name)
        )
        if subjects:
            return folder, [
                BratsCase(p.name, p, _nifti(p, f"{p.name}_flair"), _seg_file(p, p.name)) for p in subjects
            ]
    return None, []


def find_textbrats_reports(textbrats_dir: Path) -> tuple[Path | None, dict[str, Path]]:
    """The TextBraTSData folder and its FLAIR report per subject id; (None, {}) when there is none."""
    for folder in (textbrats_dir, textbrats_dir / "TextBraTSData"):
        reports = {
            p.parent.name: p
            for p in folder.glob("BraTS20_Training_*/BraTS20_Training_*_flair_text.txt")
            if BRATS_ID.match(p.parent.name) and p.name == f"{p.parent.name}_flair_text.txt"
        }
        if reports:
            return folder, dict(sorted(reports.items()))
    return None, {}


def find_healthy_scans(ds_dir: Path, acq_order: Iterable[str] = ("highres", "lowres")) -> list[HealthyScan]:
    """Every ds000221 subject's most preferred FLAIR, ordered by (acquisition preference, subject id): the
    healthy pick is the head of this list."""
    best: dict[str, HealthyScan] = {}
    for acq in acq_order:
        for path in sorted(ds_dir.glob(flair_pattern(acq))):
            subject = path.parts[-4]
            if path.name.startswith(f"{subject}_") and subject not in best:
                best[subject] = HealthyScan(subject, acq, path)
    ranks = {acq: i for i, acq in enumerate(acq_order)}
    return sorted(best.values(), key=lambda s: (ranks[s.acq], s.subject))
