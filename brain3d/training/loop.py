"""The one training loop used by every phase and stand-in: AdamW, linear warmup + cosine decay,
gradient accumulation, bf16 on CUDA, early stopping on validation loss, and resumable checkpoints of the
trainable parameters only. Runs unchanged under `accelerate launch` (DDP).

The resume state of a training is ONE file, `<state_dir>/checkpoint.pt`: the epoch's counters and history, the
last and the best trainable weights and the optimizer state, replaced atomically (synced, then renamed) after
each epoch, so a kill at any moment leaves the previous epoch's state or the new one, never a mix. It is read
with `torch.load(weights_only=True)` (no pickle code runs); a file that cannot be read or does not fit the model
is said in one line and the training starts afresh."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from brain3d import config, fileio
from brain3d.tracking import Tracker


@dataclass
class TrainConfig:
    """A training section of params.yaml (phase1, phase2a, phase2b; the stand-ins' *_train); no defaults for
    what params.yaml holds."""

    epochs: int
    batch_size: int
    lr: float
    grad_accum: int
    weight_decay: float
    warmup_frac: float
    patience: int
    seed: int
    max_grad_norm: float = 1.0

    @classmethod
    def from_params(cls, section: dict) -> TrainConfig:
        return config.from_section(cls, section)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val: float
    stopped_early: bool


CHECKPOINT = "checkpoint.pt"  # the resume state of one training (module docstring)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _mismatch(model: nn.Module, weights: dict[str, torch.Tensor]) -> str:
    """Why `weights` cannot be the trainable parameters of `model` ("" when they can)."""
    expected = {n: tuple(p.shape) for n, p in trainable_state(model).items()}
    if set(weights) != set(expected):
        return (
            f"keys do not match the trainable parameters (missing {sorted(set(expected) - set(weights))[:3]}, "
            f"extra {sorted(set(weights) - set(expected))[:3]})"
        )
    wrong = [n for n, t in weights.items() if tuple(t.shape) != expected[n]]
    return f"shapes differ for {wrong[:3]}" if wrong else ""


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put `weights` (a checkpoint's "last" or "best") into the model's trainable parameters."""
    problem = _mismatch(model, weights)
    if problem:
        raise RuntimeError(f"checkpoint {problem}")
    model.load_state_dict(weights, strict=False)


def read_checkpoint(state_dir: Path) -> dict | None:
    """The resume state in `state_dir` ({"state", "last", "best", "optimizer"}), or None when there is none;
    raises ValueError for a file that cannot be read as one."""
    path = Path(state_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not written by this loop
        raise ValueError(f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(ckpt, dict) or not {"state", "last", "best", "optimizer"} <= set(ckpt):
        raise ValueError("not a checkpoint of this training loop")
    ckpt["state"] = json.loads(ckpt["state"])
    return ckpt


def _resume(state_dir: Path, model: nn.Module, optimizer, desc: str, say) -> tuple[dict | None, dict]:
    """(state, best weights) of the last completed epoch in `state_dir`, loaded into `model` and `optimizer`;
    (None, {}) when there is nothing to resume, or when the checkpoint is unreadable or does not fit the model
    (said in one line; the file is removed and the training starts afresh)."""
    path = state_dir / CHECKPOINT
    try:
        ckpt = read_checkpoint(state_dir)
        if ckpt is None:
            return None, {}
        state = ckpt["state"]
        problem = _mismatch(model, ckpt["last"]) or _mismatch(model, ckpt["best"])
        if not problem and len(state["history"]) != state["epoch"]:
            problem = f"epoch {state['epoch']} with {len(state['history'])} history rows"
        if problem:
            raise ValueError(problem)
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        say(f"{desc}: resume state {path} is inconsistent or corrupt ({exc}); starting afresh")
        path.unlink(missing_ok=True)
        return None, {}
    load_trainable(model, ckpt["last"])
    say(f"{desc}: resuming after epoch {state['epoch']} from {state_dir}")
    return state, ckpt["best"]


def _write_checkpoint(state_dir: Path, state: dict, last: dict, best: dict, optimizer) -> None:
    """One file, replaced atomically (fileio.atomic_path syncs it before the rename)."""
    ckpt = {
        "state": json.dumps(state),
        "last": {k: v.detach().cpu().contiguous() for k, v in last.items()},
        "best": {k: v.detach().cpu().contiguous() for k, v in best.items()},
        "optimizer": optimizer.state_dict(),
    }
    with fileio.atomic_path(state_dir / CHECKPOINT) as tmp:
        torch.save(ckpt, tmp)


def warmup_cosine(total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_frac)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def val_batches(n: int, batch_size: int) -> list[list[int]]:
    """Validation batches in order; a last batch of one sample joins the one before it (a loss over pairs,
    InfoNCE, is undefined on one sample: 3 validation subjects at batch size 2 would stop phase 1)."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    if batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] += last
    return batches


def fit(  # noqa: C901 (the training loop: resume, accumulate, validate, stop)
    model: nn.Module,
    param_groups: list[dict],
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    train_set: Dataset,
    val_set: Dataset,
    collate: Callable,
    cfg: TrainConfig,
    *,
    state_dir: Path,
    tracker: Tracker | None = None,
    desc: str = "train",
    progress: bool = True,
    sample_weights: list[float] | None = None,
) -> FitResult:
    """Train `model` (only parameters with requires_grad), keeping the best epoch by validation loss.

    `loss_fn` returns the loss, or (loss, parts): a dict of named scalar terms of it, averaged per epoch
    into the history (and MLflow) as train_<name> and val_<name>; early stopping reads the loss itself.

    `sample_weights` (one per training sample): an epoch draws len(train_set) samples with replacement in
    proportion to them (same number of steps as uniform shuffling); None: every sample once per epoch.

    `state_dir` holds the resume state (CHECKPOINT, module docstring); calling `fit` again with the same
    state_dir resumes after the last completed epoch. On return the model holds the best weights.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from tqdm.auto import tqdm

    tracker = tracker or Tracker()
    # bf16 autocast exactly when the model holds bf16 weights (foundation.dtype bfloat16, or a 4-bit LM with
    # bf16 compute), on any device: what the params ask for, with no silent fallback
    bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    state_dir = Path(state_dir)
    main = accelerator.is_main_process
    g = torch.Generator().manual_seed(cfg.seed)
    if sample_weights is None:
        order = {"shuffle": True, "generator": g}
    else:
        if len(sample_weights) != len(train_set) or min(sample_weights) < 0 or not sum(sample_weights) > 0:
            raise ValueError(
                f"sample_weights: {len(train_set)} non-negative weights with a positive sum needed"
            )
        order = {
            "sampler": WeightedRandomSampler(sample_weights, len(train_set), replacement=True, generator=g)
        }
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        collate_fn=collate,
        drop_last=len(train_set) > cfg.batch_size,
        **order,
    )
    val_loader = DataLoader(
        val_set, batch_sampler=val_batches(len(val_set), cfg.batch_size), collate_fn=collate
    )
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    schedule = warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_frac)
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    state = {
        "epoch": 0,
        "step": 0,
        "best_val": float("inf"),
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "done": False,
    }
    resumed, best = _resume(state_dir, accelerator.unwrap_model(model), optimizer, desc, accelerator.print)
    state = resumed or state
    best = best or {k: v.clone() for k, v in trainable_state(accelerator.unwrap_model(model)).items()}

    while not state["done"] and state["epoch"] < cfg.epochs:
        epoch = state["epoch"] + 1
        torch.manual_seed(cfg.seed + 1000 * epoch + accelerator.process_index)
        train_loader.set_epoch(epoch)
        model.train()
        t0, total, count, parts = time.perf_counter(), 0.0, 0, {}
        bar = tqdm(
            train_loader,
            desc=f"{desc} epoch {epoch}/{cfg.epochs}",
            disable=not (progress and main),
            leave=False,
        )
        for batch in bar:
            with accelerator.accumulate(model):
                loss, batch_parts = _split(loss_fn(model, batch))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm
                    )
                    for group, base in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = base * schedule(state["step"])
                    state["step"] += 1
                optimizer.step()
                optimizer.zero_grad()
            total += float(loss.detach())
            count += 1
            for k, v in batch_parts.items():
                parts[k] = parts.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{total / count:.4f}")
        train_loss = float(
            accelerator.reduce(torch.tensor(total / max(count, 1), device=accelerator.device), "mean")
        )
        val_loss, val_parts = evaluate_loss(model, loss_fn, val_loader, accelerator, with_parts=True)
        improved = val_loss < state["best_val"] - 1e-6
        state.update(epoch=epoch, bad_epochs=0 if improved else state["bad_epochs"] + 1)
        if improved:
            state.update(best_val=val_loss, best_epoch=epoch)
        # the history becomes a DVC plot: no wall time in it (it goes to MLflow only)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": _mean(accelerator, v, count) for k, v in parts.items()},
            **{f"val_{k}": v for k, v in val_parts.items()},
        }
        state["history"].append(row)
        state["done"] = state["bad_epochs"] >= cfg.patience or epoch >= cfg.epochs
        weights = trainable_state(accelerator.unwrap_model(model))
        if improved:
            best = {k: v.clone() for k, v in weights.items()}
        if main:
            _write_checkpoint(state_dir, state, weights, best, optimizer)
            tracker.log_metrics(
                {**{k: v for k, v in row.items() if k != "epoch"}, "epoch_seconds": time.perf_counter() - t0},
                step=epoch,
            )
            accelerator.print(
                f"{desc} epoch {epoch}: train {train_loss:.4f} val {val_loss:.4f}"
                + (" *" if improved else "")
            )
        accelerator.wait_for_everyone()

    load_trainable(accelerator.unwrap_model(model), best)
    stopped = state["bad_epochs"] >= cfg.patience and state["epoch"] < cfg.epochs
    return FitResult(state["history"], state["best_epoch"], state["best_val"], stopped)


def _split(out) -> tuple[torch.Tensor, dict]:
    """A loss_fn result as (loss, named parts)."""
    return out if isinstance(out, tuple) else (out, {})


def _mean(accelerator, total: float, count: int) -> float:
    """Per-batch mean of a summed value, averaged over processes."""
    return float(accelerator.reduce(torch.tensor(total / max(count, 1), device=accelerator.device), "mean"))


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn, loader: DataLoader, accelerator, with_parts: bool = False):
    """Mean validation loss over batches, averaged over processes (and, with_parts, the means of its parts)."""
    model.eval()
    total, count, parts = 0.0, 0, {}
    for batch in loader:
        loss, batch_parts = _split(loss_fn(model, batch))
        total += float(loss)
        count += 1
        for k, v in batch_parts.items():
            parts[k] = parts.get(k, 0.0) + float(v)
    loss = _mean(accelerator, total, count)
    return (loss, {k: _mean(accelerator, v, count) for k, v in parts.items()}) if with_parts else loss
