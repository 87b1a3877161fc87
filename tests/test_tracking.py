"""MLflow under concurrent stages (`dvc queue start -j 2`): one schema, every value kept, no silent fallback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

N_METRICS = 200

STAGE = textwrap.dedent(
    f"""
    import sys
    from brain3d.tracking import mlflow_run

    with mlflow_run(sys.argv[1]) as tracker:
        for step in range({N_METRICS}):
            tracker.log_metrics({{"loss": step / 7}}, step=step)
    """
)


def test_two_stage_processes_logging_at_once_both_complete_with_every_value(tmp_path):
    """Two processes start on a fresh mlflow.db at the same moment (so both would create the schema) and each
    logs 200 metric values one call at a time: both exit 0, one experiment, two runs, 400 values."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STAGE, f"stage{i}"],
            cwd=tmp_path,  # not a git checkout: the folder is the repository root (paths.repo_root)
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        experiments = con.execute("SELECT name, artifact_location FROM experiments").fetchall()
        runs = con.execute("SELECT run_uuid, name FROM runs").fetchall()
        counts = con.execute("SELECT run_uuid, COUNT(*) FROM metrics GROUP BY run_uuid").fetchall()
    assert [e[0] for e in experiments if e[0] != "Default"] == ["brain3d"]
    assert dict(experiments)["brain3d"] == (tmp_path / "mlartifacts").resolve().as_uri()
    assert sorted(name for _, name in runs) == ["stage1@workspace", "stage2@workspace"]
    assert sorted(n for _, n in counts) == [N_METRICS, N_METRICS]


def test_a_locked_database_is_retried_and_other_errors_are_not():
    from brain3d.tracking import retried

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "logged"

    assert retried(flaky, first_wait=0.001) == "logged" and len(calls) == 3
    with pytest.raises(ValueError):
        retried(lambda: (_ for _ in ()).throw(ValueError("bad metric")), first_wait=0.001)
    with pytest.raises(RuntimeError, match="locked"):
        retried(
            lambda: (_ for _ in ()).throw(RuntimeError("database is locked")), attempts=2, first_wait=0.001
        )
