"""The paper profile, rehearsed: `dvc repro evaluate` with `profile: paper` on a miniature paper world
(brain3d/rehearsal.py: BraTS 2020 CBICA layout at 240 x 240 x 155, TextBraTS reports, ds000221 BIDS FLAIRs
with skull, MedSigLIP-448 / MedGemma-1.5-4B-IT snapshots of the real classes at tiny widths), at the paper's
volume shape (64 x 128 x 128 -> 65 x 9 x 9 tokens -> 32), 4 slices x 256 image tokens for the slice
baselines (the paper's 64 are checked in tests/test_baselines.py), and 4-bit requested (a CPU falls back, said and logged). Every stage's outputs are checked; the
numbers are not results. `lime` is left out: its probe's cross-validation needs 2 training subjects per class,
more than a CPU-sized rehearsal holds."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest
from tiny_pipeline import DVC_STAGES

pytestmark = pytest.mark.slow

N_TUMOUR, N_HEALTHY = 6, 3  # 3 per stratum (left, right, healthy): 1 train, 1 val, 1 test each
STAGES = [s for s in DVC_STAGES if s != "lime"]  # the DAG up to `evaluate`


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    from tiny_pipeline import make_repo, paper_params

    from brain3d.rehearsal import write_world

    tmp = tmp_path_factory.mktemp("rehearsal")
    t0 = time.perf_counter()
    world = {
        **write_world(tmp / "world", n_tumour=N_TUMOUR, n_healthy=N_HEALTHY, sides=("left", "right")),
        "n_tumour": N_TUMOUR,
        "n_healthy": N_HEALTHY,
    }
    repo = make_repo(tmp, "repo", shrink=lambda p: paper_params(p, world))
    # one thread (env()'s default): the other xdist worker runs the tiny pipeline's two repros beside it, and
    # torch threads spin when they outnumber the cores
    world_s = time.perf_counter() - t0
    try:
        out = repo.dvc("repro", "evaluate", label="dvc repro evaluate (paper)", timeout=1500)
    finally:
        (tmp / "rehearsal.log").write_text("\n".join(repo.log))
    print(f"rehearsal: world {world_s:.0f} s, dvc repro {repo.seconds['dvc repro evaluate (paper)']:.0f} s")
    return repo, world, out


def test_every_paper_stage_ran_on_the_miniature_world(rehearsal):
    repo, world, out = rehearsal
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out, stage
    assert "Running stage 'lime'" not in out
    manifest = pd.read_csv(repo.path / "data/raw/manifest.csv")
    assert sorted(manifest["source"].unique()) == ["brats2020", "ds000221"]
    assert (manifest["cohort"] == "tumour").sum() == N_TUMOUR and (
        manifest["cohort"] == "healthy"
    ).sum() == N_HEALTHY
    qc = pd.read_csv(repo.path / "data/preprocessed/qc.csv")
    assert qc["sequence"].eq("FLAIR").all(), qc[
        ["subject", "sequence"]
    ]  # BraTS and ds000221 FLAIRs read FLAIR


def test_foundation_recorded_the_snapshot_revisions_and_the_4bit_fallback(rehearsal):
    repo, world, _ = rehearsal
    record = json.loads((repo.path / "models/foundation/backbones.json").read_text())
    assert record["source"] == "local" and record["load_in_4bit"] and record["allow_cpu_fallback"]
    meta = world["lm"] / ".cache/huggingface/download/config.json.metadata"
    assert record["revisions"]["lm"] == meta.read_text().split()[0]
    phase2b = [r for r in repo.mlflow_runs() if r.get("stage") == "phase2b"]
    assert phase2b, "no MLflow run of phase2b"
    assert "4-bit NF4" in repo.mlflow_params(phase2b[0]["run_id"])["precision_fallback"]


def test_the_model_has_the_papers_token_geometry(rehearsal):
    repo, *_ = rehearsal
    card = json.loads((repo.path / "models/phase2b/brain3d.json").read_text())
    assert card["model"]["volume_shape"] == [64, 128, 128] and card["model"]["n_tokens"] == 32
    from transformers import AutoConfig

    lm = AutoConfig.from_pretrained(
        card["backbones"]["lm"]
        if os.path.isabs(card["backbones"]["lm"])
        else repo.path / "models/phase2b" / card["backbones"]["lm"]
    )
    assert (
        lm.mm_tokens_per_image == 256
        and lm.vision_config.patch_size == 14
        and lm.vision_config.image_size == 896
    )


def test_every_system_was_scored_or_says_why_not(rehearsal):
    repo, *_ = rehearsal
    metrics = json.loads((repo.path / "reports/metrics.json").read_text())
    systems = ("phase1", "phase2a", "phase2b", "phase2b_shuffled", "medgemma_slices", "slices_ft")
    for name in (*systems, "braingemma3d_release"):
        assert name in metrics, name
    main = (repo.path / "reports/tables/main.md").read_text()
    assert "med3dvlm | not run:" in main
    preds = pd.read_json(repo.path / "reports/predictions/medgemma_slices.jsonl", lines=True)
    assert len(preds) == len(pd.read_csv(repo.path / "data/splits.csv").query("split == 'test'")) > 0


def test_the_released_model_was_scored_beside_the_others_with_its_provenance(rehearsal):
    """baseline@braingemma3d_release ran the miniature release (its own inference and decoding, our
    preprocessing at its volume shape) on every test subject; its record names the revision and every file's
    hash; evaluate compared it with phase 2B subject by subject."""
    import hashlib

    repo, world, _ = rehearsal
    meta = json.loads((repo.path / "reports/predictions/braingemma3d_release.json").read_text())
    assert (
        meta["status"] == "ok"
        and meta["baseline"]
        and "project loader, volumes 64x128x128" in meta["description"]
    )
    rec = meta["release"]
    release = world["release"]
    assert (
        rec["revision"]
        == (release / ".cache/huggingface/download/projector_vis_scale.pt.metadata").read_text().split()[0]
    )
    assert (
        rec["sha256"]["projector_vis_scale.pt"]
        == hashlib.sha256((release / "projector_vis_scale.pt").read_bytes()).hexdigest()
    )
    assert rec["lora"] and rec["decoding"]["no_repeat_ngram_size"] == 3
    preds = pd.read_json(repo.path / "reports/predictions/braingemma3d_release.jsonl", lines=True)
    assert len(preds) == len(pd.read_csv(repo.path / "data/splits.csv").query("split == 'test'")) > 0
    assert preds["prediction"].str.strip().str.len().gt(0).all()
    diffs = pd.read_csv(repo.path / "reports/tables/paired_differences.csv")
    assert set(diffs.loc[diffs["versus"] == "braingemma3d_release", "metric"]) >= {
        "bleu1",
        "lat_f1",
        "path_f1",
    }
    assert "Running stage 'baseline@braingemma3d_release'" in rehearsal[2]


def run_benchmark(script: str, json_out, *args: str) -> tuple[str, dict]:
    """Run benchmarks/`script` at tiny widths with `args` in a subprocess (it must exit 0); (stdout, its --json
    figures)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        str(root / "benchmarks" / script),
        "--scale",
        "tiny",
        *args,
        "--json",
        str(json_out),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, json.loads(json_out.read_text())


