"""End to end: `dvc repro` on tiny params, a no-op second repro, and `dvc exp run -S phase2b.lora_rank=4`.

The pipeline runs once per session in a throw-away copy of this checkout (the `tiny_pipeline` fixture,
tests/tiny_pipeline.py: ~6-8 min on 2 cores); each test checks one promise the README makes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from tiny_pipeline import DVC_STAGES, EXPERIMENT, STAGES, UPSTREAM

pytestmark = pytest.mark.slow

# What `dvc exp run -S phase2b.lora_rank=4` must re-run (DVC names) and what it must leave alone.
RERUN = (
    "phase2b",
    "generate@phase2b",
    "generate@phase2b_plain",
    "generate@phase2b_shuffled",
    "slices_ft",
    "evaluate",
    "lime",
)
UNTOUCHED = tuple(s for s in DVC_STAGES if s not in RERUN)


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def skipped(output: str) -> list[str]:
    return re.findall(r"Stage '([^']+)' didn't change, skipping", output)


def test_repro_writes_reports_and_one_mlflow_run_per_stage(tiny_pipeline):
    repo = tiny_pipeline.repo
    assert sorted(ran(tiny_pipeline.repro)) == sorted(DVC_STAGES)
    main_md = (repo.path / "reports/tables/main.md").read_text()
    assert "| phase2b |" in main_md and "| slices_ft |" in main_md
    assert "med3dvlm | not run:" in main_md  # opt-in baseline: a row that says why, no numbers
    assert (
        "braingemma3d_release | not run: no release snapshot at data/external/models/BrainGemma3D" in main_md
    )
    metrics = json.loads((repo.path / "reports/metrics.json").read_text())
    for system in ("phase1", "phase2a", "phase2b", "phase2b_shuffled", "medgemma_slices", "slices_ft"):
        for m in ("bleu1", "lat_f1", "path_f1"):
            assert metrics[system][f"{m}_low"] <= metrics[system][m] <= metrics[system][f"{m}_high"], (
                system,
                m,
            )
    splits = pd.read_csv(repo.path / "data/splits.csv")
    test = splits[splits["split"] == "test"]
    assert set(test["laterality"]) >= {"left", "right", "bilateral", "none"}, (
        "tiny_params: a class left the test set"
    )

    runs = tiny_pipeline.runs_repro
    assert Counter(r["stage"] for r in runs) == Counter(STAGES), "one MLflow run per stage execution"
    for r in runs:
        assert r["git_sha"] == tiny_pipeline.sha_repro, r
        assert r["dvc_exp"] == "workspace" and r["profile"] == "demo", r
        assert r["mlflow.runName"] == f"{r['stage']}@workspace"


def test_timings_table_has_every_stage_of_the_last_run(tiny_pipeline):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "stages.timings", tiny_pipeline.repo.path / "stages" / "timings.py"
    )
    timings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timings)
    runs = timings.last_runs(tiny_pipeline.repo.path / "mlflow.db", exp="workspace").set_index("stage")
    assert set(runs.index) == set(STAGES)
    assert (
        (runs["stage_seconds"] > 0).all() and (runs["peak_rss_mb"] > 0).all() and (runs["threads"] == 1).all()
    )
    table = timings.markdown(runs.reset_index())
    assert table.count("\n| ") == len(STAGES) + 1 and "**total**" in table  # a row per stage, then the total


def test_second_repro_reruns_nothing(tiny_pipeline):
    out = tiny_pipeline.repro_again
    assert ran(out) == []
    assert sorted(skipped(out)) == sorted(DVC_STAGES)
    assert "Data and pipelines are up to date" in out
    assert len(tiny_pipeline.runs_again) == len(tiny_pipeline.runs_repro), (
        "no stage ran, so no new MLflow run"
    )


def test_experiment_reruns_phase2b_and_downstream_only(tiny_pipeline):
    out = tiny_pipeline.exp
    assert sorted(ran(out)) == sorted(RERUN)
    assert sorted(skipped(out)) == sorted(UNTOUCHED)

    before = {r["run_id"] for r in tiny_pipeline.runs_again}
    new = [r for r in tiny_pipeline.runs_exp if r["run_id"] not in before]
    assert not [r for r in new if r["stage"] in UPSTREAM], "upstream stages must not re-run"
    assert sorted(r["stage"] for r in new) == sorted(
        s.replace("slices_ft", "baseline@slices_ft") for s in RERUN
    )
    for r in new:
        assert r["dvc_exp"] == EXPERIMENT, r
        assert r["git_sha"] == tiny_pipeline.sha_exp, r
    phase2b = next(r for r in new if r["stage"] == "phase2b")
    assert tiny_pipeline.repo.mlflow_params(phase2b["run_id"])["phase2b.lora_rank"] == "4"


def _experiments(doc: list[dict]) -> dict[str, dict]:
    return {
        exp["name"]: rev for commit in doc for exp in commit.get("experiments") or [] for rev in exp["revs"]
    }


def test_exp_show_lists_the_experiment_with_its_metrics(tiny_pipeline):
    doc = tiny_pipeline.exp_show
    baseline = next(c for c in doc if c["rev"] == tiny_pipeline.sha_exp)
    exps = _experiments([baseline])
    assert EXPERIMENT in exps, list(exps)
    rev = exps[EXPERIMENT]
    assert not rev.get("error")
    assert rev["data"]["params"]["params.yaml"]["data"]["phase2b"]["lora_rank"] == 4
    assert baseline["data"]["params"]["params.yaml"]["data"]["phase2b"]["lora_rank"] == 16
    metrics = rev["data"]["metrics"]["reports/metrics.json"]["data"]
    assert {"phase2b", "phase2b_shuffled", "slices_ft"} <= set(metrics)
    assert {"lat_f1", "lat_f1_low", "lat_f1_high", "bleu1"} <= set(metrics["phase2b"])
    assert "reports/training/phase2b.json" in rev["data"]["metrics"]
    # the experiment's metrics are its own: the workspace holds them after `dvc exp run`
    workspace = json.loads((tiny_pipeline.repo.path / "reports/metrics.json").read_text())
    assert metrics["phase2b"] == workspace["phase2b"]


def test_ablations_table_from_the_real_experiment(tiny_pipeline):
    repo = tiny_pipeline.repo
    out = subprocess.run(
        [sys.executable, "-m", "stages.ablations"],
        cwd=repo.path,
        env=repo.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(repo.path / "reports/ablations.csv")
    rows = table.set_index("experiment")
    assert rows.loc[EXPERIMENT, "phase2b.lora_rank"] == 4 and rows.loc[EXPERIMENT, "state"] == "success"
    assert rows.loc["main", "phase2b.lora_rank"] == 16
    metrics = json.loads((repo.path / "reports/metrics.json").read_text())["phase2b"]
    assert rows.loc[EXPERIMENT, "lat_f1"] == pytest.approx(metrics["lat_f1"])
    md = (repo.path / "reports/ablations.md").read_text()
    assert f"| {EXPERIMENT} |" in md and "| main |" in md
    # written outside the evaluate stage's outputs, so DVC still sees the pipeline as up to date
    status = repo.dvc("status", stdout_only=True)
    assert "changed outs" not in status, status


def test_two_independent_runs_write_identical_outputs(tiny_pipeline):
    """Same code, same params, two copies with their own resume caches: every output hash in dvc.lock of the
    stages both ran (up to phase 2B: data, simulation and training) agrees (no timings, hosts or dates in a
    DVC output)."""
    assert sorted(ran(tiny_pipeline.twin_repro)) == sorted((*UPSTREAM, "phase2b"))
    ours, twin = tiny_pipeline.hashes, tiny_pipeline.twin_hashes
    assert {"models/phase2b", "models/phase1", "data/preprocessed"} <= twin.keys() <= ours.keys()
    differ = sorted(path for path in twin if ours[path] != twin[path])  # the twin's own stages' outputs only
    assert not differ, f"outputs that differ between two identical runs: {differ}"


def test_an_interrupted_stage_resumes_and_a_code_change_retrains(tiny_pipeline):
    from tiny_pipeline import INTERRUPT_EPOCHS

    killed = re.search(r"phase1 epoch (\d+):", tiny_pipeline.killed_after)
    assert killed and int(killed.group(1)) < INTERRUPT_EPOCHS, tiny_pipeline.killed_after
    resumed = tiny_pipeline.resumed
    assert ran(resumed) == ["phase1"]
    assert f"phase1: resuming after epoch {killed.group(1)}" in resumed
    assert f"phase1 epoch {INTERRUPT_EPOCHS}:" in resumed and "phase1 epoch 1:" not in resumed

    changed = tiny_pipeline.after_code_change
    assert ran(changed) == ["phase1"], "an edit of brain3d/training/losses.py must re-run phase 1"
    assert "resuming" not in changed, "new code must not be handed the old code's training state"
    assert "phase1 epoch 1:" in changed and f"phase1 epoch {INTERRUPT_EPOCHS}:" in changed


def test_a_misspelt_param_fails_fast_naming_the_key(tiny_pipeline):
    # DVC itself refuses to set a key params.yaml does not have ...
    typo = tiny_pipeline.typo
    out = typo.stdout + typo.stderr
    assert typo.returncode != 0 and "phase2b.lora_rnak" in out, out[-3000:]
    assert "Running stage" not in out, "nothing may run"
    # ... and when one is added on purpose (`-S +key=value`, or params.yaml edited by hand), the first stage
    # that reads params stops at once, naming the key and the nearest valid one
    added = tiny_pipeline.typo_added
    out = added.stdout + added.stderr
    assert added.returncode != 0, out[-3000:]
    assert "phase2b.lora_rnak: unknown key; did you mean phase2b.lora_rank?" in out, out[-3000:]
    assert "phase2b epoch" not in out, "nothing may train"
    assert tiny_pipeline.typo_seconds < 120, tiny_pipeline.typo_seconds


def test_results_are_real_results_not_only_finished_stages(tiny_pipeline):
    """What the run wrote is what it claims (the workspace holds the `-S phase2b.lora_rank=4` experiment's
    outputs): the rank-4 adapter has rank 4, the shuffled control writes other reports than phase 2B, every
    metric is finite and in its range, and LIME explains every expected case with finite numbers."""
    import math

    from safetensors.torch import load_file

    repo = tiny_pipeline.repo.path
    adapter = repo / "models/phase2b/adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    lora_a = {k: v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_A" in k}
    assert lora_a and all(v.shape[0] == 4 for v in lora_a.values())

    preds = {
        s: pd.read_json(repo / f"reports/predictions/{s}.jsonl", lines=True).set_index("subject")[
            "prediction"
        ]
        for s in ("phase2b", "phase2b_shuffled")
    }
    assert (preds["phase2b"] != preds["phase2b_shuffled"].loc[preds["phase2b"].index]).any(), (
        "the shuffled-token control wrote the same reports as phase 2B"
    )

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    unbounded = ("cider",)  # CIDEr-D reaches 10; BERTScore is a cosine
    for system, values in metrics.items():
        for key, value in values.items():
            assert math.isfinite(value), (system, key)
            if key.startswith("bertscore"):
                assert -1 <= value <= 1, (system, key, value)
            elif key.startswith(unbounded):
                assert value >= 0, (system, key, value)
            else:
                assert 0 <= value <= 1, (system, key, value)

    faith = pd.read_csv(repo / "reports/lime/faithfulness.csv")

    def finite(rows: pd.DataFrame, columns: list[str]) -> bool:
        values = rows[columns].to_numpy(dtype=float)
        return values.size > 0 and bool(np.isfinite(values).all())

    # every explanation has its score, fit and deletion curve; lesion figures where there is a lesion; the
    # stability (two seeds' agreement) of every trained model's explanation
    assert finite(faith, ["score", "r2", "deletion_drop", "deletion_drop_random_order"])
    lesion = ["lesion_share", "lesion_chance", "lesion_rank", "lesion_top1"]
    assert finite(faith[faith["laterality"] != "none"], lesion)
    assert finite(faith[faith["model"] == "trained"], ["stability"])
    test = pd.read_csv(repo / "data/splits.csv").query("split == 'test'")
    for side in ("left", "right", "bilateral"):  # lime.per_class 1 per side, and one healthy subject
        assert (faith["laterality"] == side).sum() > 0, side
    assert set(faith["subject"]) <= set(test["subject"]) and faith["subject"].nunique() == 4
    assert set(faith["model"]) == {"trained", "randomised"}
    one_sided = faith[faith["laterality"].isin(["left", "right"])]
    assert set(one_sided["target"]) == {"report", "side"}
    summary = json.loads((repo / "reports/lime/faithfulness.json").read_text())
    flat = [v for k, v in summary.items() if not isinstance(v, dict)]
    assert flat and all(math.isfinite(v) for v in flat)
    probe = json.loads((repo / "reports/lime/token_probe.json").read_text())
    assert all(math.isfinite(v) for v in probe.values() if isinstance(v, float))


def test_a_model_refuses_phase1_weights_it_was_not_trained_with(tiny_pipeline):
    """The twin re-ran phase 1 alone (6 epochs, then after a code change): its models/phase2b, trained on the
    first phase-1 weights, must refuse to load, naming the file and the hash it was trained with."""
    from brain3d.fileio import IntegrityError
    from brain3d.models.model import Brain3D

    twin = tiny_pipeline.twin.path
    pinned = json.loads((twin / "models/phase2b/brain3d.json").read_text())["sha256"]
    with pytest.raises(IntegrityError) as refused:
        Brain3D.from_pretrained(twin / "models/phase2b")
    # the first phase-1 file it checks that changed (both did: the encoder and the findings head)
    named = [f for f in ("visual.safetensors", "findings.safetensors") if f"phase1/{f}" in str(refused.value)]
    assert len(named) == 1 and pinned[f"../phase1/{named[0]}"][:16] in str(refused.value), str(refused.value)
    Brain3D.from_pretrained(twin / "models/phase1")  # phase 1 itself is consistent


def test_a_param_of_the_wrong_type_fails_fast_naming_the_key_and_the_type(tiny_pipeline):
    """`dvc exp run -S phase2b.lora_rank=four` used to train phase 2B for 20 s and die in PEFT with a traceback."""
    out = tiny_pipeline.mistyped.stdout + tiny_pipeline.mistyped.stderr
    assert tiny_pipeline.mistyped.returncode != 0, out[-3000:]
    assert "params: phase2b.lora_rank: 'four' is not an integer (expected an integer >= 1)" in out, out[
        -3000:
    ]
    assert "phase2b epoch" not in out and "Traceback" not in out, out[-3000:]
    assert tiny_pipeline.mistyped_seconds < 120, tiny_pipeline.mistyped_seconds
