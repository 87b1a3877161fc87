"""The MLflow UI on the project's backend (the tiny pipeline's mlflow.db): REST API and a headless-Chromium
render of the experiment's runs page.

`mlflow server` is started on 127.0.0.1 and a free port with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (MLflow
3 otherwise starts a job runner with several huey consumers, which costs a 2-core machine ~20 s of CPU).
Chromium comes from Debian (`./setup.sh --test`); without it the screenshot test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import chromium
from tiny_pipeline import EXPERIMENT, STAGES

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def mlflow_server(tiny_pipeline, tmp_path_factory):
    repo = tiny_pipeline.repo
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    env = {**repo.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        f"sqlite:///{repo.path / 'mlflow.db'}",
        "--default-artifact-root",
        (repo.path / "mlartifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=repo.path, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not come up on {url} (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def experiment_id(mlflow_server) -> str:
    found = _post(f"{mlflow_server}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    ids = [e["experiment_id"] for e in found if e["name"] == "brain3d"]
    assert ids, f"no 'brain3d' experiment in {[e['name'] for e in found]}"
    return ids[0]


def test_rest_api_lists_runs_with_tags_params_metrics(tiny_pipeline, mlflow_server, experiment_id):
    runs = _post(
        f"{mlflow_server}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id], "max_results": 1000},
    )["runs"]
    assert len(runs) == len(tiny_pipeline.runs_exp)
    by_stage: dict[str, list[dict]] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        assert {"stage", "git_sha", "dvc_exp", "profile"} <= set(tags), tags
        assert run["info"]["status"] == "FINISHED"
        by_stage.setdefault(tags["stage"], []).append(
            {
                "tags": tags,
                "params": {p["key"]: p["value"] for p in run["data"].get("params", [])},
                "metrics": {m["key"]: m["value"] for m in run["data"].get("metrics", [])},
            }
        )
    assert set(by_stage) == set(STAGES)
    for stage, items in by_stage.items():
        for item in items:
            assert item["params"].get("profile") == "demo", stage
            m = item["metrics"]
            assert {"stage_seconds", "startup_seconds", "peak_rss_mb", "threads"} <= set(m), stage
            assert m["threads"] == 1 and 50 < m["peak_rss_mb"] < 20_000 and 0 < m["startup_seconds"] < 300, (
                stage,
                m,
            )
    exp_runs = [i for items in by_stage.values() for i in items if i["tags"]["dvc_exp"] == EXPERIMENT]
    assert {i["tags"]["git_sha"] for i in exp_runs} == {tiny_pipeline.sha_exp}
    phase2b = [i for i in by_stage["phase2b"] if i["tags"]["dvc_exp"] == EXPERIMENT]
    assert phase2b and phase2b[0]["params"]["phase2b.lora_rank"] == "4"
    assert {"train_loss", "val_loss", "lora_parameters"} <= set(phase2b[0]["metrics"])
    evaluate = [i for i in by_stage["evaluate"] if i["tags"]["dvc_exp"] == EXPERIMENT][0]
    assert "phase2b.lat_f1" in evaluate["metrics"] and "evaluate.n_resamples" in evaluate["params"]

    # a server-side filter on the DVC experiment tag, as one would type it in the UI's search box
    filtered = _post(
        f"{mlflow_server}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id], "filter": f"tags.dvc_exp = '{EXPERIMENT}'"},
    )["runs"]
    assert len(filtered) == len(exp_runs)


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--window-size=1400,900",
        "--virtual-time-budget=20000",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


def test_ui_renders_the_runs_of_the_experiment(tiny_pipeline, mlflow_server, experiment_id, tmp_path):
    browser = chromium()
    page = f"{mlflow_server}/#/experiments/{experiment_id}/runs"

    dom = _headless(browser, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"phase2b@{EXPERIMENT}" in dom.stdout and "evaluate@workspace" in dom.stdout, (
        "the runs table did not render the pipeline's runs"
    )

    shot = tmp_path / "mlflow-ui.png"
    res = _headless(browser, f"--screenshot={shot}", page)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1400)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert pixels.std() > 10 and len(colours) > 50, (
        f"blank page? std {pixels.std():.1f}, {len(colours)} colours"
    )
