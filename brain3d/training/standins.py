"""Trainers of the demo stand-in backbones (brain3d/models/foundation.py builds and saves them): the SigLIP
image-text model on 2D axial slices with slice-level captions (the TRAIN split plus the pretraining corpus,
brain3d/data/corpus.py), and the Gemma 3 language model on the training reports, its vision tower copied from
the SigLIP stand-in (as MedGemma's is MedSigLIP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from brain3d.data.views import radiological
from brain3d.models.encoder import normalise_pixels
from brain3d.models.foundation import build_gemma3, build_siglip
from brain3d.training.loop import FitResult, TrainConfig, fit


def slice_captions(
    volume: np.ndarray, seg: np.ndarray | None, min_brain: float = 0.05
) -> list[tuple[int, str]]:
    """(slice index, caption) for the axial slices that contain brain. A caption says whether the slice shows a
    lesion and on which side (project convention: W index < W/2 is the subject's left). Lesion slices are a
    minority of a volume, so "no lesion" slices are thinned to as many as there are lesion slices (evenly
    spaced, deterministic): a balanced task that a small ViT learns in a few CPU minutes."""
    _, _, w = volume.shape
    lesion, clear = [], []
    for d in range(volume.shape[0]):
        if (volume[d] > 0).mean() < min_brain:
            continue
        cols = np.nonzero(seg[d] > 0)[1] if seg is not None else np.zeros(0)
        if cols.size < 3:
            clear.append((d, "axial FLAIR slice, no lesion"))
            continue
        left = (cols < w / 2).mean()
        side = (
            "both hemispheres"
            if min(left, 1 - left) > 0.25
            else f"the {'left' if left > 0.5 else 'right'} hemisphere"
        )
        lesion.append((d, f"axial FLAIR slice, lesion in {side}"))
    keep = max(len(lesion), 1)
    if len(clear) > keep:
        clear = [clear[i] for i in np.linspace(0, len(clear) - 1, keep).round().astype(int)]
    return sorted(lesion + clear)


class _SliceData(Dataset):
    def __init__(self, images: list[np.ndarray], captions: list[str], tokenizer, max_length: int):
        self.images = images
        enc = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True)
        self.ids = torch.tensor(enc["input_ids"])
        ids_of = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        self.groups = torch.tensor([ids_of[c] for c in captions])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i])[None].expand(3, -1, -1)  # grey -> RGB, [0, 1]
        return normalise_pixels(image), self.ids[i], self.groups[i]


def _collate_slices(items):
    images, ids, groups = zip(*items)
    return torch.stack(images), torch.stack(ids), torch.stack(groups)


def caption_loss(model: nn.Module, batch) -> torch.Tensor:
    """Image-to-caption cross-entropy over the DISTINCT captions of the batch (UniCL-style contrastive loss):
    slices sharing a caption are not pushed apart as SigLIP's pairwise loss would need many epochs to learn."""
    images, ids, groups = batch
    distinct, target = torch.unique(groups, return_inverse=True)
    first = torch.stack([(groups == g).nonzero()[0, 0] for g in distinct])
    image = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(input_ids=ids[first]).pooler_output, dim=-1)
    logits = image @ text.T * model.logit_scale.exp()
    return F.cross_entropy(logits, target)


def train_siglip(
    volumes: dict[str, list], tokenizer, arch: dict, cfg: TrainConfig, state_dir: Path, tracker=None
) -> tuple[nn.Module, FitResult]:
    """`volumes[split]` = [(volume, seg or None), ...]; returns the trained SiglipModel."""
    text_len = arch.get("text_max_length", 32)
    model = build_siglip(tokenizer, arch, image_size=volumes["train"][0][0].shape[-1])
    data = {}
    for split, items in volumes.items():
        images, captions = [], []
        for volume, seg in items:
            for d, caption in slice_captions(volume, seg):
                images.append(radiological(volume[d]).astype(np.float32))
                captions.append(caption)
        data[split] = _SliceData(images, captions, tokenizer, text_len)
    params = [{"params": list(model.parameters()), "lr": cfg.lr}]
    result = fit(
        model,
        params,
        caption_loss,
        data["train"],
        data["val"],
        _collate_slices,
        cfg,
        state_dir=state_dir,
        tracker=tracker,
        desc="siglip",
    )
    return model, result


# ----------------------------------------------------------------------------- Gemma 3
class _ReportData(Dataset):
    def __init__(self, reports: list[str]):
        self.reports = reports

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, i: int) -> str:
        return self.reports[i]


def train_gemma3(
    siglip: nn.Module,
    tokenizer,
    reports: dict[str, list[str]],
    arch: dict,
    cfg: TrainConfig,
    state_dir: Path,
    tracker=None,
) -> tuple[nn.Module, FitResult]:
    """Gemma 3 stand-in: vision tower from the SigLIP stand-in, language model pretrained on reports."""
    from transformers import AutoModelForCausalLM

    model = build_gemma3(tokenizer, siglip.config.vision_config.to_dict(), arch)
    model.model.vision_tower.load_state_dict(siglip.vision_model.state_dict())
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(model.config.text_config)
    causal.model, causal.lm_head = model.model.language_model, model.lm_head

    def collate(texts):
        enc = tokenizer(
            [tokenizer.bos_token + t + tokenizer.eos_token for t in texts],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return enc["input_ids"], enc["attention_mask"], labels

    def loss_fn(m, batch):
        ids, mask, labels = batch
        return m(input_ids=ids, attention_mask=mask, labels=labels).loss

    params = [{"params": list(causal.parameters()), "lr": cfg.lr}]
    result = fit(
        causal,
        params,
        loss_fn,
        _ReportData(reports["train"]),
        _ReportData(reports["val"]),
        collate,
        cfg,
        state_dir=state_dir,
        tracker=tracker,
        desc="gemma3",
    )
    return model, result
