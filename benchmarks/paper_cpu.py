"""Benchmark: the paper profile at its REAL sizes on this CPU, the one real-size run possible without a GPU.

MedSigLIP-448 (SigLIP so400m/14) and MedGemma-1.5-4B-IT (Gemma 3 4B, 262,208-token vocabulary) are built with
random weights in bf16 (brain3d.rehearsal.write_snapshots, scale "real"), saved as hub-style snapshots and
loaded back through the project's loaders, as the paper profile loads them (the LM unquantised: 4-bit NF4 needs
CUDA; `foundation.allow_cpu_fallback`). Then, each timed once after a warm-up, with its peak resident memory:

1. the encoder: one volume at the paper's shape (64 x 128 x 128 -> a 65 x 9 x 9 token grid) through the inflated
   encoder and the compressor (what the token cache computes once per volume);
2. one phase-2B micro-batch (params.yaml `profiles.paper.phase2b.batch_size`, a 160-token report) forward and
   backward, with LoRA (r 16) on the language model's q/k/v/o, under bf16 autocast as the training loop runs it;
3. a generation of 16 new tokens for a batch of `profiles.paper.generate.batch_size` (the plain decoder: with
   `generate.select: findings` a report that disagrees with the findings head is sampled again, at this cost each).

It prints seconds and peak RSS per step, and what they imply at the full epoch budget
(benchmarks/paper_gpu.py's `training_hours`, phase 1 estimated at 3 encoder passes per volume), in CPU-hours.
Needs about 20 GB of memory and an hour of two cores.

    python benchmarks/paper_cpu.py [--json OUT] [--batch N] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from paper_gpu import ROOT, training_hours


def reset_peak_rss() -> None:
    """Start a new high-water mark of this process's resident memory (Linux: /proc/self/clear_refs), after
    handing the heap that earlier steps freed back to the system (glibc keeps it, and it would count as the next
    step's peak: the generation step read 22.8 GB after the training step's activations, without this)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float:
    """The resident-memory high-water mark since the last reset, in GB (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def measured(name: str, fn, figures: dict, warm_up: bool = True) -> None:
    """Run `fn` (once more before, unless `warm_up` is False), record its seconds and peak RSS under `name`."""
    if warm_up:
        fn()
    reset_peak_rss()
    t0 = time.perf_counter()
    fn()
    figures[f"{name}_s"] = time.perf_counter() - t0
    figures[f"{name}_peak_rss_gb"] = peak_rss_gb()
    print(
        f"{name}: {figures[f'{name}_s']:.1f} s, peak RSS {figures[f'{name}_peak_rss_gb']:.1f} GB", flush=True
    )


def main() -> None:  # noqa: C901 (one measurement after another)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="phase-2B micro-batch (default: the paper profile's)")
    parser.add_argument("--scale", choices=("real", "tiny"), default="real", help="tiny: a smoke test")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    import torch
    import yaml

    from brain3d import runtime
    from brain3d.config import resolve

    runtime.setup()
    warnings.filterwarnings("ignore")
    from brain3d.data.reports import healthy_report
    from brain3d.generation import decoding_from_params
    from brain3d.models.backbones import load_language_model, load_vision_model
    from brain3d.models.model import Brain3D, ModelConfig, VisualTokenizer
    from brain3d.rehearsal import PROMPT_TEXT, write_snapshots

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "paper"
    cfg = resolve(params)
    model_cfg = ModelConfig.from_params(cfg)
    batch = args.batch or cfg["phase2b"]["batch_size"]
    bf16 = torch.bfloat16
    report = "The lesion is located in the left frontal lobe with surrounding edema and necrosis. " * 6
    figures: dict = {"scale": args.scale, "threads": torch.get_num_threads(), "batch": batch}

    with tempfile.TemporaryDirectory(prefix="paper-cpu-") as tmp:
        holder: dict = {}

        def build_and_load():
            vision_dir, lm_dir = write_snapshots(
                Path(tmp), [report, healthy_report("sub-0"), PROMPT_TEXT], scale=args.scale, device="cpu"
            )
            holder["visual"] = VisualTokenizer(load_vision_model(vision_dir, dtype=bf16), model_cfg).eval()
            holder["lm"] = load_language_model(lm_dir, dtype=bf16)

        measured("build_save_load", build_and_load, figures, warm_up=False)
    visual, lm = holder["visual"], holder["lm"]
    figures["lm_parameters_b"] = sum(p.numel() for p in lm.causal.parameters()) / 1e9
    figures["token_grid"] = list(visual.encoder.grid)
    n_grid = visual.encoder.grid[0] * visual.encoder.grid[1] * visual.encoder.grid[2]
    print(f"token grid {tuple(visual.encoder.grid)} = {n_grid} tokens -> {model_cfg.n_tokens} visual tokens")

    volume = torch.rand(1, 1, *model_cfg.volume_shape, dtype=bf16)
    with torch.no_grad():
        measured("encoder_one_volume", lambda: visual(volume), figures)

    p2 = cfg["phase2b"]
    lm.add_lora(p2["lora_rank"], p2["lora_alpha"], p2["lora_dropout"])
    model = Brain3D(lm, visual.width, model_cfg.prompt).train()  # projector float32, as the stages build it
    tokens = torch.randn(batch, model_cfg.n_tokens, visual.width, dtype=bf16)
    tok = lm.tokenizer
    text = tok.decode(tok(report, add_special_tokens=False)["input_ids"][:160])

    def phase2b_step():
        with torch.autocast("cpu", dtype=bf16):
            loss = model(tokens, [text] * batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    measured("phase2b_microbatch", phase2b_step, figures)

    model.eval()
    n_gen = cfg["generate"]["batch_size"]
    decoding = decoding_from_params(
        {
            **cfg["generate"],
            "max_new_tokens": args.new_tokens,
            "min_new_tokens": args.new_tokens,
            "select": "plain",
        }
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=bf16):
        measured("generate_16_tokens", lambda: model.generate(tokens[:n_gen], decoding), figures)

    # what it implies at the full epoch budget (paper_gpu.training_hours), on this CPU
    step = {
        "token_cache_s_per_volume": figures["encoder_one_volume_s"],
        "phase1_microbatch_s": 3 * batch * figures["encoder_one_volume_s"],  # forward + backward, estimated
        "phase2b_microbatch_s": figures["phase2b_microbatch_s"] * cfg["phase2b"]["batch_size"] / batch,
        "generate_reports_per_s": n_gen
        / (figures["generate_16_tokens_s"] * cfg["generate"]["max_new_tokens"] / args.new_tokens),
    }
    figures["cpu_hours"] = training_hours(cfg, step)
    print(
        "CPU-hours at the full epoch budget (the paper: ~12 A100-hours): "
        + ", ".join(f"{k} {v:.0f}" for k, v in figures["cpu_hours"].items())
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
