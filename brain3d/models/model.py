"""The Brain3D wrapper: volume -> K visual tokens -> projector -> soft prompt of the Gemma 3 LM.

Sequence (SPEC §4): [K visual][BOS + prompt][report][EOS]; labels are -100 on visual, prompt and padding
tokens. Every sample has the same prefix length (K + prompt), so generation batches need no padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from brain3d import config, fileio
from brain3d.cache import cache_dir
from brain3d.data.views import mirror, radiological
from brain3d.models import checkpoint, release
from brain3d.models.backbones import LanguageModel, load_vision_model, record_language_model, torch_dtype
from brain3d.models.compressor import PerceiverResampler, build_compressor
from brain3d.models.encoder import VolumeEncoder, check_variant
from brain3d.models.findings_head import FindingsHead
from brain3d.models.projector import Projector
from brain3d.models.side_cnn import LateralityCNN, predict

if TYPE_CHECKING:
    from brain3d.data.split import SplitSubjects

#: Findings-consistent decoding draws a row's further candidates this many at a time, in one batched call (on
#: 2 CPU cores a call's cost is mostly its sequential decoding steps, not its rows).
CANDIDATES_PER_CALL = 4


@dataclass
class ModelConfig:
    """The `model` params section plus the volume shape (from `preprocess.shape`); no defaults: params.yaml
    holds the values."""

    volume_shape: tuple[int, int, int]
    kd: int
    depth_stride: int
    depth_pad: int
    inflation: str  # mean (the paper's) | sum | center: brain3d/models/encoder.py
    compressor: str
    n_tokens: int
    grid: tuple[int, int, int]
    prompt: str
    # paper (this project's) | reference (the authors' released model's inference): brain3d/models/encoder.py
    variant: str

    @classmethod
    def from_params(cls, cfg: dict) -> ModelConfig:
        m = cfg["model"]
        return config.from_section(
            cls, {**m, "volume_shape": tuple(cfg["preprocess"]["shape"]), "grid": tuple(m["grid"])}
        )


@dataclass
class Decoding:
    """Decoding settings: the `generate` params section (SPEC §4: nucleus sampling, repetition penalty,
    no-repeat n-grams, a length range); no defaults for what params.yaml holds.

    `repetition_exempt` lists words the repetition penalty spares (every vocabulary entry that decodes to one of
    them, any case or spacing). The paper's penalty (exempt: []) divides the score of "left" once a report has
    said "left", so a later sentence about the same lesion ("compression of the left lateral ventricle") tips to
    the other side; a report must be free to repeat its side.
    """

    temperature: float
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    max_new_tokens: int
    min_new_tokens: int
    repetition_exempt: tuple[str, ...]
    select: str  # plain (the paper's) | findings: findings-consistent decoding (Brain3D.generate)
    guide: str  # findings: what a report must agree with: head (the token read-out) | detector (the side CNN)
    candidates: int  # findings: at most this many further samples of a report that disagrees with the head
    candidate_temperature: float  # findings: the sampling temperature of those candidates
    do_sample: bool = True
    extra: dict = field(default_factory=dict)

    def candidate(self) -> Decoding:
        """The settings a findings-consistent decoder samples its further candidates with."""
        return replace(self, temperature=self.candidate_temperature, do_sample=True)

    def kwargs(self, tokenizer=None, prompt_length: int = 0) -> dict:
        """`generate()` keyword arguments. The repetition penalty runs as an ExemptRepetitionPenalty over the
        generated tokens only (the first `prompt_length` ids are the prompt: a chat prompt that names "lesion"
        must not make the report avoid it), sparing `repetition_exempt` (which needs the `tokenizer`)."""
        out = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            do_sample=self.do_sample,
            **self.extra,
        )
        if self.repetition_penalty != 1.0:
            if self.repetition_exempt and tokenizer is None:
                raise ValueError("Decoding.repetition_exempt needs the tokenizer")
            exempt = word_token_ids(tokenizer, self.repetition_exempt) if self.repetition_exempt else []
            penalty = ExemptRepetitionPenalty(self.repetition_penalty, exempt, prompt_length)
            out["logits_processor"] = LogitsProcessorList([*out.get("logits_processor", []), penalty])
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out


def word_token_ids(tokenizer, words) -> list[int]:
    """Ids of the vocabulary entries that decode to one of `words` (case-insensitive, surrounding spaces and
    SentencePiece/BPE space marks ignored): "left", " left", "Left ", ..."""
    wanted = {w.lower() for w in words}
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, t in enumerate(texts) if t.strip().lower() in wanted]


class ExemptRepetitionPenalty(LogitsProcessor):
    """The CTRL repetition penalty of transformers' RepetitionPenaltyLogitsProcessor (a generated token's score
    is divided by `penalty` if positive, multiplied if negative, once per token), sparing the `exempt` ids and
    the first `prompt_length` positions of the input ids (the prompt)."""

    def __init__(self, penalty: float, exempt: list[int], prompt_length: int = 0):
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty, self.exempt = penalty, torch.tensor(sorted(exempt), dtype=torch.long)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids[:, self.prompt_length :]
        if input_ids.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, input_ids)
        penalised = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        spared = torch.isin(input_ids, self.exempt.to(input_ids.device))
        return scores.scatter(1, input_ids, torch.where(spared, seen, penalised))


class VisualTokenizer(nn.Module):
    """Encoder + compressor: (B, 1, D, H, W) -> (B, K, Cv). Frozen after phase 1, so phase 2 reads its tokens
    from a cache (`cached_encode`)."""

    def __init__(self, vision: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.encoder = VolumeEncoder(
            vision,
            cfg.volume_shape,
            kd=cfg.kd,
            depth_stride=cfg.depth_stride,
            depth_pad=cfg.depth_pad,
            inflation=cfg.inflation,
            variant=cfg.variant,
        )
        self.compressor = build_compressor(
            cfg.compressor, n_tokens=cfg.n_tokens, grid=cfg.grid, width=self.encoder.hidden_size
        )

    @property
    def width(self) -> int:
        return self.encoder.hidden_size

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.compressor(self.encoder(volume), self.encoder.grid)

    @torch.no_grad()
    def cell_fractions(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, K) share of each visual token's region that `masks` (B, D, H, W; 1 = lesion) covers: the masks
        seen as the encoder sees the volume, averaged over each patch of the token grid, then pooled as the
        compressor pools the tokens. Defined for the pooling compressors only: a perceiver's token is no region."""
        if isinstance(self.compressor, PerceiverResampler):
            raise ValueError(
                "per-token lesion targets need model.compressor grid_pool or seq_pool, not perceiver"
            )
        x = masks.float()[:, None]
        if self.encoder.variant == "paper":
            x = radiological(x)
        patches = F.adaptive_avg_pool3d(x, self.encoder.grid)  # (B, 1, D', h, w)
        return self.compressor(patches.flatten(2).transpose(1, 2), self.encoder.grid)[..., 0]

    @torch.no_grad()
    def encode(self, volumes: list[np.ndarray], batch_size: int = 4, flip: bool = False) -> torch.Tensor:
        """(N, K, Cv) float32 tokens of preprocessed (D, H, W) volumes (mirrored with `flip`), on the CPU."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(volumes), batch_size):
            x = torch.from_numpy(np.stack(volumes[start : start + batch_size]))[:, None].to(device)
            out.append(self(mirror(x) if flip else x).float().cpu())
        return torch.cat(out)

    def cached_encode(self, split: SplitSubjects, key: str, flip: bool = False) -> torch.Tensor:
        """`encode` of a split's volumes, computed once per (encoder `key`, subjects, flip) and cached on disk;
        `key` must identify these weights (the phase-2 stages key on phase 1's weights file)."""
        from safetensors.torch import load_file

        path = cache_dir("tokens", key) / f"{fileio.fingerprint([split.subjects, flip])}.safetensors"
        if path.exists():
            return load_file(str(path))["tokens"]
        tokens = self.encode(split.volumes(), flip=flip)
        fileio.save_safetensors(path, {"tokens": tokens})
        return tokens


def load_backbones(
    bb: dict, model_cfg: ModelConfig, *, visual_weights: str | Path | None = None
) -> tuple[VisualTokenizer, LanguageModel]:
    """The visual tokenizer (with `visual_weights`, e.g. phase 1's; else as inflated from the 2D model) and
    the frozen LM of a backbones record."""
    from safetensors.torch import load_file

    vision = load_vision_model(bb["vision"], dtype=torch_dtype(bb.get("dtype", "float32")))
    visual = VisualTokenizer(vision, model_cfg)
    if visual_weights is not None:
        visual.load_state_dict(load_file(str(visual_weights)))
    return visual, record_language_model(bb)


class Brain3D(nn.Module):
    """Projector + LM over (cached) visual tokens; `visual` (the VisualTokenizer) is optional.

    `lm` is the LM's causal view (a registered module, so .to()/.train()/.eval() reach it and its LoRA
    layers); `language_model` is the backbone record it came from (tokenizer, checkpoint class).
    Saved and loaded as one directory: `save_pretrained` / `from_pretrained` (brain3d.models.checkpoint).
    `variant` (`model.variant`): with `reference`, the authors' released model, the projector runs in the LM's
    dtype and its output is not multiplied by Gemma's embedding scale (SPEC §4b). `findings`: phase 1's findings
    head (brain3d.models.findings_head), when the model carries one: findings-consistent decoding reads it.
    """

    def __init__(
        self,
        lm: LanguageModel,
        vision_width: int,
        prompt: str,
        visual: VisualTokenizer | None = None,
        variant: str = "paper",
    ):
        super().__init__()
        self.language_model = lm
        self.lm = lm.causal
        self.visual = visual
        self.findings: FindingsHead | None = None
        self.detector: LateralityCNN | None = None  # phase 1's side CNN on the volume, when it trained one
        self.variant = check_variant(variant)
        self.projector = Projector(
            vision_width, lm.hidden_size, lm.embed_scale if variant == "paper" else 1.0
        )
        if variant == "reference":
            self.projector.to(self.lm.get_input_embeddings().weight.dtype)
        self.prompt = prompt
        tok = lm.tokenizer
        self.prompt_ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def tokenizer(self):
        return self.language_model.tokenizer

    def save_pretrained(
        self,
        out_dir: str | Path,
        *,
        phase: str,
        model_cfg: ModelConfig,
        backbones: dict,
        visual: str | Path | None = None,
        adapter=None,
        findings: str | Path | None = None,
        detector: tuple[str | Path, dict] | None = None,
    ) -> None:
        """Write the model to `out_dir` as one directory: projector.safetensors, the visual tokenizer's weights
        (visual.safetensors, unless `visual` names weights saved before, e.g. phase 1's for phases 2A/2B), the
        LoRA adapter (`adapter`: the PeftModel of phase 2B) in adapter/, and the card (checkpoint.py), which also
        names the findings head's weights (`findings`: phase 1's findings.safetensors) and the side detector's
        (`detector`: phase 1's detector.safetensors and its LateralityCNN arguments) when there are."""
        out_dir = Path(out_dir)
        if visual is None:
            if self.visual is None:
                raise ValueError(
                    "save_pretrained: the model has no visual tokenizer; name its saved weights (visual=)"
                )
            visual = out_dir / "visual.safetensors"
            fileio.save_safetensors(visual, self.visual.state_dict())
        fileio.save_safetensors(out_dir / "projector.safetensors", self.projector.state_dict())
        if adapter is not None:
            adapter.save_pretrained(out_dir / "adapter")
        checkpoint.write_card(
            out_dir,
            phase=phase,
            model_cfg=model_cfg,
            backbones=backbones,
            visual=visual,
            projector=out_dir / "projector.safetensors",
            adapter=out_dir / "adapter" if adapter is not None else None,
            findings=findings,
            detector=detector,
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Brain3D:
        """A Brain3D with its visual tokenizer, in eval mode on `device`, from a `save_pretrained` directory or
        a folder of the authors' released BrainGemma3D (brain3d.models.release)."""
        return cls.from_card(checkpoint.read_card(model_dir), device)

    @classmethod
    def from_card(cls, card: dict, device: str | torch.device = "cpu") -> Brain3D:
        """`from_pretrained` of a card as `checkpoint.read_card` returns it (a caller may change its `model`
        section first, e.g. a release's volume shape)."""
        from safetensors.torch import load_file

        is_release = card.get("format") == release.FORMAT
        if not is_release:  # a release's pins are its files' hashes, measured as its card was made
            checkpoint.verify(card["dir"], card)  # every file it loads is the one it was trained with
        model_cfg = ModelConfig(**card["model"])
        visual, lm = load_backbones(card["backbones"], model_cfg, visual_weights=card["visual"])
        if card.get("adapter") and is_release:
            release.load_lora(lm, card["adapter"])
        elif card.get("adapter"):
            from peft import PeftModel

            # injects the LoRA layers into lm.full in place
            PeftModel.from_pretrained(lm.full, card["adapter"])
        model = cls(lm, visual.width, model_cfg.prompt, visual=visual, variant=model_cfg.variant)
        if card.get("findings"):
            model.findings = FindingsHead(model_cfg.n_tokens, visual.width)
            model.findings.load_state_dict(load_file(card["findings"]))
        if card.get("detector"):
            model.detector = LateralityCNN(**card["detector_arch"])
            model.detector.load_state_dict(load_file(card["detector"]))
        model.projector.load_state_dict(
            release.read_projector(card["projector"], visual.width, lm.hidden_size)
            if is_release
            else load_file(card["projector"])
        )
        return model.to(device).eval()

    def text_rms(self) -> float:
        """RMS of the LM's (scaled) token embeddings: the target scale of the visual tokens."""
        with torch.no_grad():
            table = self.lm.get_input_embeddings()
            ids = torch.arange(min(table.num_embeddings, 4096), device=self.device)
            return float(table(ids).float().pow(2).mean().sqrt())

    def _prefix(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K, Cv) visual tokens -> (B, K + P, Cl) embeddings of [visual][BOS + prompt]."""
        visual = self.projector(z.to(self.device))
        ids = torch.tensor(self.prompt_ids, device=self.device)
        prompt = self.lm.get_input_embeddings()(ids)[None].expand(z.shape[0], -1, -1)
        return torch.cat([visual.to(prompt.dtype), prompt], dim=1)  # in the LM's dtype (bf16 on the paper)

    def _teacher_forcing(self, z: torch.Tensor, reports: list[str]):
        tok = self.tokenizer
        targets = [tok(r, add_special_tokens=False)["input_ids"] + [self.eos_id] for r in reports]
        longest = max(len(t) for t in targets)
        ids = torch.full((len(reports), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reports), longest), dtype=torch.long)
        for i, t in enumerate(targets):
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        prefix = self._prefix(z)
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(ids).to(prefix.dtype)], dim=1)
        n_prefix = prefix.shape[1]
        attention = torch.cat(
            [torch.ones(len(reports), n_prefix, dtype=torch.long, device=self.device), mask], 1
        )
        labels = torch.cat(
            [
                torch.full((len(reports), n_prefix), -100, device=self.device),
                ids.masked_fill(mask == 0, -100),
            ],
            dim=1,
        )
        return embeds, attention, labels

    def forward(self, z: torch.Tensor, reports: list[str]) -> torch.Tensor:
        """Masked next-token cross-entropy on the report tokens (mean over tokens)."""
        embeds, attention, labels = self._teacher_forcing(z, reports)
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention).logits[:, :-1].float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    @torch.no_grad()
    def log_likelihood(self, z: torch.Tensor, reports: list[str], reduction: str = "mean") -> torch.Tensor:
        """(B,) log-likelihood of each report (its tokens and EOS) given its visual tokens, teacher forced:
        per token ("mean") or of the whole text ("sum": comparable across texts of different lengths)."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got '{reduction}'")
        embeds, attention, labels = self._teacher_forcing(z, reports)
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention).logits[:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        valid = target != -100
        total = (logp * valid).sum(1)
        return total if reduction == "sum" else total / valid.sum(1).clamp(min=1)

    @torch.no_grad()
    def generate(
        self, z: torch.Tensor, decoding: Decoding, seed: int = 0, volumes: list[np.ndarray] | None = None
    ) -> list[str]:
        """Reports for a batch of visual tokens; sampling is seeded, KV cache on.

        With `decoding.select` "findings" (findings-consistent decoding, a departure from the paper), a report
        whose asserted finding (a lesion or none, its side, the hemispheres it names) disagrees with the guide
        (`wanted`) is sampled again, up to `decoding.candidates` times at `decoding.candidate_temperature` (drawn
        CANDIDATES_PER_CALL at a time in one batched call); the first candidate that agrees is kept, else the one
        that agrees best (presence, then side, then hemispheres), else the first report. A report that agrees
        with the guide is the plain decoder's, unchanged. The detector guide reads `volumes`, the preprocessed
        volumes the tokens were encoded from."""
        reports = self._sample(z, decoding, seed)
        if decoding.select == "plain":
            return reports
        if decoding.select != "findings":
            raise ValueError(f"generate.select must be 'plain' or 'findings', got {decoding.select!r}")
        wanted = self.wanted(z, decoding.guide, volumes)
        misfit = [_misfit(r, w) for r, w in zip(reports, wanted)]
        drawn, call = 0, 0
        while (todo := [i for i, m in enumerate(misfit) if any(m)]) and drawn < decoding.candidates:
            n = min(CANDIDATES_PER_CALL, decoding.candidates - drawn)  # candidates per row in this call
            call += 1
            more = self._sample(z[todo].repeat_interleave(n, 0), decoding.candidate(), seed + 7919 * call)
            for j, text in enumerate(more):
                i = todo[j // n]
                if (m := _misfit(text, wanted[i])) < misfit[i]:  # strict: the first that agrees stays
                    reports[i], misfit[i] = text, m
            drawn += n
        return reports

    @torch.no_grad()
    def wanted(self, z: torch.Tensor, guide: str, volumes: list[np.ndarray] | None = None) -> list[str]:
        """What findings-consistent decoding holds each report to ("none", left, right, bilateral): the findings
        head's decision on the visual tokens `z` (`guide` "head"), or the side detector's on `volumes`
        ("detector")."""
        if guide == "head":
            if self.findings is None:
                raise ValueError(
                    "generate.guide head needs a model with a findings head (phase1.findings_weight > 0)"
                )
            return self.findings.to(self.device).decide(z.to(self.device))
        if guide != "detector":
            raise ValueError(f"generate.guide must be 'head' or 'detector', got {guide!r}")
        if self.detector is None:
            raise ValueError(
                "generate.guide detector needs a model with a side detector (detector.epochs > 0)"
            )
        if volumes is None or len(volumes) != len(z):
            raise ValueError("generate.guide detector needs the volume of every row of visual tokens")
        return predict(self.detector.to(self.device), volumes, batch_size=len(volumes))

    def _sample(self, z: torch.Tensor, decoding: Decoding, seed: int) -> list[str]:
        """One sampled (or greedy) report per row of visual tokens: the plain decoder."""
        prefix = self._prefix(z)
        attention = torch.ones(prefix.shape[:2], dtype=torch.long, device=self.device)
        torch.manual_seed(seed)
        out = self.lm.generate(
            inputs_embeds=prefix,
            attention_mask=attention,
            use_cache=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            **decoding.kwargs(self.tokenizer),
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def _misfit(report: str, wanted: str) -> tuple[bool, bool, bool]:
    """How a report disagrees with the findings head's `wanted` finding ("none", left, right, bilateral): (the
    presence of a lesion differs, its side differs, the hemispheres it names are not the wanted ones: a
    bilateral finding names both left and right, not only "bilateral"); all False when it agrees."""
    from brain3d.data.findings import HEMISPHERES, asserted_side, extract_negation_aware, named_hemispheres

    present = bool(extract_negation_aware(report)["pathology"])  # as the metrics read a report's findings
    if present != (wanted != "none"):
        return True, True, True
    if not present:
        return False, False, False
    return False, asserted_side(report) != wanted, named_hemispheres(report) != HEMISPHERES[wanted]
