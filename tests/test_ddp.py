"""Phase 2B under DDP: `torchrun --nproc_per_node 2` on CPU (accelerate picks MULTI_CPU + gloo) runs the one
training loop unchanged; both ranks see the same loss history and weights, only rank 0 writes, and the saved
projector + LoRA adapter load back.

(`accelerate launch --cpu --num_processes 2` is not used: without MPI it silently starts ONE process.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_phase2b_trains_under_ddp_with_two_cpu_processes(tmp_path, tiny_gemma3_dir):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {
        **os.environ,
        "BRAIN3D_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "BRAIN3D_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        str(torchrun),
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(HERE / "ddp_worker.py"),
        str(tiny_gemma3_dir),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert {r["distributed_type"] for r in ranks} == {"MULTI_CPU"}
    # Losses are reduced over processes, so both ranks hold the same history, and DDP keeps the weights equal.
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [row["epoch"] for row in h0] == [1, 2, 3]
    assert h0 == h1
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"]
    assert ranks[0]["projector_sum"] == pytest.approx(ranks[1]["projector_sum"], rel=1e-6)
    assert ranks[0]["lora_sum"] == pytest.approx(ranks[1]["lora_sum"], rel=1e-6)
    assert all(torch.isfinite(torch.tensor([row["train_loss"], row["val_loss"]])).all() for row in h0)

    # Only rank 0 writes the resumable state and the model.
    assert "checkpoint.pt" in ranks[0]["written"]
    assert ranks[1]["written"] == []
    from brain3d.training.loop import read_checkpoint

    ckpt = read_checkpoint(tmp_path / "state")
    assert [row["epoch"] for row in ckpt["state"]["history"]] == [1, 2, 3]

    # The saved projector and LoRA adapter load into a fresh model and reproduce the trained weights.
    from conftest import PROMPT
    from peft import PeftModel
    from safetensors.torch import load_file

    from brain3d.models.backbones import load_language_model
    from brain3d.models.model import Brain3D
    from brain3d.training.loop import load_trainable

    lm = load_language_model(tiny_gemma3_dir)
    peft = PeftModel.from_pretrained(lm.full, tmp_path / "model" / "adapter")
    model = Brain3D(lm, 32, PROMPT)
    model.projector.load_state_dict(load_file(str(tmp_path / "model" / "projector.safetensors")))
    lora = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    assert lora and any(float(p.abs().sum()) > 0 for n, p in peft.named_parameters() if "lora_B" in n)
    assert float(sum(p.detach().double().sum() for p in model.projector.parameters())) == pytest.approx(
        ranks[0]["projector_sum"], rel=1e-6
    )
    assert float(sum(p.detach().double().sum() for p in lora)) == pytest.approx(
        ranks[0]["lora_sum"], rel=1e-5
    )
    # The best checkpoint holds exactly the trainable (projector + LoRA) parameters of a fresh 2B model.
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*model.projector.parameters(), *lora]:
        p.requires_grad_(True)
    load_trainable(model, ckpt["best"])
