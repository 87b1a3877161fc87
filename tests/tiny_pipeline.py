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
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Stages as they name their MLflow runs (brain3d.entrypoint.run's first argument).
UPSTREAM = ("download", "preprocess", "split", "corpus", "foundation", "phase1", "phase2a")
STAGES = (
    *UPSTREAM,
    "phase2b",
    "generate@phase1",
    "generate@phase2a",
    "generate@phase2b",
    "generate@phase2b_plain",
    "generate@phase2b_shuffled",
    "baseline@medgemma_slices",
    "baseline@med3dvlm",
    "baseline@braingemma3d_release",
    "baseline@slices_ft",
    "evaluate",
    "lime",
)
# DVC stage names (dvc.yaml) for the same runs.
DVC_STAGES = (
    *UPSTREAM,
    "phase2b",
    "generate@phase1",
    "generate@phase2a",
    "generate@phase2b",
    "generate@phase2b_plain",
    "generate@phase2b_shuffled",
    "baseline@medgemma_slices",
    "baseline@med3dvlm",
    "baseline@braingemma3d_release",
    "slices_ft",
    "evaluate",
    "lime",
)


def tiny_params(params: dict) -> dict:
    """Shrink the demo profile (and a few shared keys) so the DAG runs in minutes on 2 cores.

    16 phantom subjects, 4 per class (healthy, left, right, bilateral), split 2/1/1 per class so that
    train, val and test all hold every laterality class; 16 x 32 x 32 volumes; an 8-subject pretraining
    corpus; one-layer stand-ins;
    one epoch everywhere; short generations; few bootstrap resamples and LIME samples.
    """
    p = yaml.safe_load(yaml.safe_dump(params))  # deep copy
    assert p["profile"] == "demo", "the tiny pipeline shrinks the demo profile"
    demo = p["profiles"]["demo"]
    demo["download"].update(
        n_subjects=16,
        healthy_fraction=0.25,
        workers=2,
        laterality_mix={"left": 1.0, "right": 1.0, "bilateral": 1.0, "undefined": 0.0},
    )
    p["split"]["fractions"] = [0.5, 0.25, 0.25]
    p["preprocess"].update(skull_strip="threshold", workers=2)
    demo["preprocess"]["shape"] = [16, 32, 32]
    demo["corpus"].update(n_subjects=8, workers=2)
    f = demo["foundation"]
    f["tokenizer_vocab"] = 400
    f["siglip"] = {"hidden": 32, "intermediate": 64, "layers": 1, "text_layers": 1, "heads": 2, "patch": 8}
    f["siglip_train"].update(epochs=1, batch_size=32, patience=1)
    f["gemma"] = {
        "hidden": 32,
        "intermediate": 64,
        "layers": 1,
        "heads": 2,
        "kv_heads": 1,
        "head_dim": 16,
        "max_positions": 1024,
        "mm_tokens_per_image": 4,
    }
    f["gemma_train"].update(epochs=1, batch_size=8, patience=1)
    for phase in ("phase1", "phase2a", "phase2b"):  # slices_ft follows phase2b's budget
        demo[phase].update(epochs=1, batch_size=4, patience=1)
    demo["generate"].update(max_new_tokens=16, batch_size=16)
    demo["baselines"].update(n_slices=4)
    p["evaluate"]["n_resamples"] = 50
    p["lime"].update(per_class=1, batch_size=8, deletion_steps=3)
    demo["lime"].update(n_segments=6, n_samples=8)
    p["lime"]["cnn"].update(epochs=1)
    p["detector"].update(epochs=1)
    return p


def paper_params(params: dict, world: dict[str, Path]) -> dict:
    """`profile: paper` pointed at a miniature paper world (brain3d.rehearsal.write_world's folders): its data,
    snapshots and miniature BrainGemma3D release, the paper's volume shape, token counts and 4-bit request (which
    falls back on a CPU, said and logged), 4 slices of 256 image tokens for the slice baselines (the paper's 64:
    tests/test_baselines.py, at unit level; 64 cost the rehearsal 4 minutes), with one epoch of tiny batches and short generations. float32, not the paper's
    bfloat16: bf16 matmuls are emulated on this CPU and would double the run (tests/test_model.py holds the
    bf16 path: a bf16 encoder and LM run outside autocast)."""
    p = yaml.safe_load(yaml.safe_dump(params))  # deep copy
    p["profile"] = "paper"
    paper = p["profiles"]["paper"]
    paper["download"].update(
        brats_dir=str(world["brats_dir"]),
        textbrats_dir=str(world["textbrats_dir"]),
        ds000221_dir=str(world["ds000221_dir"]),
        n_tumour=world["n_tumour"],
        n_healthy=world["n_healthy"],
        fetch=False,
    )
    paper["foundation"].update(
        vision=str(world["vision"]), lm=str(world["lm"]), allow_cpu_fallback=True, dtype="float32"
    )
    p["baselines"]["braingemma3d_release"]["path"] = str(world["release"])  # the miniature release
    p["split"]["fractions"] = [0.34, 0.33, 0.33]  # strata of 3: one subject each
    for phase in ("phase1", "phase2a", "phase2b"):
        paper[phase].update(epochs=1, batch_size=2, grad_accum=2, patience=1)
    paper["generate"].update(max_new_tokens=12, batch_size=4)
    paper["baselines"].update(n_slices=4)
    paper["evaluate"].update(bertscore_model=None, bertscore_layers=None)  # no roberta-base in the world
    p["evaluate"]["n_resamples"] = 50
    p["lime"].update(per_class=1, batch_size=8, deletion_steps=3)
    paper["lime"].update(n_segments=6, n_samples=8)
    p["lime"]["cnn"].update(epochs=1)
    p["detector"].update(epochs=1)
    return p


def env(cache: Path) -> dict[str, str]:
    """Environment for DVC and the stages: this venv first on PATH, offline, one thread, private cache."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "GIT_"))}
    e.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        BRAIN3D_THREADS="1",
        BRAIN3D_CACHE=str(cache),
        TOKENIZERS_PARALLELISM="false",
        GIT_AUTHOR_NAME="brain3d-test",
        GIT_AUTHOR_EMAIL="test@localhost",
        GIT_COMMITTER_NAME="brain3d-test",
        GIT_COMMITTER_EMAIL="test@localhost",
    )
    return e


def copy_checkout(dest: Path, src: Path = ROOT) -> None:
    """Copy the tracked and the untracked-but-not-ignored files of `src` (working-tree versions) to `dest`."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=src, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if (src / rel).is_file():  # deleted-but-tracked files are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)


class CommandHung(AssertionError):
    """A command ran past its timeout (its Python stacks are in the message)."""


@dataclass
class Repo:
    path: Path
    env: dict[str, str]
    log: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def run(
        self,
        *cmd: str,
        label: str | None = None,
        timeout: float = 1800,
        check: bool = True,
        stdout_only: bool = False,
    ) -> str:
        """Run `cmd` in the repo; return its stdout + stderr (stdout only with `stdout_only`). A command still
        running after `timeout` s gets SIGABRT, so Python prints every thread's stack (PYTHONFAULTHANDLER) into
        the AssertionError and pipeline.log: a hang says where it hung."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=self.path,
            env={**self.env, "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: the signal reaches its children too
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGABRT)
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
            hung = True
        if label:
            self.seconds[label] = time.perf_counter() - t0
        text = stdout + stderr
        self.log.append(f"$ {' '.join(cmd)}\n{text}")
        if hung:
            raise CommandHung(
                f"`{' '.join(cmd)}` still running after {timeout:.0f} s in {self.path}:\n{text[-8000:]}"
            )
        if check and proc.returncode:
            raise AssertionError(
                f"`{' '.join(cmd)}` failed ({proc.returncode}) in {self.path}:\n{text[-6000:]}"
            )
        return stdout if stdout_only else text

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


def make_repo(tmp: Path, name: str = "repo", shrink=tiny_params) -> Repo:
    path = tmp / name
    path.mkdir(parents=True)
    copy_checkout(path)
    params_file = path / "params.yaml"
    params_file.write_text(yaml.safe_dump(shrink(yaml.safe_load(params_file.read_text())), sort_keys=False))
    repo = Repo(path, env(tmp / f"{name}-cache"))
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
    # An independent twin (own copy, own resume cache) run at the same time, then used for the resume checks.
    twin: Repo | None = None
    twin_repro: str = ""
    hashes: dict[str, str] = field(default_factory=dict)  # dvc.lock output hashes right after our first repro
    twin_hashes: dict[str, str] = field(default_factory=dict)  # and after the twin's
    killed_after: str = ""  # the last epoch line phase 1 printed before it was killed
    resumed: str = ""  # `dvc repro phase1` after the kill, code unchanged
    after_code_change: str = ""  # `dvc repro phase1` after an edit of training/losses.py
    typo: subprocess.CompletedProcess | None = None  # `dvc exp run -S phase2b.lora_rnak=4`: DVC refuses it
    typo_added: subprocess.CompletedProcess | None = (
        None  # `-S +phase2b.lora_rnak=4`: DVC adds it, a stage refuses
    )
    typo_seconds: float = 0.0  # of the second
    mistyped: subprocess.CompletedProcess | None = (
        None  # `-S phase2b.lora_rank=four`: a stage refuses the type
    )
    mistyped_seconds: float = 0.0


def outs_hashes(repo: Repo, stages: tuple[str, ...] | None = None) -> dict[str, str]:
    """{output path: md5} of every output that dvc.lock records for `stages` (default: all; a foreach stage
    is `name@key`). The copied checkout's dvc.lock holds the committed demo run's entries until a stage re-runs."""
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())["stages"]
    return {
        o["path"]: o["md5"]
        for name, stage in lock.items()
        if stages is None or name in stages
        for o in stage.get("outs", [])
    }


TWIN_TARGET = "phase2b"  # the twin's repro stops here (its upstream stages run too)
INTERRUPT_EPOCHS = 6  # phase 1 epochs in the interruption check: it is killed after the first one


def interrupt_phase1(repo: Repo) -> str:
    """Start phase 1 with more epochs, kill it once epoch 1 is saved; return the epoch line it printed."""
    params = repo.path / "params.yaml"
    p = yaml.safe_load(params.read_text())
    p["profiles"]["demo"]["phase1"].update(
        epochs=INTERRUPT_EPOCHS, patience=INTERRUPT_EPOCHS
    )  # no early stop
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.phase1"],
        cwd=repo.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**repo.env, "PYTHONUNBUFFERED": "1"},
    )
    seen = ""
    for line in proc.stdout:
        if re.search(r"phase1 epoch \d+:", line):  # printed after the epoch's state is on disk
            seen = line.strip()
            proc.kill()
            break
    proc.wait()
    repo.log.append(f"$ python -m stages.phase1 (killed after: {seen})")
    return seen


def exp_show(repo: Repo) -> str:
    """`dvc exp show --json`'s stdout. It takes seconds, yet once in a CI run (DVC 3.67.1) it hung for 30
    minutes right after `dvc exp run`, having cached the experiment but not yet its baseline; not reproduced
    since in 32 runs (24 on that very repository, 8 each right after a `dvc exp run`). So a hang gets its
    Python stacks logged (Repo.run), a warning (pytest lists it under the first test using the fixture) and
    one more try."""
    try:
        return repo.dvc("exp", "show", "--json", label="dvc exp show", stdout_only=True, timeout=300)
    except CommandHung:
        log = repo.path.parent / "pipeline.log"  # run_pipeline writes it there
        warnings.warn(f"`dvc exp show` hung; trying once more (its stacks: {log})", stacklevel=1)
        return repo.dvc("exp", "show", "--json", label="dvc exp show (again)", stdout_only=True, timeout=300)


def twin_exp(twin: Repo, override: str) -> subprocess.CompletedProcess:
    """`dvc exp run -S <override>` in the twin, expected to fail (not raised), its output logged."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", override],
        cwd=twin.path,
        env=twin.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    twin.log.append(f"$ dvc exp run -S {override}\n{out.stdout}{out.stderr}")
    return out


