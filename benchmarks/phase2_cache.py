"""Benchmark: phase-2 training steps/s over cached visual tokens (what brain3d.training.phases does: the frozen
encoder's K tokens per volume are computed once) vs recomputing the frozen encoder's forward at every step.

Random stand-in backbones of the demo sizes (params.yaml `profiles.demo.foundation`: SigLIP hidden 96, 3
layers, patch 16; Gemma 3 hidden 128, 4 layers), the demo volume shape 32x64x64 and compressor, phase 2B
trainables (projector + LoRA on the LM's q/k/v/o) and the demo batch size 16. Both variants train the same
batch (random volumes in [0, 1], report-like texts) for the same number of steps: forward, backward, gradient
clipping and an AdamW step, as the training loop does. The two run in ABBA order (the machine may be shared)
and the best of each is compared.

    python benchmarks/phase2_cache.py [--steps 20] [--phase 2b] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import _standins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo phase's batch size")
    parser.add_argument("--phase", choices=("2a", "2b"), default="2b")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="5 steps, one run of each variant")
    args = parser.parse_args()
    steps, repeats = (5, 1) if args.quick else (args.steps, 2)

    from brain3d import runtime

    runtime.set_offline_env()
    warnings.filterwarnings("ignore", category=FutureWarning)
    n_threads = _standins.threads()
    _standins.quiet()
    import torch

    from brain3d.models.backbones import load_language_model, load_vision_model
    from brain3d.models.model import Brain3D, ModelConfig, VisualTokenizer

    cfg = _standins.demo_params()
    section = cfg[f"phase{args.phase}"]
    batch = args.batch_size or section["batch_size"]
    model_cfg = ModelConfig.from_params(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-phase2-") as tmp:
        siglip_dir, gemma_dir = _standins.build(Path(tmp), cfg, args.seed)
        visual = VisualTokenizer(load_vision_model(siglip_dir), model_cfg)
        lm = load_language_model(gemma_dir)
    visual.eval().requires_grad_(False)  # frozen in phase 2
    runtime.seed_everything(args.seed)
    if args.phase == "2b":
        lm.add_lora(section["lora_rank"], section["lora_alpha"], section["lora_dropout"])
    model = Brain3D(lm, visual.width, model_cfg.prompt)
    model.train()
    groups = [{"params": list(model.projector.parameters()), "lr": section["lr"]}]
    if args.phase == "2b":
        groups.append(
            {"params": [p for n, p in model.lm.named_parameters() if "lora_" in n], "lr": section["lr_lora"]}
        )
    trainable = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=section["weight_decay"])

    g = torch.Generator().manual_seed(args.seed)
    volumes = torch.rand(batch, 1, *model_cfg.volume_shape, generator=g)
    reports = _standins.reports(batch, args.seed + 1)
    t0 = time.perf_counter()
    cached = visual.encode([v[0].numpy() for v in volumes])  # as VisualTokenizer.cached_encode computes them
    cache_s = time.perf_counter() - t0

    def step(z: torch.Tensor | None) -> float:
        if z is None:
            with torch.no_grad():
                z = visual(volumes)
        loss = model(z, reports)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    def timed(use_cache: bool) -> float:
        step(cached if use_cache else None)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            step(cached if use_cache else None)
        return steps / (time.perf_counter() - t0)

    rates: dict[bool, list[float]] = {True: [], False: []}
    order = [c for r in range(repeats) for c in ((True, False) if r % 2 == 0 else (False, True))]
    for use_cache in order:
        rates[use_cache].append(timed(use_cache))
    best = {k: max(v) for k, v in rates.items()}
    n_params = sum(p.numel() for p in trainable)
    grid = visual.encoder.grid
    print(
        f"phase {args.phase}, batch {batch}, volume {tuple(model_cfg.volume_shape)}, encoder tokens "
        f"{grid[0]}x{grid[1]}x{grid[2]}={grid[0] * grid[1] * grid[2]} -> K={cached.shape[1]}, "
        f"{n_params:,} trainable parameters, {steps} timed steps, {n_threads} threads"
    )
    print(
        f"one-off token cache: {cache_s:.2f} s for {batch} volumes ({cache_s / batch * 1000:.0f} ms/volume)"
    )
    for use_cache, name in ((True, "cached tokens"), (False, "encoder every step")):
        runs = ", ".join(f"{r:.2f}" for r in rates[use_cache])
        print(f"{name}: {best[use_cache]:.2f} steps/s (best of {runs})")
    print(
        f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads "
        "spin at barriers, so a busy machine slows multi-threaded runs far more than single-threaded ones"
    )
    print(f"ratio: {best[True] / best[False]:.1f}x (cached / recomputed steps per second)")


if __name__ == "__main__":
    main()
