"""MedGemma slice-sequence baseline (SPEC §6) on the Gemma 3 processor path, and its LoRA fine-tune.

The prompt follows MedGemma's volumetric recipe: the instruction first, then each slice as an image
preceded by its label "SLICE n" (inferior to superior), the question last. Reports are decoded as every
system's are: the `generate` settings (brain3d.models.model.Decoding), penalties on the report tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from brain3d.data.views import radiological
from brain3d.models.backbones import LanguageModel
from brain3d.models.model import Decoding


@dataclass
class SlicePrompt:
    instruction: str
    question: str
    n_slices: int  # slices taken evenly from inferior to superior (64 = every slice at 64x128x128)

    def slice_indices(self, depth: int) -> list[int]:
        n = min(self.n_slices, depth)
        return sorted({int(round(i)) for i in np.linspace(0, depth - 1, n)})

    def messages(self, volume: np.ndarray, report: str | None = None) -> list[dict]:
        """Chat messages for one volume: instruction, ("SLICE n", image) pairs, question [, answer]."""
        content: list[dict] = [{"type": "text", "text": self.instruction}]
        for n, d in enumerate(self.slice_indices(volume.shape[0]), start=1):
            image = (np.clip(radiological(volume[d]), 0, 1) * 255).astype(np.uint8)
            content += [
                {"type": "text", "text": f"SLICE {n}"},
                {"type": "image", "image": np.stack([image] * 3, -1)},
            ]
        content.append({"type": "text", "text": self.question})
        messages = [{"role": "user", "content": content}]
        if report is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": report}]})
        return messages


class SliceSequence:
    """Gemma 3 / MedGemma reading a volume as a sequence of axial slices (zero-shot or fine-tuned), decoding
    with `decoding` (the `generate` params, as every system)."""

    def __init__(self, lm: LanguageModel, processor, prompt: SlicePrompt, *, decoding: Decoding):
        if getattr(lm.full.model, "vision_tower", None) is None:
            raise ValueError("the slice baseline needs the multimodal checkpoint with its vision tower")
        self.lm, self.processor, self.prompt, self.decoding = lm, processor, prompt, decoding

    @property
    def device(self) -> torch.device:
        return next(self.lm.full.parameters()).device

    def encode(self, volumes: list[np.ndarray], reports: list[str] | None = None) -> dict:
        messages = [self.prompt.messages(v, r) for v, r in zip(volumes, reports or [None] * len(volumes))]
        self.processor.tokenizer.padding_side = "left" if reports is None else "right"
        return self.processor.apply_chat_template(
            messages,
            add_generation_prompt=reports is None,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
        )

    @torch.no_grad()
    def predict(
        self, volumes: list[np.ndarray], *, batch_size: int, seed: int, progress: bool = True
    ) -> list[str]:
        """Reports in batches (left padding), each batch seeded seed + its index as Brain3D's generation is."""
        self.lm.full.eval()
        out: list[str] = []
        tok = self.processor.tokenizer
        stop = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
        for b, start in enumerate(
            tqdm(range(0, len(volumes), batch_size), desc="slices", disable=not progress)
        ):
            enc = self.encode(volumes[start : start + batch_size]).to(self.device)
            torch.manual_seed(seed + b)
            ids = self.lm.full.generate(
                **enc,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stop,
                **self.decoding.kwargs(tok, prompt_length=enc["input_ids"].shape[1]),
            )
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(
                t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            )
        return out

    def loss(self, volumes: list[np.ndarray], reports: list[str]) -> torch.Tensor:
        """Next-token CE on the answer (report) tokens only; the prompt, slices and padding are masked."""
        enc = self.encode(volumes, reports).to(self.device)
        labels = enc["input_ids"].clone()
        header = self.processor.tokenizer("<start_of_turn>model\n", add_special_tokens=False)["input_ids"]
        starts = [_answer_start(row, header) for row in enc["input_ids"]]
        if None in starts:  # the tokenizer merged the turn header into the answer: count the prompt instead
            prompt_only = self.encode(
                volumes
            )  # same prefix with the generation prompt (images processed again)
            starts = [int(mask.sum()) for mask in prompt_only["attention_mask"]]
        for i, start in enumerate(starts):
            labels[i, :start] = -100
        labels[enc["attention_mask"] == 0] = -100
        return self.lm.full(**enc, labels=labels).loss


def _answer_start(ids: torch.Tensor, header: list[int]) -> int | None:
    """Position of the first answer token of one (right-padded) row: just after its last `header` (the ids of
    "<start_of_turn>model\\n", the generation prompt), found in the ids so that the 64 slices are not processed
    a second time; None where those ids are not the header's own tokenization."""
    turns = (ids == header[0]).nonzero()
    if len(turns) == 0:
        return None
    start = int(turns[-1])
    return start + len(header) if ids[start : start + len(header)].tolist() == header else None


class _VolumeReports(Dataset):
    def __init__(self, volumes: list[np.ndarray], reports: list[str]):
        self.volumes, self.reports = volumes, reports

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, i: int):
        return self.volumes[i], self.reports[i]


def collate_volume_reports(items):
    volumes, reports = zip(*items)
    return list(volumes), list(reports)


def load_processor(path: str | Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


class _SliceLoss(torch.nn.Module):
    """nn.Module face of a SliceSequence for the training loop (train/eval mode reach the LM)."""

    def __init__(self, seq: SliceSequence):
        super().__init__()
        self.full = seq.lm.full
        self.seq = seq

    def forward(self, volumes: list[np.ndarray], reports: list[str]) -> torch.Tensor:
        return self.seq.loss(volumes, reports)


def finetune(
    seq: SliceSequence,
    train: tuple[list, list[str]],
    val: tuple[list, list[str]],
    *,
    lora_rank: int,
    lora_alpha: int,
    lora_dropout: float,
    lr_projector: float,
    lr_lora: float,
    normal_weight: float,
    bilateral_weight: float,
    cfg,
    state_dir: Path,
    tracker=None,
):
    """LoRA on the language model's q/k/v/o + the multimodal projector (the slice-model counterpart of
    phase 2B's LoRA + projector), masked CE on the report, normal and bilateral reports drawn as in phase 2B.
    Returns (peft model, FitResult)."""

    from brain3d.training.loop import fit
    from brain3d.training.phases import draw_weights

    peft_model = seq.lm.add_lora(lora_rank, lora_alpha, lora_dropout)
    projector = seq.lm.full.model.multi_modal_projector
    for p in projector.parameters():
        p.requires_grad_(True)
    lora = [p for n, p in seq.lm.full.named_parameters() if "lora_" in n]
    groups = [{"params": list(projector.parameters()), "lr": lr_projector}, {"params": lora, "lr": lr_lora}]
    result = fit(
        _SliceLoss(seq),
        groups,
        lambda m, b: m(*b),
        _VolumeReports(*train),
        _VolumeReports(*val),
        collate_volume_reports,
        cfg,
        state_dir=state_dir,
        tracker=tracker,
        desc="slices_ft",
        sample_weights=draw_weights(train[1], normal_weight, bilateral_weight),
    )
    return peft_model, result
