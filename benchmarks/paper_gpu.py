"""Benchmark: the paper profile's cost on one CUDA GPU, with random weights of the real sizes (no download).

MedSigLIP-448 (SigLIP so400m/14, image 448) and MedGemma-1.5-4B-IT (Gemma 3 4B, 262,208-token vocabulary,
SigLIP tower at 896) are built with random weights (brain3d.rehearsal.write_snapshots, scale "real"), saved
as snapshots and loaded back through the project's loaders, as the paper profile loads them: the LM in 4-bit
NF4 with double quantisation and bf16 compute, the vision tower in bf16 (params.yaml `profiles.paper.foundation`).
The volume is the paper's 64 x 128 x 128 (65 x 9 x 9 = 5,265 tokens), K = 32, LoRA r 16 on q/k/v/o, and
the batch, accumulation and epochs come from params.yaml `profiles.paper`. It measures

- the token cache: s per volume of the frozen encoder + compressor (what phases 2A/2B and generation read);
- phase 1: one micro-batch forward + backward of the visual tokenizer + heads (InfoNCE + findings);
- phase 2B: one micro-batch forward + backward (projector + LoRA), its peak GPU memory; 2A (projector
  only) is costed at the 2B time, an upper bound;
- generation: reports/s at the paper's batch, 256 new tokens each (min_new_tokens = max, so the count is
  fixed whatever random weights emit);

and extrapolates the paper's training cost in GPU-hours at the full epoch budget (early stopping only
shortens it): sum over phases of epochs x ceil(train / batch) micro-batches x the step time, plus the
validation forward (at 1/3 of a step) and the test reports of 4 generating systems. The paper states about
12 A100-hours. Ratio printed: a phase-2B micro-batch that encoded its volumes on the fly over one that reads
the token cache, both measured here.

    python benchmarks/paper_gpu.py [--json OUT] [--steps 3]           # on a CUDA machine
    python benchmarks/paper_gpu.py --scale tiny --device cpu --steps 1  # the same code at tiny widths (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SUBJECTS = round(0.7 * (369 + 99))  # split.fractions of the paper cohort
TEST_SUBJECTS = round(0.2 * (369 + 99))
REPORT_TOKENS = 160  # a TextBraTS-length report in the Gemma tokenizer, for teacher forcing


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, steps: int) -> float:
    """Median seconds of `steps` calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def training_hours(cfg: dict, figures: dict) -> dict[str, float]:
    """The paper's training cost at the full epoch budget, in hours, from the measured step times (`figures`:
    token_cache_s_per_volume, phase1_microbatch_s, phase2b_microbatch_s, generate_reports_per_s): epochs x
    micro-batches x step time, plus the validation forward at 1/3 of a step, plus 4 systems' test reports."""
    micro = math.ceil(TRAIN_SUBJECTS / cfg["phase2b"]["batch_size"])
    hours = {
        "token_cache": (TRAIN_SUBJECTS * 2 + TEST_SUBJECTS) * figures["token_cache_s_per_volume"] / 3600,
        "phase1": cfg["phase1"]["epochs"] * micro * figures["phase1_microbatch_s"] * 4 / 3 / 3600,
        "phase2a": cfg["phase2a"]["epochs"] * micro * figures["phase2b_microbatch_s"] * 4 / 3 / 3600,
        "phase2b": cfg["phase2b"]["epochs"] * micro * figures["phase2b_microbatch_s"] * 4 / 3 / 3600,
        "generate": 4 * TEST_SUBJECTS / figures["generate_reports_per_s"] / 3600,
    }
    return {**hours, "total": sum(hours.values())}