def adds_up(hours: dict) -> bool:
    return hours["total"] == pytest.approx(sum(v for k, v in hours.items() if k != "total"))


def test_the_gpu_benchmark_runs_end_to_end_at_tiny_widths(tmp_path):
    """benchmarks/paper_gpu.py is meant for a CUDA machine; the same code at tiny widths on the CPU keeps it
    from rotting until one is lent (its figures here mean nothing for a GPU)."""
    stdout, figures = run_benchmark(
        "paper_gpu.py", tmp_path / "gpu.json", "--device", "cpu", "--steps", "1", "--max-new-tokens", "4"
    )
    for key in (
        "token_cache_s_per_volume",
        "phase1_microbatch_s",
        "phase2b_microbatch_s",
        "generate_reports_per_s",
    ):
        assert figures[key] > 0, key
    assert adds_up(figures["gpu_hours"])
    assert "ratio:" in stdout


def test_the_real_size_cpu_benchmark_runs_end_to_end_at_tiny_widths(tmp_path):
    """benchmarks/paper_cpu.py takes ~20 GB and minutes at its real sizes; at tiny widths it checks that every
    step (build, save and load; encoder; phase-2B micro-batch with LoRA; generation) still runs with today's
    params, and that its figures add up."""
    _, figures = run_benchmark("paper_cpu.py", tmp_path / "cpu.json", "--batch", "1", "--new-tokens", "4")
    for step in ("build_save_load", "encoder_one_volume", "phase2b_microbatch", "generate_16_tokens"):
        assert figures[f"{step}_s"] > 0 and figures[f"{step}_peak_rss_gb"] > 0, step
    assert figures["token_grid"] == [65, 9, 9] and adds_up(figures["cpu_hours"])
