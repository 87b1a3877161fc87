"""One rank of the DDP test (tests/test_ddp.py): phase 2B (projector + LoRA) over fixed visual tokens, run by
`torchrun --nproc_per_node 2 tests/ddp_worker.py LM_DIR OUT_DIR`, as stages/phase2b.py does.

Every rank records the files it wrote through `brain3d.fileio` (the training loop's only writer) and its loss
history in OUT_DIR/rank<r>.json; rank 0 alone saves the projector and the LoRA adapter, as the stage does."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("BRAIN3D_THREADS", "1")

from brain3d import runtime  # noqa: E402

runtime.setup(int(os.environ["BRAIN3D_THREADS"]))

import torch  # noqa: E402
from conftest import PROMPT, REPORTS  # noqa: E402  (this script's folder, tests/, is on sys.path)

from brain3d import fileio  # noqa: E402
from brain3d.models.backbones import load_language_model  # noqa: E402
from brain3d.models.model import Brain3D  # noqa: E402
from brain3d.training import loop, phases  # noqa: E402
from brain3d.training.loop import TrainConfig  # noqa: E402

VISION_WIDTH, K = 32, 32


def main() -> None:
    lm_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    written: list[str] = []
    for name in (
        "save_safetensors",
        "write_json",
        "write_csv",
        "save_npy",
        "atomic_path",
    ):  # record every write of this rank
        original = getattr(fileio, name)

        def recorder(path, *args, _original=original, **kwargs):
            written.append(Path(path).name)
            return _original(path, *args, **kwargs)

        setattr(fileio, name, recorder)
    assert loop.fileio is fileio

    runtime.seed_everything(0)  # same initial projector/LoRA on every rank (DDP also broadcasts rank 0's)
    lm = load_language_model(lm_dir)
    lora = lm.add_lora(2, 4, 0.05)
    model = Brain3D(lm, VISION_WIDTH, PROMPT)
    g = torch.Generator().manual_seed(1)
    train_tokens = torch.randn(12, K, VISION_WIDTH, generator=g)
    val_tokens = torch.randn(4, K, VISION_WIDTH, generator=g)
    train_reports, val_reports = (REPORTS * 3)[:12], REPORTS
    lora_params = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    groups = [{"params": list(model.projector.parameters()), "lr": 2e-3}, {"params": lora_params, "lr": 1e-3}]
    cfg = TrainConfig(
        epochs=3, batch_size=2, lr=2e-3, grad_accum=1, weight_decay=0.01, warmup_frac=0.2, patience=5, seed=42
    )
    result = phases.train_phase2(
        model,
        train_tokens,
        train_reports,
        val_tokens,
        val_reports,
        cfg,
        groups,
        state_dir=out / "state",
        normal_weight=3.0,
        flipped_train_tokens=train_tokens.flip(1),
        desc="ddp-phase2b",
    )
    from accelerate import PartialState

    state = PartialState()
    record = {
        "rank": rank,
        "num_processes": state.num_processes,
        "distributed_type": state.distributed_type.name,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val": result.best_val,
        "projector_sum": float(sum(p.detach().double().sum() for p in model.projector.parameters())),
        "lora_sum": float(sum(p.detach().double().sum() for p in lora_params)),
        "written": sorted(set(written)),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if not runtime.is_main_process():
        return
    fileio.save_safetensors(out / "model" / "projector.safetensors", model.projector.state_dict())
    lora.save_pretrained(out / "model" / "adapter")


if __name__ == "__main__":
    main()