def main() -> None:  # noqa: C901 (one measurement after another, as the paper trains)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=3, help="timed repetitions of each measurement")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    import torch
    import yaml

    from brain3d import runtime
    from brain3d.config import resolve

    runtime.set_offline_env()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "paper_gpu.py: no CUDA device (use --scale tiny --device cpu to check the code path)"
        )

    from brain3d.data.reports import healthy_report
    from brain3d.generation import decoding_from_params
    from brain3d.models.backbones import load_language_model, load_vision_model
    from brain3d.models.model import Brain3D, ModelConfig, VisualTokenizer
    from brain3d.rehearsal import PROMPT_TEXT, write_snapshots
    from brain3d.training.losses import InfoNCE
    from brain3d.training.phases import ContrastiveModel, findings_loss, findings_tensors

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "paper"
    cfg = resolve(params)
    f, device = cfg["foundation"], args.device
    bf16 = torch.bfloat16 if args.scale == "real" else torch.float32
    four_bit = f["load_in_4bit"] and device == "cuda"
    model_cfg = ModelConfig.from_params(cfg)
    batch = cfg["phase2b"]["batch_size"]
    reports = [
        "The lesion is located in the left frontal lobe with surrounding edema and necrosis. " * 6,
        healthy_report("sub-0"),
    ]
    figures: dict = {
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "scale": args.scale,
        "lm_4bit": four_bit,
        "dtype": str(bf16).removeprefix("torch."),
        "batch": batch,
        "grad_accum": cfg["phase2b"]["grad_accum"],
    }
    with tempfile.TemporaryDirectory(prefix="paper-gpu-") as tmp:
        t0 = time.perf_counter()
        vision_dir, lm_dir = write_snapshots(
            Path(tmp), reports + [PROMPT_TEXT], scale=args.scale, device=device
        )
        figures["build_and_save_s"] = time.perf_counter() - t0
        visual = VisualTokenizer(load_vision_model(vision_dir, dtype=bf16), model_cfg).to(device)
        lm = load_language_model(
            lm_dir, dtype=bf16, load_in_4bit=four_bit, allow_cpu_fallback=device == "cpu"
        )
    if not four_bit:
        lm.full.to(device)
    figures["lm_parameters_b"] = sum(p.numel() for p in lm.causal.parameters()) / 1e9
    volumes = torch.rand(batch, 1, *model_cfg.volume_shape, device=device, dtype=bf16)

    # token cache: frozen encoder + compressor, one volume at a time as VisualTokenizer.encode runs it
    visual.eval()
    with torch.no_grad():
        figures["token_cache_s_per_volume"] = timed(lambda: visual(volumes[:1]), device, args.steps)

    # phase 1: visual tokenizer + contrastive and findings heads, forward + backward
    text_dim = lm.hidden_size
    contrastive = ContrastiveModel(visual, text_dim, findings=True).to(device).train()
    infonce = InfoNCE(cfg["phase1"]["temperature"])
    text = torch.randn(batch, text_dim, device=device)
    targets = {k: v.to(device) for k, v in findings_tensors([reports[i % 2] for i in range(batch)]).items()}

    def phase1_step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16 == torch.bfloat16):
            image, logits = contrastive(volumes)
            loss = infonce(image.float(), text) + sum(
                findings_loss({k: v.float() for k, v in logits.items()}, targets).values()
            )
        loss.backward()
        contrastive.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    figures["phase1_microbatch_s"] = timed(phase1_step, device, args.steps)
    if device == "cuda":
        figures["phase1_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    # phase 2B: projector + LoRA over the (4-bit) LM, teacher forcing a report
    p2 = cfg["phase2b"]
    lm.add_lora(p2["lora_rank"], p2["lora_alpha"], p2["lora_dropout"])
    model = Brain3D(lm, visual.width, model_cfg.prompt).train()
    model.projector.to(device)  # the LM is placed already (a 4-bit one by its device map)
    tokens = torch.randn(batch, model_cfg.n_tokens, visual.width, device=device)
    tok = lm.tokenizer
    report = tok.decode(tok(reports[0], add_special_tokens=False)["input_ids"][:REPORT_TOKENS])

    def phase2_step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16 == torch.bfloat16):
            loss = model(tokens, [report] * batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    figures["phase2b_microbatch_s"] = timed(phase2_step, device, args.steps)
    figures["phase2b_optimizer_step_s"] = figures["phase2b_microbatch_s"] * p2["grad_accum"]
    if device == "cuda":
        figures["phase2b_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    # generation at the paper's batch, a fixed number of new tokens, with the plain decoder (findings-consistent
    # decoding resamples the reports that disagree with the findings head at this cost per call)
    model.eval()
    n = args.max_new_tokens
    decoding = decoding_from_params(
        {**cfg["generate"], "max_new_tokens": n, "min_new_tokens": n, "select": "plain"}
    )
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16 == torch.bfloat16):
        gen_s = timed(
            lambda: model.generate(tokens[: cfg["generate"]["batch_size"]], decoding),
            device,
            max(1, args.steps // 2),
        )
    figures["generate_reports_per_s"] = cfg["generate"]["batch_size"] / gen_s

    figures["gpu_hours"] = training_hours(cfg, figures)
    for key, value in figures.items():
        if key != "gpu_hours":
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(
        "GPU-hours at the full epoch budget (paper: ~12 A100-hours): "
        + ", ".join(f"{k} {v:.2f}" for k, v in figures["gpu_hours"].items())
    )
    uncached = batch * figures["token_cache_s_per_volume"] + figures["phase2b_microbatch_s"]
    print(
        f"ratio: {uncached / figures['phase2b_microbatch_s']:.1f}x (a phase-2B micro-batch encoding its "
        "volumes on the fly over one reading cached tokens: what the token cache saves)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
