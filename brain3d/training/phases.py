"""The staged training of SPEC §5.

phase 1  contrastive grounding: volume encoder (+ projection head) against frozen LM text embeddings
         (last hidden state mean-pooled over the report tokens), symmetric InfoNCE; with
         `phase1.findings_weight` > 0 also findings-grounded: a findings head over the K visual tokens predicts
         what the report asserts (presence, side, anatomy, pathology; `brain3d.data.findings`).
phase 2A projector warm-up: projector + vis_scale, masked next-token CE on the report tokens.
phase 2B linguistic LoRA: projector + LoRA on the LM's q/k/v/o (language model only), same loss.
The encoder is frozen in phase 2, so its K tokens per volume are computed once and cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from brain3d import fileio, runtime
from brain3d.data.findings import ANATOMY, PATHOLOGY, SIDES, UNDEFINED_SIDE, findings_targets, mirror_side
from brain3d.data.reports import swap_laterality
from brain3d.data.split import SplitSubjects
from brain3d.data.views import mirror
from brain3d.models.backbones import LanguageModel
from brain3d.models.findings_head import FindingsHead
from brain3d.models.model import Brain3D, VisualTokenizer
from brain3d.training.loop import FitResult, TrainConfig, fit
from brain3d.training.losses import InfoNCE


# ----------------------------------------------------------------------------- phase 1
class ContrastiveModel(nn.Module):
    """Visual tokenizer + projection head: volume -> image embedding in the LM's hidden space, and with
    `findings` a findings head over the same tokens; with `cells` also a per-token lesion probe (one logit per
    token: is there lesion in its region), a phase-1 training aid that is not saved."""

    def __init__(self, visual: VisualTokenizer, text_dim: int, findings: bool = False, cells: bool = False):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(visual.width, text_dim)
        self.findings = FindingsHead(visual.compressor.n_tokens, visual.width) if findings else None
        self.cells = nn.Sequential(nn.LayerNorm(visual.width), nn.Linear(visual.width, 1)) if cells else None

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """(B, E) image embedding, and the findings logits (None without a findings head; "cells": (B, K))."""
        tokens = self.visual(volume)  # (B, K, Cv)
        embedding = self.head(tokens.mean(dim=1))  # (B, E)
        if self.findings is None:
            return embedding, None
        logits = self.findings(tokens)
        if self.cells is not None:
            logits["cells"] = self.cells(tokens)[..., 0]
        return embedding, logits


def findings_tensors(reports: list[str]) -> dict[str, torch.Tensor]:
    """Stacked findings targets of reports: presence (N,), side (N,) long, anatomy (N, 7), pathology (N, 7)."""
    rows = [findings_targets(r) for r in reports]

    def multi_hot(field: str, n: int) -> torch.Tensor:
        return torch.tensor([getattr(f, field) for f in rows], dtype=torch.float32).reshape(len(rows), n)

    return {
        "presence": torch.tensor([float(f.presence) for f in rows]),
        "side": torch.tensor([f.side for f in rows], dtype=torch.long),
        "anatomy": multi_hot("anatomy", len(ANATOMY)),
        "pathology": multi_hot("pathology", len(PATHOLOGY)),
    }


def findings_loss(
    logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], side_weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-term findings losses: CE over side (undefined side masked out; 0 when a batch has none; each class
    weighted by `side_weight` when given, a weighted mean), BCE over presence, anatomy and pathology (means over
    the batch; anatomy and pathology over the rows whose `targets["paired"]` is 1 when that key is given: the
    corpus rows of phase 1 have no report to read them from)."""
    side_ok = targets["side"] != UNDEFINED_SIDE
    if side_weight is None:
        side_weight = torch.ones(logits["side"].shape[1], device=logits["side"].device)
    side = F.cross_entropy(
        logits["side"], targets["side"], weight=side_weight, ignore_index=UNDEFINED_SIDE, reduction="sum"
    )
    reported = targets.get("paired", torch.ones_like(targets["presence"])).bool()  # rows with a report
    return {
        "side": side / side_weight[targets["side"][side_ok]].sum().clamp(min=1e-8),
        "presence": F.binary_cross_entropy_with_logits(logits["presence"][:, 0], targets["presence"]),
        "anatomy": _masked_bce(logits["anatomy"], targets["anatomy"], reported),
        "pathology": _masked_bce(logits["pathology"], targets["pathology"], reported),
    }


