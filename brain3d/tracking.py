"""Experiment tracking. The library logs through the small `Tracker` interface; `mlflow_run` backs it
with MLflow (sqlite at the repository root, artifacts in `mlartifacts/`), imported only when used.

Safe for stages running at once (`dvc queue start -j 2`, whose experiments all log to the main repository's
mlflow.db): the first process creates the schema and the experiment under a file lock (`mlflow.db.lock`) and
switches the database to write-ahead logging, so readers never block the writer; a write that still meets a
locked database is retried with back-off. The experiment's artifact root is created explicitly; a failure to
create it is an error, never a silent fallback to a relative ./mlruns."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from brain3d.paths import repo_root

EXPERIMENT = "brain3d"
T = TypeVar("T")


class Tracker:
    """No-op tracker: what the library uses when nobody is listening."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class Prefixed(Tracker):
    """Logs metrics under `prefix` (two trainings in one stage keep separate curves)."""

    def __init__(self, tracker: Tracker, prefix: str):
        self.tracker, self.prefix = tracker, prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=step)


def retried(call: Callable[[], T], attempts: int = 8, first_wait: float = 0.25) -> T:
    """`call()`, tried again with doubling waits (0.25 s, 0.5 s, ... about a minute in all) while sqlite says the
    database is locked (another stage is writing); any other error, or the last one, is raised."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2**attempt)
    raise AssertionError("unreachable")


class MlflowTracker(Tracker):
    def __init__(self, mlflow_module):
        self._mlflow = mlflow_module

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = _flatten(params)
        # MLflow caps a value at 6000 characters; params are short scalars, lists are stringified.
        retried(lambda: self._mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()}))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
        if clean:
            retried(lambda: self._mlflow.log_metrics(clean, step=step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            retried(lambda: self._mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name))
        elif path.exists():
            retried(lambda: self._mlflow.log_artifact(str(path), artifact_path=artifact_path))


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def git_sha(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def mlflow_run(
    stage: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[MlflowTracker]:
    """One MLflow run for one stage execution, tagged with stage, git sha, DVC experiment and profile."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    root = repo_root()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment(mlflow, uri, (root / "mlartifacts").resolve())
    exp_name = os.environ.get("DVC_EXP_NAME", "workspace")
    all_tags = {"stage": stage, "git_sha": git_sha(), "dvc_exp": exp_name, **(tags or {})}
    run = retried(
        lambda: mlflow.start_run(experiment_id=experiment_id, run_name=f"{stage}@{exp_name}", tags=all_tags)
    )
    with run:
        tracker = MlflowTracker(mlflow)
        if params:
            tracker.log_params(params)
        yield tracker


def _experiment(mlflow, uri: str, artifacts: Path) -> str:
    """The id of the EXPERIMENT, created with its artifact root `artifacts` if missing. For a sqlite store, the
    schema, the experiment and write-ahead logging are set up under a file lock, so concurrent stages neither
    race to create tables nor fall back to another artifact location."""
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    lock = FileLock(f"{db}.lock") if db is not None else contextlib.nullcontext()
    with lock:
        experiment = retried(lambda: mlflow.get_experiment_by_name(EXPERIMENT))  # creates the schema
        if experiment is None:
            artifacts.mkdir(parents=True, exist_ok=True)
            retried(lambda: mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri()))
            experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if db is not None:
            with sqlite3.connect(db, timeout=60) as con:  # persistent: set once, kept in the file
                con.execute("PRAGMA journal_mode=WAL")
    if experiment.artifact_location != artifacts.as_uri():
        warnings.warn(
            f"MLflow experiment '{EXPERIMENT}' in {uri} keeps its artifacts in {experiment.artifact_location}, "
            f"not {artifacts.as_uri()} (the database was made in another checkout?)",
            stacklevel=3,
        )
    return experiment.experiment_id


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
