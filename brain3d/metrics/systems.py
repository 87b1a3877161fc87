"""The systems an evaluation compares, read and checked: per system, in `pred_dir`, `<system>.jsonl` (one
{"subject", "split", "reference", "prediction"} per line) and `<system>.json` ({"system", "status": "ok" |
"not_run", "reason", "description", "baseline": bool}). Every system that ran must cover exactly the test
subjects, with the same reference texts. (`brain3d.generation.write_predictions` writes them.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brain3d import fileio

COHORTS = ("tumour", "healthy")


@dataclass
class System:
    """One system's metadata and, when it ran, its predictions."""

    name: str
    status: str
    reason: str = ""
    description: str = ""
    baseline: bool = False
    rows: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def load_systems(pred_dir: Path) -> list[System]:
    """Read every `<system>.json` metadata file (and its predictions) in `pred_dir`."""
    pred_dir = Path(pred_dir)
    metas = sorted(pred_dir.glob("*.json"))
    orphans = sorted(p.name for p in pred_dir.glob("*.jsonl") if not p.with_suffix(".json").is_file())
    if orphans:
        raise ValueError(f"predictions without metadata (<system>.json) in {pred_dir}: {orphans}")
    if not metas:
        raise FileNotFoundError(f"no system metadata (<system>.json) in {pred_dir}")
    systems = []
    for path in metas:
        meta = fileio.read_json(path)
        name = path.stem
        if meta.get("system", name) != name:
            raise ValueError(f"{path}: 'system' is {meta['system']!r} but the file is named for {name!r}")
        status = meta.get("status")
        if status not in ("ok", "not_run"):
            raise ValueError(f"{path}: status must be 'ok' or 'not_run', got {status!r}")
        preds = path.with_suffix(".jsonl")
        rows = fileio.read_jsonl(preds) if preds.is_file() else []
        if status == "not_run" and rows:
            warnings.warn(f"{name} is marked not_run; its {len(rows)} predictions are ignored", stacklevel=2)
            rows = []
        if status == "ok" and not rows:
            raise ValueError(f"{name} is marked ok but {preds} has no predictions")
        systems.append(
            System(
                name,
                status,
                meta.get("reason") or "reason not given",
                meta.get("description", ""),
                bool(meta.get("baseline", False)),
                rows,
            )
        )
    return sorted(systems, key=lambda s: (not s.baseline, s.name))


def _few(items: list[str], k: int = 10) -> str:
    return ", ".join(items[:k]) + (f" ... ({len(items)} in all)" if len(items) > k else "")


def check_subjects(subjects: pd.DataFrame) -> pd.DataFrame:
    """The test subjects sorted by id (the row order every resample index refers to)."""
    missing = {"subject", "cohort"} - set(subjects.columns)
    if missing:
        raise ValueError(f"subjects table lacks column(s) {sorted(missing)}")
    dup = subjects["subject"][subjects["subject"].duplicated()].astype(str).tolist()
    if dup:
        raise ValueError(f"duplicate test subjects: {_few(dup)}")
    bad = sorted(set(subjects["cohort"]) - set(COHORTS))
    if bad:
        raise ValueError(f"unknown cohort(s) {bad}; expected {list(COHORTS)}")
    out = subjects.assign(subject=subjects["subject"].astype(str)).sort_values("subject")
    return out.reset_index(drop=True)


def predictions_frame(system: System, subjects: pd.DataFrame) -> pd.DataFrame:
    """A system's predictions indexed by subject in `subjects` order; a clear error on any mismatch."""
    for i, row in enumerate(system.rows, 1):
        lacking = [k for k in ("subject", "reference", "prediction") if not isinstance(row.get(k), str)]
        if lacking:
            raise ValueError(f"{system.name}, prediction line {i}: {lacking} missing or not a string")
    df = pd.DataFrame(system.rows)
    dup = df["subject"][df["subject"].duplicated()].tolist()
    want, have = set(subjects["subject"]), set(df["subject"])
    if dup or want != have:
        raise ValueError(
            f"{system.name} does not cover exactly the {len(want)} test subjects: "
            f"missing [{_few(sorted(want - have))}], extra [{_few(sorted(have - want))}], "
            f"duplicated [{_few(sorted(set(dup)))}]"
        )
    return df.set_index("subject").loc[subjects["subject"], ["reference", "prediction"]]


def predictions_frames(systems: list[System], subjects: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """`predictions_frame` of each system that ran, checked to share the same reference texts."""
    frames = {s.name: predictions_frame(s, subjects) for s in systems}
    if systems:
        first = systems[0].name
        for name, df in frames.items():
            differ = df.index[df["reference"].str.strip() != frames[first]["reference"].str.strip()].tolist()
            if differ:
                raise ValueError(f"{name} and {first} have different reference texts for: {_few(differ)}")
    return frames