def _masked_bce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """BCE over the rows selected by `rows` (0 when none is)."""
    if not rows.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[rows], targets[rows])


@torch.no_grad()
def text_embeddings(lm: LanguageModel, reports: list[str], batch_size: int = 16) -> torch.Tensor:
    """(N, hidden) frozen-LM embedding of each report: last hidden state mean-pooled over its tokens."""
    tok, decoder = lm.tokenizer, lm.causal.model
    device = next(decoder.parameters()).device
    out = []
    for start in range(0, len(reports), batch_size):
        ids = [
            [tok.bos_token_id] + tok(r, add_special_tokens=False)["input_ids"]
            for r in reports[start : start + batch_size]
        ]
        longest = max(map(len, ids))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        x = torch.tensor([i + [pad] * (longest - len(i)) for i in ids], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (longest - len(i)) for i in ids], device=device)
        hidden = decoder(input_ids=x, attention_mask=mask).last_hidden_state.float()
        report_mask = mask.clone()
        report_mask[:, 0] = 0  # BOS is not a report token
        out.append((hidden * report_mask[..., None]).sum(1) / report_mask.sum(1, keepdim=True).clamp(min=1))
    return torch.cat(out).cpu()


class _Phase1Data(Dataset):
    """(volume, text embedding) pairs, plus the report's findings targets when `findings` is given. A flipped
    sample (`flip_text`, p = 0.5) is the mirrored volume with the side-swapped report: its text embedding and
    its side target (left <-> right) swap with the image; anatomy and pathology stay."""

    def __init__(
        self,
        split: SplitSubjects,
        text: torch.Tensor,
        flip_text: torch.Tensor | None,
        findings: dict[str, torch.Tensor] | None = None,
        n_cells: int = 0,
    ):
        self.text, self.flip_text, self.findings = text, flip_text, findings
        self.blank = {"cells": torch.zeros(n_cells), "celled": torch.tensor(0.0)} if n_cells else {}
        self.volumes = [torch.from_numpy(v) for v in split.volumes()]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int):
        volume, text = self.volumes[i], self.text[i]
        flipped = self.flip_text is not None and bool(torch.rand(()) < 0.5)
        if flipped:
            volume, text = mirror(volume), self.flip_text[i]
        if self.findings is None:
            return volume[None], text
        targets = {k: v[i] for k, v in self.findings.items()} | {"paired": torch.tensor(1.0), **self.blank}
        if flipped:
            targets["side"] = torch.tensor(mirror_side(int(targets["side"])))
        return volume[None], text, targets


class _CorpusFindings(Dataset):
    """Phase 1's report-less rows: corpus volumes with presence and side from their ground truth (`sides`:
    indices into SIDES), a zero text embedding and `paired` 0, so that InfoNCE, anatomy and pathology leave
    them out. Mirrored (p = 0.5, with the side swapped) when `flip` is set, as the paired rows are. `cells`
    (as is, mirrored: (N, K) each) adds each token's lesion share (VisualTokenizer.cell_fractions) as targets."""

    def __init__(
        self,
        volumes: list,
        sides: list[int],
        width: int,
        flip: bool,
        cells: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self.volumes, self.sides, self.flip, self.cells = volumes, sides, flip, cells
        self.text = torch.zeros(width)
        self.blank = {
            "anatomy": torch.zeros(len(ANATOMY)),
            "pathology": torch.zeros(len(PATHOLOGY)),
            "paired": torch.tensor(0.0),
        }

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int):
        # a copy: the corpus volumes are read-only memory maps
        volume, side = torch.from_numpy(np.array(self.volumes[i], dtype=np.float32)), self.sides[i]
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        if flipped:
            volume, side = mirror(volume), mirror_side(side)
        presence = torch.tensor(float(side != SIDES.index("none")))
        targets = {"presence": presence, "side": torch.tensor(side), **self.blank}
        if self.cells is not None:
            targets |= {"cells": self.cells[int(flipped)][i], "celled": torch.tensor(1.0)}
        return volume[None], self.text, targets


