"""Benchmark: report generation batched (batch 16, KV cache, as brain3d.generation.generate_reports does) vs
one report at a time, on the same random demo-sized model and the same inputs.

Random stand-in backbones of the demo sizes (params.yaml `profiles.demo.foundation`), the project's decoding
(temperature 0.1, top-p 0.9, repetition penalty 1.2 sparing left/right, no repeated n-gram: params.yaml `generate`) with max_new_tokens 64. Every sample
has the same prefix length ([K visual][BOS + prompt]), so a batch needs no padding (were there any, it would be
on the left). An untrained LM may emit EOS at any point, so min_new_tokens is set to max_new_tokens by default:
both methods then generate exactly N x 64 tokens and tokens/s compare like for like. The two run in ABBA order
(the machine may be shared) and the best of each is compared.

    python benchmarks/generate.py [--inputs 32] [--batch-size 16] [--max-new-tokens 64] [--quick]
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
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-new-tokens", type=int, default=None, help="default: = max-new-tokens")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="16 inputs, one run of each method")
    args = parser.parse_args()
    n, repeats = (16, 1) if args.quick else (args.inputs, 2)
    min_new = args.max_new_tokens if args.min_new_tokens is None else args.min_new_tokens

    from brain3d import runtime

    runtime.set_offline_env()
    warnings.filterwarnings("ignore", category=UserWarning)  # e.g. no-repeat n-grams apply to new tokens only
    warnings.filterwarnings("ignore", category=FutureWarning)
    n_threads = _standins.threads()
    _standins.quiet()
    import torch

    from brain3d.generation import decoding_from_params, generate_reports
    from brain3d.models.backbones import load_language_model, load_vision_model
    from brain3d.models.model import Brain3D, ModelConfig, VisualTokenizer

    cfg = _standins.demo_params()
    model_cfg = ModelConfig.from_params(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        siglip_dir, gemma_dir = _standins.build(Path(tmp), cfg, args.seed)
        visual = VisualTokenizer(load_vision_model(siglip_dir), model_cfg)
        lm = load_language_model(gemma_dir)
    runtime.seed_everything(args.seed)
    model = Brain3D(lm, visual.width, model_cfg.prompt).eval()
    g = torch.Generator().manual_seed(args.seed)
    tokens = visual.encode(list(torch.rand(n, *model_cfg.volume_shape, generator=g).numpy()))
    decoding = decoding_from_params(
        {**cfg["generate"], "max_new_tokens": args.max_new_tokens, "min_new_tokens": min_new}
    )

    def timed(batch_size: int) -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        reports = generate_reports(
            model, tokens, decoding, batch_size=batch_size, seed=args.seed, progress=False
        )
        return time.perf_counter() - t0, reports

    generate_reports(model, tokens[:2], decoding, batch_size=2, seed=args.seed, progress=False)  # warm-up
    seconds: dict[int, list[float]] = {args.batch_size: [], 1: []}
    order = [
        b for r in range(repeats) for b in ((args.batch_size, 1) if r % 2 == 0 else (1, args.batch_size))
    ]
    outputs = {}
    for batch_size in order:
        s, outputs[batch_size] = timed(batch_size)
        seconds[batch_size].append(s)
    n_tokens = n * args.max_new_tokens if min_new == args.max_new_tokens else None
    prefix = model_cfg.n_tokens + len(model.prompt_ids)
    print(
        f"{n} inputs, prefix {prefix} tokens, max_new_tokens {args.max_new_tokens}, min_new_tokens {min_new}, "
        f"{n_threads} threads"
    )
    for batch_size, name in ((args.batch_size, f"batched (batch {args.batch_size})"), (1, "one at a time")):
        best = min(seconds[batch_size])
        runs = ", ".join(f"{s:.1f}" for s in seconds[batch_size])
        rate = f", {n_tokens / best:.0f} tokens/s" if n_tokens else ""
        print(f"{name}: {n / best:.2f} reports/s{rate} (best of {runs} s)")
    assert all(len(out) == n for out in outputs.values())
    print(
        f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads "
        "spin at barriers, so a busy machine slows multi-threaded runs far more than single-threaded ones"
    )
    print(
        f"ratio: {min(seconds[1]) / min(seconds[args.batch_size]):.1f}x (batched / one-at-a-time reports per second)"
    )


if __name__ == "__main__":
    main()
