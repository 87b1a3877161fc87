"""Experiment tracking. The library logs through the small `Tracker` interface; `mlflow_run` backs it
with MLflow (sqlite at the repository root, artifacts in `mlartifacts/`), imported only when used."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from brain3d.paths import repo_root

EXPERIMENT = "brain3d"


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


class MlflowTracker(Tracker):
    def __init__(self, mlflow_module):
        self._mlflow = mlflow_module

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = _flatten(params)
        # MLflow caps a value at 6000 characters; params are short scalars, lists are stringified.
        self._mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)


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
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = (root / "mlartifacts").resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
        except Exception:  # created concurrently by a parallel queue worker
            pass
    mlflow.set_experiment(EXPERIMENT)
    exp_name = os.environ.get("DVC_EXP_NAME", "workspace")
    all_tags = {"stage": stage, "git_sha": git_sha(), "dvc_exp": exp_name, **(tags or {})}
    with mlflow.start_run(run_name=f"{stage}@{exp_name}", tags=all_tags):
        tracker = MlflowTracker(mlflow)
        if params:
            tracker.log_params(params)
        yield tracker


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