def _collate_phase1(items):
    volumes, texts, *targets = zip(*items)
    batch = (torch.stack(volumes), torch.stack(texts))
    if targets:
        batch += ({k: torch.stack([t[k] for t in targets[0]]) for k in targets[0][0]},)
    return batch


def balanced_side_weights(side: torch.Tensor) -> torch.Tensor:
    """Per-class weights of the side CE that give each side class present in `side` (train targets) the same
    total weight: n / (classes present x count); absent classes 0."""
    counts = torch.bincount(side[side != UNDEFINED_SIDE], minlength=len(SIDES)).float()
    present = counts > 0
    weights = torch.zeros(len(SIDES))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


CELL_FULL = 0.01  # a token whose region is at least 1% lesion has target 1; below, its share / CELL_FULL


def cells_loss(logits: torch.Tensor, share: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """BCE of the per-token lesion logits (B, K) against min(1, lesion share / CELL_FULL), over `rows`."""
    return _masked_bce(logits, (share / CELL_FULL).clamp(max=1.0), rows)


def phase1_loss(
    infonce: InfoNCE,
    findings_weight: float,
    side_weight: torch.Tensor | None = None,
    cell_weight: float = 0.0,
):
    """The phase-1 loss_fn: InfoNCE, plus findings_weight x (side CE + presence, anatomy, pathology BCE
    + cell_weight x the per-token lesion BCE on the rows that have those targets) with each term returned as a
    named part (logged per epoch, train_/val_<term>). The total is what early stopping reads on the validation
    split. With weight 0 it is plain InfoNCE (a single tensor, as the paper's)."""

    def loss_fn(m, batch):
        if findings_weight == 0:
            volume, text = batch
            return infonce(m(volume)[0], text)
        volume, text, targets = batch
        image, logits = m(volume)
        paired = targets.get("paired", torch.ones(len(text))).bool()  # corpus rows have no report to contrast
        if paired.all():
            contrastive = infonce(image, text)
        else:
            contrastive = infonce(image[paired], text[paired]) if paired.sum() > 1 else image.sum() * 0.0
        terms = findings_loss(logits, targets, side_weight)
        if "celled" in targets:
            terms["cells"] = cell_weight * cells_loss(
                logits["cells"], targets["cells"], targets["celled"].bool()
            )
        total = contrastive + findings_weight * sum(terms.values())
        parts = {"infonce": contrastive.detach(), **{f"findings_{k}": v.detach() for k, v in terms.items()}}
        return total, parts

    return loss_fn


def train_phase1(
    visual: VisualTokenizer,
    lm: LanguageModel,
    train: SplitSubjects,
    val: SplitSubjects,
    cfg: TrainConfig,
    *,
    temperature: float,
    laterality_flip: bool,
    findings_weight: float,
    side_balance: bool = False,
    corpus: tuple[list, list[int]] | None = None,
    corpus_segs: list | None = None,
    cell_weight: float = 0.0,
    bilateral_weight: float = 1.0,
    state_dir: Path,
    tracker=None,
) -> tuple[ContrastiveModel, FitResult]:
    """Contrastive (and, with findings_weight > 0, findings-grounded) training of the visual tokenizer; the LM
    stays frozen (its text embeddings are cached). `side_balance` weighs the findings head's side classes by
    their inverse train frequency (bilateral reports are rare). `corpus` (volumes, side indices) adds report-less
    rows to the training set that teach the findings head presence and side only (`_CorpusFindings`); with
    `cell_weight` > 0 their segmentations (`corpus_segs`) also teach each token whether its region holds lesion
    (`cells_loss`). `bilateral_weight` > 1 draws a row whose side is bilateral (report or corpus truth) that
    much more often."""
    if bilateral_weight <= 0 or cell_weight < 0:
        raise ValueError(
            f"phase1: bilateral_weight must be > 0 and cell_weight >= 0 ({bilateral_weight}, {cell_weight})"
        )
    if (bilateral_weight != 1 or cell_weight) and not findings_weight:
        raise ValueError("phase1.bilateral_weight and cell_weight need phase1.findings_weight > 0")
    with_cells = bool(cell_weight) and corpus is not None and bool(corpus[0])
    if cfg.batch_size < 2:
        raise ValueError("phase1.batch_size must be >= 2: InfoNCE over one sample is identically zero")
    if findings_weight < 0:
        raise ValueError(f"phase1.findings_weight must be >= 0, got {findings_weight}")
    lm.full.to(runtime.device())
    data = {}
    for name, split in (("train", train), ("val", val)):
        text = text_embeddings(lm, split.reports)
        flipped = (
            text_embeddings(lm, [swap_laterality(r) for r in split.reports]) if laterality_flip else None
        )
        targets = findings_tensors(split.reports) if findings_weight > 0 else None
        n_cells = visual.compressor.n_tokens if with_cells and name == "train" else 0
        data[name] = _Phase1Data(split, text, flipped if name == "train" else None, targets, n_cells)
    model = ContrastiveModel(visual, lm.hidden_size, findings=findings_weight > 0, cells=with_cells)
    side_weight = (
        balanced_side_weights(data["train"].findings["side"]) if side_balance and findings_weight else None
    )
    loss_fn = phase1_loss(InfoNCE(temperature), findings_weight, side_weight, cell_weight)
    sides = data["train"].findings["side"].tolist() if findings_weight > 0 else []
    if corpus is not None and corpus[0]:
        if findings_weight == 0:
            raise ValueError(
                "phase1.corpus_findings needs phase1.findings_weight > 0: its rows carry findings only"
            )
        cells = None
        if with_cells:
            masks = torch.from_numpy(np.stack([np.asarray(s) > 0 for s in corpus_segs]))
            cells = (visual.cell_fractions(masks), visual.cell_fractions(mirror(masks)))
        extra = _CorpusFindings(*corpus, width=data["train"].text.shape[1], flip=laterality_flip, cells=cells)
        data["train"] = ConcatDataset([data["train"], extra])
        sides += list(corpus[1])
    bilateral = SIDES.index("bilateral")
    sample_weights = (
        [bilateral_weight if s == bilateral else 1.0 for s in sides] if bilateral_weight != 1 else None
    )

    params = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    result = fit(
        model,
        params,
        loss_fn,
        data["train"],
        data["val"],
        _collate_phase1,
        cfg,
        state_dir=state_dir,
        tracker=tracker,
        desc="phase1",
        sample_weights=sample_weights,
    )
    return model, result


def refit_side(
    head: FindingsHead,
    visual: VisualTokenizer,
    volumes: list,
    sides: list[int],
    *,
    epochs: int,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """Refit the side read-out of a trained findings head on the frozen tokens of `volumes` and of their mirror
    images, with side targets `sides` (indices into SIDES; UNDEFINED_SIDE left out; mirrored: mirror_side).
    Only the side rows of the head's linear layer move (AdamW, weight decay .01, seeded shuffled batches of 64);
    presence, anatomy, pathology and the token norm stay as phase 1 left them. Phase 1 trains the head on the
    train split's reports, about 20 of them bilateral; the refit reads the same tokens of more subjects
    (`phase1.side_refit_epochs`). Returns its per-class accuracy on its own data."""
    targets = torch.tensor(list(sides) + [mirror_side(s) for s in sides], dtype=torch.long)
    rows = slice(FindingsHead.SIZES["presence"], FindingsHead.SIZES["presence"] + len(SIDES))
    weight = head.linear.weight[rows].detach().clone().requires_grad_(True)
    bias = head.linear.bias[rows].detach().clone().requires_grad_(True)
    with torch.no_grad():
        tokens = torch.cat([visual.encode(volumes), visual.encode(volumes, flip=True)])
        normed = head.norm(tokens.to(weight.device, weight.dtype)).flatten(1)  # the norm is not refit
    keep = targets != UNDEFINED_SIDE
    x, y = normed[keep], targets[keep].to(weight.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            loss = F.cross_entropy(F.linear(x[batch], weight, bias), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        head.linear.weight[rows] = weight
        head.linear.bias[rows] = bias
        predicted = F.linear(x, weight, bias).argmax(1)
    return {
        f"side_refit_acc_{side}": float((predicted[y == i] == i).float().mean())
        for i, side in enumerate(SIDES)
        if (y == i).any()
    }


# ----------------------------------------------------------------------------- phase 2
class _Phase2Data(Dataset):
    def __init__(self, tokens: torch.Tensor, reports: list[str], flipped: torch.Tensor | None = None):
        self.tokens, self.reports, self.flipped = tokens, reports, flipped

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, i: int):
        if self.flipped is not None and torch.rand(()) < 0.5:
            return self.flipped[i], swap_laterality(self.reports[i])
        return self.tokens[i], self.reports[i]


def _collate_phase2(items):
    tokens, reports = zip(*items)
    return torch.stack(tokens), list(reports)


def draw_weights(
    reports: list[str], normal_weight: float, bilateral_weight: float = 1.0
) -> list[float] | None:
    """Per-report sampling weights, read from the report text by the negation-aware extractor: `normal_weight`
    for a report that asserts no finding, `bilateral_weight` for one whose finding is bilateral, 1 for the
    others; None (uniform shuffling, the paper's) when both are 1."""
    for name, w in (("normal_weight", normal_weight), ("bilateral_weight", bilateral_weight)):
        if w <= 0:
            raise ValueError(f"{name} must be > 0, got {w}")
    if normal_weight == bilateral_weight == 1:
        return None
    bilateral = SIDES.index("bilateral")
    weights = []
    for report in reports:
        found = findings_targets(report)
        if not found.presence:
            weights.append(float(normal_weight))
        else:
            weights.append(float(bilateral_weight) if found.side == bilateral else 1.0)
    return weights


def train_phase2(
    model: Brain3D,
    train_tokens: torch.Tensor,
    train_reports: list[str],
    val_tokens: torch.Tensor,
    val_reports: list[str],
    cfg: TrainConfig,
    param_groups: list[dict],
    *,
    state_dir: Path,
    normal_weight: float,
    bilateral_weight: float = 1.0,
    flipped_train_tokens: torch.Tensor | None = None,
    tracker=None,
    desc: str = "phase2",
) -> FitResult:
    """Masked next-token CE over cached visual tokens; `param_groups` says what trains (2A vs 2B); reports
    with no finding are drawn `normal_weight` times, bilateral ones `bilateral_weight` times as often as the
    others (draw_weights)."""
    train_set = _Phase2Data(train_tokens, train_reports, flipped_train_tokens)
    val_set = _Phase2Data(val_tokens, val_reports)
    return fit(
        model,
        param_groups,
        lambda m, b: m(*b),
        train_set,
        val_set,
        _collate_phase2,
        cfg,
        state_dir=state_dir,
        tracker=tracker,
        desc=desc,
        sample_weights=draw_weights(train_reports, normal_weight, bilateral_weight),
    )


# ----------------------------------------------------------------------------- stage helpers
def run_key(sections: dict, files: list[str | Path]) -> str:
    """Fingerprint of a training run: its params and the content of its input files (resume key)."""
    return fileio.fingerprint({"params": sections, "files": {str(f): fileio.sha256_file(f) for f in files}})


def write_training_record(
    name: str, result: FitResult, curves_dir: Path, summary_dir: Path, tracker=None
) -> dict:
    """Per-epoch curve CSV (a DVC plot) and a summary JSON (DVC metrics) of one training."""
    summary = {
        "best_val_loss": result.best_val,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
    }
    fileio.write_csv(curves_dir / f"{name}.csv", pd.DataFrame(result.history))
    fileio.write_json(summary_dir / f"{name}.json", summary)
    if tracker is not None:
        tracker.log_metrics({k: float(v) for k, v in summary.items()})
        tracker.log_artifact(curves_dir / f"{name}.csv")
    return summary
