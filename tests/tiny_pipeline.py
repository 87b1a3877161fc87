"""The whole DVC pipeline on a tiny configuration, in a throw-away copy of this repository.

`tiny_params` is the one place that shrinks params.yaml for the end-to-end tests (tests/test_e2e.py,
tests/test_mlflow_ui.py, tests/test_plots_offline.py): keep it in step with params.yaml when keys change. The copy is a fresh git
repository made of this checkout's tracked and untracked-but-not-ignored files (uncommitted edits
included), so the tests exercise the working tree, not the last commit. Each helper is plain code so a
failing stage can be re-run by hand: `cd <tmp>/repo && dvc repro` (every command's output is saved in
<tmp>/pipeline.log; pytest prints <tmp> in its summary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Stages as they name their MLflow runs (brain3d.stage.run's first argument).
UPSTREAM = ("download", "preprocess", "split", "foundation", "phase1", "phase2a")
STAGES = (*UPSTREAM, "phase2b", "generate@phase1", "generate@phase2a", "generate@phase2b",
          "generate@phase2b_shuffled", "baseline@medgemma_slices", "baseline@med3dvlm", "baseline@slices_ft",
          "evaluate", "lime")
# DVC stage names (dvc.yaml) for the same runs.
DVC_STAGES = (*UPSTREAM, "phase2b", "generate@phase1", "generate@phase2a", "generate@phase2b",
              "generate@phase2b_shuffled", "baseline@medgemma_slices", "baseline@med3dvlm", "slices_ft",
              "evaluate", "lime")


def tiny_params(params: dict) -> dict:
    """Shrink the demo profile (and a few shared keys) so the DAG runs in minutes on 2 cores.

    16 phantom subjects, 4 per class (healthy, left, right, bilateral), split 2/1/1 per class so that
    train, val and test all hold every laterality class; 16 x 32 x 32 volumes; one-layer stand-ins;
    one epoch everywhere; short generations; few bootstrap resamples and LIME samples.
    """
    p = yaml.safe_load(yaml.safe_dump(params))  # deep copy
    assert p["profile"] == "demo", "the tiny pipeline shrinks the demo profile"
    demo = p["profiles"]["demo"]
    demo["download"].update(n_subjects=16, healthy_fraction=0.25, workers=2,
                            laterality_mix={"left": 1.0, "right": 1.0, "bilateral": 1.0, "undefined": 0.0})
    p["split"]["fractions"] = [0.5, 0.25, 0.25]
    p["preprocess"].update(skull_strip="threshold", workers=2)
    demo["preprocess"]["shape"] = [16, 32, 32]
    f = demo["foundation"]
    f["tokenizer_vocab"] = 400
    f["siglip"] = {"hidden": 32, "intermediate": 64, "layers": 1, "text_layers": 1, "heads": 2, "patch": 8}
    f["siglip_train"].update(epochs=1, batch_size=32, patience=1)
    f["gemma"] = {"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 1, "head_dim": 16,
                  "max_positions": 1024, "mm_tokens_per_image": 4}
    f["gemma_train"].update(epochs=1, batch_size=8, patience=1)
    for phase in ("phase1", "phase2a", "phase2b"):  # slices_ft follows phase2b's budget
        demo[phase].update(epochs=1, batch_size=4, patience=1)
    demo["generate"].update(max_new_tokens=16, batch_size=16)
    demo["baselines"].update(n_slices=4, max_new_tokens=16)
    p["evaluate"]["n_resamples"] = 50
    p["lime"].update(per_class=1, n_segments=6, n_samples=8, batch_size=8, deletion_steps=3)
    return p


def env(cache: Path) -> dict[str, str]:
    """Environment for DVC and the stages: this venv first on PATH, offline, one thread, private cache."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "GIT_"))}
    e.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}", HF_HUB_OFFLINE="1",
             HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
             DVC_NO_ANALYTICS="1", BRAIN3D_THREADS="1", BRAIN3D_CACHE=str(cache), TOKENIZERS_PARALLELISM="false",
             GIT_AUTHOR_NAME="brain3d-test", GIT_AUTHOR_EMAIL="test@localhost",
             GIT_COMMITTER_NAME="brain3d-test", GIT_COMMITTER_EMAIL="test@localhost")
    return e


