"""The cohort manifest: one row per subject, the contract between `download` and every later stage.

Columns
    subject      unique subject id (e.g. BraTS20_Training_001, sub-010002, phantom-0001)
    cohort       "tumour" or "healthy"
    source       "phantom", "brats2020" or "ds000221"
    volume       path of the FLAIR NIfTI (relative to the repository root, or absolute)
    seg          path of a lesion label map in the volume's grid (BraTS labels 0/1/2/4), or ""
    report       the reference report text
    laterality   left / right / bilateral / undefined (tumour, derived from the report) or none (healthy)
    sha256       sha256 of the volume file
    skull_stripped  whether the volume is already brain-extracted (BraTS) or not (phantom, ds000221)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

COLUMNS = ["subject", "cohort", "source", "volume", "seg", "report", "laterality", "sha256", "skull_stripped"]
COHORTS = ("tumour", "healthy")
LATERALITIES = ("left", "right", "bilateral", "undefined", "none")
# The demo's pretraining corpus (brain3d.data.corpus writes it): subjects in no split, already standardised.
CORPUS_COLUMNS = ["subject", "cohort", "laterality", "sha256"]  # sha256 of the volume and seg files together
CORPUS_VOLUMES, CORPUS_SEGS, CORPUS_MANIFEST = "volumes", "seg", "manifest.csv"


class InputError(ValueError):
    """A bad input file or manifest row; the message names the subject and the file."""

    def __init__(self, subject: str, path: str | Path | None, reason: str):
        self.subject, self.path, self.reason = subject, str(path) if path else "", reason
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"{subject}{where}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.subject, self.path, self.reason))


class CohortError(ValueError):
    """Several bad subjects at once: the stage reports them all instead of dying on the first."""

    def __init__(self, errors: list[InputError]):
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{len(errors)} bad subject(s):\n{lines}")


@dataclass(frozen=True)
class Row:
    subject: str
    cohort: str
    source: str
    volume: str
    seg: str
    report: str
    laterality: str
    sha256: str
    skull_stripped: bool


def validate(df: pd.DataFrame, root: str | Path | None = None, check_files: bool = True) -> list[InputError]:
    """Every problem in a manifest: duplicate ids, missing/empty reports, unknown labels, missing files."""
    errors: list[InputError] = []
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if missing_cols:
        return [InputError("<manifest>", None, f"missing columns {missing_cols}")]
    dup = df["subject"][df["subject"].duplicated(keep=False)]
    for sid in sorted(set(dup)):
        paths = ", ".join(df.loc[df["subject"] == sid, "volume"].astype(str))
        errors.append(InputError(sid, None, f"duplicate subject id ({paths})"))
    for row in df.itertuples(index=False):
        report = row.report if isinstance(row.report, str) else ""
        if not report.strip():
            errors.append(InputError(row.subject, row.volume, "missing or empty report"))
        if row.cohort not in COHORTS:
            errors.append(InputError(row.subject, row.volume, f"unknown cohort '{row.cohort}'"))
        if row.laterality not in LATERALITIES:
            errors.append(InputError(row.subject, row.volume, f"unknown laterality '{row.laterality}'"))
        if check_files and not resolve_path(row.volume, root).exists():
            errors.append(InputError(row.subject, row.volume, "volume file not found"))
    return errors


def resolve_path(path: str | Path, root: str | Path | None = None) -> Path:
    path = Path(path)
    return path if path.is_absolute() or root is None else Path(root) / path


def read(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["skull_stripped"] = df["skull_stripped"].str.lower().isin(["true", "1", "yes"])
    return df


def write(path: str | Path, rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    from brain3d.fileio import write_csv

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    df = df[COLUMNS].sort_values("subject").reset_index(drop=True)
    write_csv(path, df)
    return df


def read_corpus(root: str | Path) -> tuple[pd.DataFrame, list, list]:
    """The corpus folder under `root`: its manifest (CORPUS_COLUMNS) and each subject's (D, H, W) volume and
    seg arrays, memory-mapped, in manifest order (all empty for an empty corpus)."""
    import numpy as np

    root = Path(root)
    corpus = pd.read_csv(root / CORPUS_MANIFEST)
    volumes = [np.load(root / CORPUS_VOLUMES / f"{s}.npy", mmap_mode="r") for s in corpus["subject"]]
    segs = [np.load(root / CORPUS_SEGS / f"{s}.npy", mmap_mode="r") for s in corpus["subject"]]
    return corpus, volumes, segs
