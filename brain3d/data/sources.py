"""The paper profile's real cohort: BraTS 2020 + TextBraTS (tumour) and OpenNeuro ds000221 (healthy).

`build_real_cohort` finds the three datasets where params say they are, checks their layout and counts,
hashes every volume (cached by path, size and mtime) and returns manifest rows. Every problem is collected
and raised once, as a `MissingDataError` whose message also says how to get what is missing.

Params (`download` section of the paper profile; relative paths are relative to the repository root). The
first six and `fetch` are required (params.yaml's paper profile sets them); the others are optional, with the
defaults given here.
    brats_dir       BraTS 2020 training data: MICCAI_BraTS2020_TrainingData itself, its parent, or the root
                    of the Kaggle mirror (BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/...).
    textbrats_dir   TextBraTS reports: TextBraTSData itself, or the folder the hub snapshot was written to.
    ds000221_dir    BIDS root of OpenNeuro ds000221 (participants.tsv, sub-*/ses-01/anat/*_FLAIR.nii.gz).
    n_tumour        BraTS subjects expected, BraTS20_Training_001..n.
    n_healthy       ds000221 subjects to pick.
    workers         threads that hash volumes.
    allow_subset    accept fewer BraTS / ds000221 subjects than expected, and ignore TextBraTS reports whose
                    volume is absent (tests, quick runs; default false).
    healthy_acq     ds000221 FLAIR acquisitions in order of preference (default [highres, lowres]).
    ds000221_tag    OpenNeuro snapshot to fetch (default null: the latest).
    kaggle_dataset  Kaggle mirror of BraTS 2020 (default awsaf49/brats20-dataset-training-validation).
    sha_cache       JSON cache of volume hashes (default <cache>/download/sha256/volumes.json, see
                    brain3d.cache: outside DVC's outputs, so it survives a stage re-run).
    fetch           download what is missing (the stage passes it as the `fetch` argument).

Healthy pick: each ds000221 subject contributes its most preferred FLAIR (acq-highres, a 3D acquisition,
before acq-lowres, 2D); subjects are ordered by (acquisition preference, subject id) and the first
`n_healthy` are taken. With the full dataset (117 highres subjects) the 99 are the lowest-numbered highres
subjects, whatever order the filesystem lists them in.

Fetching (only with fetch, and only for a dataset that falls short): ds000221 with openneuro-py, one
acquisition at a time in preference order until enough subjects exist; TextBraTS FLAIR reports with
`huggingface_hub.snapshot_download`; BraTS with the Kaggle API when credentials exist. The clients are in
brain3d.data.fetch; this module decides what to fetch. Where each dataset keeps its files:
brain3d.data.layouts. What stays here (about 420 lines, a third of it this documentation) is the check of
the three datasets against each other and the params, one collected error for all of them.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brain3d.data import nifti
from brain3d.data.fetch import (
    DS000221,
    KAGGLE_DATASET,
    TEXTBRATS_PATTERN,
    TEXTBRATS_REPO,
    fetch_brats_kaggle,
    fetch_ds000221,
    fetch_textbrats,
    flair_pattern,
)
from brain3d.data.layouts import (
    BRATS_ID,
    BratsCase,
    find_brats_cases,
    find_healthy_scans,
    find_textbrats_reports,
)
from brain3d.data.manifest import COLUMNS, CohortError, InputError
from brain3d.data.reports import healthy_report, laterality_from_report
from brain3d.fileio import sha256_file, write_json

BRATS_URL = "https://www.med.upenn.edu/cbica/brats2020/data.html"


class MissingDataError(CohortError):
    """Every problem with the real cohort at once, followed by how to get each missing dataset."""

    def __init__(self, errors: list[InputError], hints: list[str]):
        super().__init__(errors)
        self.hints = hints
        listed = "\n".join(f"  - {e}" for e in errors)
        how = "\n".join(f"  - {h}" for h in hints)
        self.args = (
            f"{len(errors)} problem(s) with the real cohort:\n{listed}\nHow to get what is missing:\n{how}",
        )


@dataclass(frozen=True)
class RealCohortConfig:
    """The `download` params of the paper profile, with paths made absolute against the repository root.
    Defaults only for the keys params.yaml may leave out (optional=True in brain3d.params_schema)."""

    brats_dir: Path
    textbrats_dir: Path
    ds000221_dir: Path
    sha_cache: Path
    n_tumour: int
    n_healthy: int
    workers: int
    allow_subset: bool = False
    healthy_acq: tuple[str, ...] = ("highres", "lowres")
    ds000221_tag: str | None = None
    kaggle_dataset: str = KAGGLE_DATASET

    @classmethod
    def from_params(cls, cfg: dict, root: str | Path) -> RealCohortConfig:
        """From the `download` section; a missing required key is a ParamsError that names every one."""
        from brain3d.config import ParamsError

        root = Path(os.path.abspath(root))
        missing = [k for k in ("brats_dir", "textbrats_dir", "ds000221_dir") if not cfg.get(k)]
        missing += [k for k in ("n_tumour", "n_healthy", "workers") if cfg.get(k) is None]
        if missing:
            raise ParamsError(
                f"params: missing download.{', download.'.join(missing)} (needed by download.source: "
                "real; params.yaml's paper profile sets them)"
            )
        if cfg.get("sha_cache"):
            sha_cache = root / cfg["sha_cache"]
        else:
            from brain3d.cache import cache_dir

            sha_cache = cache_dir("download", "sha256") / "volumes.json"
        return cls(
            brats_dir=root / cfg["brats_dir"],
            textbrats_dir=root / cfg["textbrats_dir"],
            ds000221_dir=root / cfg["ds000221_dir"],
            sha_cache=sha_cache,
            n_tumour=int(cfg["n_tumour"]),
            n_healthy=int(cfg["n_healthy"]),
            workers=int(cfg["workers"]),
            allow_subset=bool(cfg.get("allow_subset", False)),
            healthy_acq=tuple(cfg.get("healthy_acq", ("highres", "lowres"))),
            ds000221_tag=cfg.get("ds000221_tag"),
            kaggle_dataset=cfg.get("kaggle_dataset", KAGGLE_DATASET),
        )

    def hint(self, source: str) -> str:
        """How to get one dataset into the configured folder."""
        if source == "brats2020":
            return (
                f"BraTS 2020 training data: register at {BRATS_URL} and unpack MICCAI_BraTS2020_TrainingData "
                f"into {self.brats_dir}; or use the Kaggle mirror: `pip install kaggle` (or the project's "
                "[kaggle] extra), set KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json), then "
                f"`kaggle datasets download -d {self.kaggle_dataset} -p {self.brats_dir} --unzip` "
                "or re-run with download.fetch: true."
            )
        if source == "textbrats":
            return (
                f"TextBraTS reports (MIT): Hugging Face dataset {TEXTBRATS_REPO}: `HF_HUB_OFFLINE=0 hf download "
                f"{TEXTBRATS_REPO} --repo-type dataset --include '{TEXTBRATS_PATTERN}' --local-dir "
                f"{self.textbrats_dir}` or re-run with download.fetch: true."
            )
        includes = " ".join(f"--include '{flair_pattern(a)}'" for a in self.healthy_acq)
        return (
            f"OpenNeuro {DS000221} (CC0): `pip install openneuro-py`, then `openneuro-py download --dataset "
            f"{DS000221} {includes} --include participants.tsv --target-dir {self.ds000221_dir}` "
            "or re-run with download.fetch: true."
        )


class _Problems:
    """Problems collected across sources; `raise_if_any` raises them together, with the hints they need."""

    def __init__(self) -> None:
        self.errors: list[InputError] = []
        self.sources: list[str] = []

    def add(self, source: str, subject: str, path: str | Path | None, reason: str) -> None:
        self.errors.append(InputError(subject, path, reason))
        if source not in self.sources:
            self.sources.append(source)

    def raise_if_any(self, conf: RealCohortConfig) -> None:
        if self.errors:
            raise MissingDataError(self.errors, [conf.hint(s) for s in self.sources])


# ---------------------------------------------------------------- hashing


def _check_and_hash(path: Path, max_voxels: int) -> tuple[str, str]:
    """(sha256, "") for a file whose NIfTI header describes a usable 3D volume (brain3d.data.nifti's header
    checks, at most `max_voxels` voxels; no voxel is read), else ("", reason)."""
    try:
        nifti.read_header(path, max_voxels=max_voxels)
    except InputError as exc:
        return "", exc.reason
    return sha256_file(path), ""


def hash_volumes(
    paths: list[Path], cache_path: Path, *, workers: int, max_voxels: int
) -> tuple[dict[Path, str], dict[Path, str]]:
    """sha256 of each volume, and the reason for each unusable one.

    A file whose (path, size, mtime) matches the JSON cache at `cache_path` is not read again; the others are
    header-checked and hashed in `workers` threads (hashlib and file reads release the GIL). The cache is
    rewritten with the current files only.
    """
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    shas: dict[Path, str] = {}
    stats = {p: p.stat() for p in paths}
    todo = []
    for p, st in stats.items():
        hit = cache.get(str(p))
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            shas[p] = hit["sha256"]
        else:
            todo.append(p)
    errors: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checked = pool.map(_check_and_hash, todo, [max_voxels] * len(todo))
        for p, (sha, reason) in zip(todo, checked):
            if sha:
                shas[p] = sha
            else:
                errors[p] = reason
    fresh = {
        str(p): {"size": stats[p].st_size, "mtime_ns": stats[p].st_mtime_ns, "sha256": sha}
        for p, sha in shas.items()
    }
    if fresh != cache:
        write_json(cache_path, fresh)
    return shas, errors


# ---------------------------------------------------------------- fetching what is missing


def _short(found: int, expected: int, allow_subset: bool) -> bool:
    return found == 0 or (found < expected and not allow_subset)


def _fetch_missing(conf: RealCohortConfig, problems: _Problems) -> None:
    """Fetch each dataset that falls short; a failing client becomes a problem, not a crash."""
    if _short(len(find_brats_cases(conf.brats_dir)[1]), conf.n_tumour, conf.allow_subset):
        try:
            fetch_brats_kaggle(conf.brats_dir, conf.kaggle_dataset)
        except Exception as exc:  # network, auth, client: reported with the other problems
            problems.add("brats2020", "brats2020", conf.brats_dir, f"fetch from Kaggle failed: {exc}")
    brats_ids = {c.subject for c in find_brats_cases(conf.brats_dir)[1]}
    reports = find_textbrats_reports(conf.textbrats_dir)[1]
    if not reports or not brats_ids <= set(reports) or _short(len(reports), conf.n_tumour, conf.allow_subset):
        try:
            fetch_textbrats(conf.textbrats_dir)
        except Exception as exc:  # network, hub errors: reported with the other problems
            problems.add("textbrats", "textbrats", conf.textbrats_dir, f"fetch from the hub failed: {exc}")
    for acq in conf.healthy_acq:
        enough = not _short(
            len(find_healthy_scans(conf.ds000221_dir, conf.healthy_acq)), conf.n_healthy, conf.allow_subset
        )
        if enough and (conf.ds000221_dir / "participants.tsv").is_file():
            break
        try:
            fetch_ds000221(conf.ds000221_dir, acq, conf.ds000221_tag)
        except Exception as exc:  # network, client: reported with the other problems
            problems.add("ds000221", DS000221, conf.ds000221_dir, f"fetch with openneuro-py failed: {exc}")
            break


# ---------------------------------------------------------------- cohort


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "001-003, 007"."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a:03d}" if a == b else f"{a:03d}-{b:03d}" for a, b in spans)


def _tumour_rows(conf: RealCohortConfig, problems: _Problems) -> list[dict]:
    """One row per BraTS case with a FLAIR and a report (volume and seg as absolute paths)."""
    train_dir, cases = find_brats_cases(conf.brats_dir)
    reports_dir, reports = find_textbrats_reports(conf.textbrats_dir)
    if train_dir is None:
        problems.add(
            "brats2020",
            "brats2020",
            conf.brats_dir,
            "no BraTS20_Training_XXX folders found here, "
            "in MICCAI_BraTS2020_TrainingData/ or in BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/",
        )
    if reports_dir is None:
        problems.add(
            "textbrats",
            "textbrats",
            conf.textbrats_dir,
            "no BraTS20_Training_XXX/BraTS20_Training_XXX_flair_text.txt reports found here or in TextBraTSData/",
        )
    if train_dir is not None:
        _check_case_numbers(conf, train_dir, cases, problems)
    rows = [row for case in cases if (row := _case_row(case, reports, reports_dir, problems))]
    if train_dir is not None and not conf.allow_subset:
        for subject in sorted(set(reports) - {c.subject for c in cases}):
            problems.add(
                "brats2020", subject, reports[subject], "TextBraTS report without a BraTS FLAIR volume"
            )
    return rows


def _check_case_numbers(
    conf: RealCohortConfig, train_dir: Path, cases: list[BratsCase], problems: _Problems
) -> None:
    """BraTS20_Training_001..n_tumour, no fewer (unless allow_subset) and none outside."""
    found = {int(BRATS_ID.match(c.subject).group(1)) for c in cases}
    if not conf.allow_subset and len(found) < conf.n_tumour:
        missing = sorted(set(range(1, conf.n_tumour + 1)) - found)
        problems.add(
            "brats2020",
            "brats2020",
            train_dir,
            f"{len(found)} of {conf.n_tumour} subjects; missing "
            f"BraTS20_Training_{_ranges(missing)} (or set allow_subset: true)",
        )
    unexpected = sorted(n for n in found if not 1 <= n <= conf.n_tumour)
    if unexpected:
        problems.add(
            "brats2020",
            "brats2020",
            train_dir,
            f"unexpected subjects BraTS20_Training_{_ranges(unexpected)} (expected 001-{conf.n_tumour:03d})",
        )


def _case_row(
    case: BratsCase, reports: dict[str, Path], reports_dir: Path | None, problems: _Problems
) -> dict | None:
    """The manifest row of one BraTS case, or None (its problems recorded) when a file or the report is missing."""
    if case.flair is None:
        problems.add("brats2020", case.subject, case.folder, f"no {case.subject}_flair.nii or .nii.gz")
    if case.seg is None:
        problems.add("brats2020", case.subject, case.folder, f"no {case.subject}_seg.nii or .nii.gz")
    report_path = reports.get(case.subject)
    if report_path is None:
        if reports_dir is not None:
            problems.add("textbrats", case.subject, reports_dir / case.subject, "no TextBraTS FLAIR report")
        return None
    report = report_path.read_text(encoding="utf-8-sig").strip()
    if not report:
        problems.add("textbrats", case.subject, report_path, "empty TextBraTS report")
        return None
    if case.flair is None or case.seg is None:
        return None
    return {
        "subject": case.subject,
        "cohort": "tumour",
        "source": "brats2020",
        "volume": case.flair,
        "seg": case.seg,
        "report": report,
        "laterality": laterality_from_report(report),
        "skull_stripped": True,
    }


def _healthy_rows(conf: RealCohortConfig, problems: _Problems) -> list[dict]:
    """The picked ds000221 subjects as rows (volume as an absolute path)."""
    ds = conf.ds000221_dir
    if not (ds / "participants.tsv").is_file():
        problems.add("ds000221", DS000221, ds, "no participants.tsv: not a BIDS copy of ds000221")
    scans = find_healthy_scans(ds, conf.healthy_acq)
    if _short(len(scans), conf.n_healthy, conf.allow_subset):
        counts = ", ".join(f"{sum(s.acq == a for s in scans)} acq-{a}" for a in conf.healthy_acq)
        problems.add(
            "ds000221",
            DS000221,
            ds,
            f"{len(scans)} subjects with a FLAIR ({counts}), "
            f"{conf.n_healthy} needed (or set allow_subset: true)",
        )
    return [
        {
            "subject": s.subject,
            "cohort": "healthy",
            "source": DS000221,
            "volume": s.path,
            "seg": "",
            "report": healthy_report(s.subject),
            "laterality": "none",
            "skull_stripped": False,
        }
        for s in scans[: conf.n_healthy]
    ]


def _manifest_path(path: Path | str, root: Path) -> str:
    """Relative to the repository root when inside it, else absolute."""
    if not path:
        return ""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def build_real_cohort(cfg: dict, root: str | Path, *, fetch: bool, max_voxels: int) -> pd.DataFrame:
    """Manifest rows of the paper cohort (n_tumour BraTS + n_healthy ds000221) from the `download` params;
    a volume whose NIfTI header claims more than `max_voxels` voxels (`preprocess.max_voxels`) is unusable.

    With `fetch` (`download.fetch`), datasets that fall short are downloaded first. Raises `MissingDataError`
    listing every missing or unusable file, count shortfall and failed fetch, with how to get each dataset.
    """
    root = Path(os.path.abspath(root))
    conf = RealCohortConfig.from_params(cfg, root)
    problems = _Problems()
    if fetch:
        _fetch_missing(conf, problems)
    rows = _tumour_rows(conf, problems) + _healthy_rows(conf, problems)
    volumes = [r["volume"] for r in rows]
    shas, bad = hash_volumes(volumes, conf.sha_cache, workers=conf.workers, max_voxels=max_voxels)
    for row in rows:
        if row["volume"] in bad:
            problems.add(row["source"], row["subject"], row["volume"], bad[row["volume"]])
    problems.raise_if_any(conf)
    for row in rows:
        row["sha256"] = shas[row["volume"]]
        row["volume"], row["seg"] = _manifest_path(row["volume"], root), _manifest_path(row["seg"], root)
    return pd.DataFrame(rows, columns=COLUMNS)