def copy_checkout(dest: Path, src: Path = ROOT) -> None:
    """Copy the tracked and the untracked-but-not-ignored files of `src` (working-tree versions) to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=src, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file():  # deleted-but-tracked files are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)


@dataclass
class Repo:
    path: Path
    env: dict[str, str]
    log: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, *cmd: str, label: str | None = None, timeout: float = 1800, check: bool = True,
            stdout_only: bool = False) -> str:
        """Run `cmd` in the repo; return its stdout + stderr (stdout only with `stdout_only`)."""
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout)
        if label:
            self.seconds[label] = time.perf_counter() - t0
        text = out.stdout + out.stderr
        self.log.append(f"$ {' '.join(cmd)}\n{text}")
        if check and out.returncode:
            raise AssertionError(f"`{' '.join(cmd)}` failed ({out.returncode}) in {self.path}:\n{text[-6000:]}")
        return out.stdout if stdout_only else text

    def dvc(self, *args: str, **kw) -> str:
        return self.run(sys.executable, "-m", "dvc", *args, **kw)

    def git(self, *args: str) -> str:
        return self.run("git", *args)

    def mlflow_runs(self) -> list[dict[str, str]]:
        """Every MLflow run in the repo's mlflow.db as its tags (+ run_id), read with sqlite directly."""
        db = self.path / "mlflow.db"
        if not db.exists():
            return []
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT run_uuid, key, value FROM tags").fetchall()
        runs: dict[str, dict[str, str]] = {}
        for run_id, key, value in rows:
            runs.setdefault(run_id, {"run_id": run_id})[key] = value
        return list(runs.values())

    def mlflow_params(self, run_id: str) -> dict[str, str]:
        with sqlite3.connect(self.path / "mlflow.db") as con:
            return dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())


def make_repo(tmp: Path) -> Repo:
    path = tmp / "repo"
    path.mkdir(parents=True)
    copy_checkout(path)
    params_file = path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params(yaml.safe_load(params_file.read_text())), sort_keys=False))
    repo = Repo(path, env(tmp / "cache"))
    repo.git("init", "-q", "-b", "main")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "tiny pipeline")
    return repo


EXPERIMENT = "tiny-r4"  # the `dvc exp run -n` name of the LoRA-rank experiment


@dataclass
class Pipeline:
    """What the tiny pipeline did, step by step, for the tests to check."""

    repo: Repo
    repro: str = ""  # output of the first `dvc repro`
    runs_repro: list[dict] = field(default_factory=list)  # MLflow runs after it
    sha_repro: str = ""  # the commit it ran on
    repro_again: str = ""
    runs_again: list[dict] = field(default_factory=list)
    sha_exp: str = ""  # the commit the experiment is based on
    exp: str = ""  # output of `dvc exp run -n tiny-r4 -S phase2b.lora_rank=4`
    runs_exp: list[dict] = field(default_factory=list)
    exp_show: list[dict] = field(default_factory=list)


def run_pipeline(tmp: Path) -> Pipeline:
    """repro, repro again, commit, `dvc exp run -S phase2b.lora_rank=4`, `dvc exp show --json`."""
    t0 = time.perf_counter()
    repo = make_repo(tmp)
    result = Pipeline(repo)
    try:
        result.sha_repro = repo.git("rev-parse", "HEAD").strip()
        result.repro = repo.dvc("repro", label="dvc repro")
        result.runs_repro = repo.mlflow_runs()
        result.repro_again = repo.dvc("repro", label="dvc repro (again)")
        result.runs_again = repo.mlflow_runs()
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", "tiny pipeline results")
        result.sha_exp = repo.git("rev-parse", "HEAD").strip()
        result.exp = repo.dvc("exp", "run", "-n", EXPERIMENT, "-S", "phase2b.lora_rank=4", label="dvc exp run")
        result.runs_exp = repo.mlflow_runs()
        result.exp_show = json.loads(repo.dvc("exp", "show", "--json", label="dvc exp show", stdout_only=True))
    finally:
        repo.seconds["total"] = time.perf_counter() - t0
        repo.seconds["inside stages"] = sum(map(float, re.findall(r": done in ([0-9.]+) s", "\n".join(repo.log))))
        (tmp / "pipeline.log").write_text("\n".join(repo.log))  # every command's full output
    return result