def run_pipeline(tmp: Path) -> Pipeline:
    """repro (and an independent twin's repro up to phase 2B beside it: the stages that train and simulate,
    where two runs could drift apart), repro again, commit, `dvc exp run -S phase2b.lora_rank=4`, `dvc exp
    show --json`; then in the twin: an interrupted phase 1 resumed, phase 1 after a code edit, and an
    experiment with a misspelt key."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    repo, twin = make_repo(tmp), make_repo(tmp, "twin")
    result = Pipeline(repo, twin=twin)
    try:
        result.sha_repro = repo.git("rev-parse", "HEAD").strip()
        with ThreadPoolExecutor(1) as pool:  # the twin's repro runs beside ours (each stage on one thread)
            twin_repro = pool.submit(twin.dvc, "repro", TWIN_TARGET, label="dvc repro phase2b (twin)")
            result.repro = repo.dvc("repro", label="dvc repro")
            result.twin_repro = twin_repro.result()
        result.hashes = outs_hashes(repo)
        result.twin_hashes = outs_hashes(twin, (*UPSTREAM, TWIN_TARGET))
        result.runs_repro = repo.mlflow_runs()
        # bytecode next to a code dep (as a subprocess or an editor leaves it) must not count as a code change:
        # a fresh clone has none (.dvcignore)
        (repo.path / "brain3d/baselines/__pycache__").mkdir(exist_ok=True)
        (repo.path / "brain3d/baselines/__pycache__/stray.cpython-311.pyc").write_bytes(b"\0")
        result.repro_again = repo.dvc("repro", label="dvc repro (again)")
        result.runs_again = repo.mlflow_runs()
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", "tiny pipeline results")
        result.sha_exp = repo.git("rev-parse", "HEAD").strip()
        result.exp = repo.dvc(
            "exp", "run", "-n", EXPERIMENT, "-S", "phase2b.lora_rank=4", label="dvc exp run"
        )
        result.runs_exp = repo.mlflow_runs()
        result.exp_show = json.loads(exp_show(repo))

        result.killed_after = interrupt_phase1(twin)
        result.resumed = twin.dvc("repro", "phase1", label="resume phase1 (twin)")
        losses = twin.path / "brain3d/training/losses.py"
        losses.write_text(losses.read_text() + "\n# an edit: the code that trains phase 1 changed\n")
        result.after_code_change = twin.dvc("repro", "phase1", label="phase1 after a code change (twin)")
        twin.git("add", "-A")
        twin.git("commit", "-q", "-m", "twin: phase 1 re-run")
        result.typo = twin_exp(twin, "phase2b.lora_rnak=4")
        t1 = time.perf_counter()
        result.typo_added = twin_exp(twin, "+phase2b.lora_rnak=4")
        result.typo_seconds = time.perf_counter() - t1
        t1 = time.perf_counter()
        result.mistyped = twin_exp(twin, "phase2b.lora_rank=four")
        result.mistyped_seconds = time.perf_counter() - t1
    finally:
        repo.seconds["total"] = time.perf_counter() - t0
        repo.seconds["inside stages"] = sum(
            map(float, re.findall(r": done in ([0-9.]+) s", "\n".join(repo.log)))
        )
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in repo.seconds.items())
        # every command's output, after the seconds each step took
        (tmp / "pipeline.log").write_text("\n".join([f"seconds: {steps}", *repo.log]))
        (tmp / "twin.log").write_text("\n".join(twin.log))
    return result
