"""Demo stand-in backbones: how they are built and saved, in the same Hugging Face formats as the real ones,
so that every later stage runs the paper's code path unchanged (brain3d/training/standins.py trains them from
the TRAIN split and, for SigLIP, a pretraining corpus):

- a Gemma-style tokenizer (byte-fallback BPE with Gemma's special tokens) trained on the reports;
- a SigLIP image-text model (`SiglipModel`) trained on 2D axial slices with slice-level captions
  (image-to-caption contrastive loss), standing in for MedSigLIP-448: the slices of the TRAIN split and of
  extra phantom subjects in no split (brain3d/data/corpus.py), as MedSigLIP was pretrained on a corpus;
- a Gemma 3 multimodal model (`Gemma3ForConditionalGeneration` + `Gemma3Processor`), its vision tower
  copied from the SigLIP stand-in (as MedGemma's is MedSigLIP), its language model pretrained on the
  training reports, standing in for MedGemma-1.5-4B-IT.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from brain3d.models.encoder import PIXEL_MEAN, PIXEL_STD

SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# Gemma's chat format (turns, images as <start_of_image> placeholders the processor expands).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A GemmaTokenizer (BPE, byte fallback, "▁" for spaces) with Gemma's special and image tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_previous")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + byte_tokens, show_progress=False
    )
    tk.train_from_iterator(texts, trainer)
    model = json.loads(tk.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = GemmaTokenizer(
        vocab=model["vocab"],
        merges=merges,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    # the turn markers are special too (one token each, never split), as in Gemma's own tokenizer: the
    # constructor's additional_special_tokens no longer registers them, and the chat turns were read as bytes
    turns = [AddedToken(t, special=True, normalized=False) for t in ("<start_of_turn>", "<end_of_turn>")]
    tokenizer.add_tokens(turns, special_tokens=True)
    return tokenizer


def save_siglip(model: nn.Module, tokenizer, out_dir: Path) -> None:
    from transformers import SiglipImageProcessor

    size = model.config.vision_config.image_size
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    SiglipImageProcessor(
        size={"height": size, "width": size},
        image_mean=[PIXEL_MEAN] * 3,
        image_std=[PIXEL_STD] * 3,
        do_rescale=False,
    ).save_pretrained(out_dir)


def build_siglip(tokenizer, arch: dict, image_size: int) -> nn.Module:
    """A randomly initialised SiglipModel of the stand-in size (`arch`: params.yaml `foundation.siglip`) for
    square images of `image_size` pixels; its text tower reads `arch["text_max_length"]` (default 32) tokens."""
    from transformers import SiglipConfig, SiglipModel

    return SiglipModel(
        SiglipConfig(
            text_config=dict(
                hidden_size=arch["hidden"],
                intermediate_size=arch["intermediate"],
                num_hidden_layers=arch["text_layers"],
                num_attention_heads=arch["heads"],
                vocab_size=len(tokenizer),
                max_position_embeddings=arch.get("text_max_length", 32),
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            ),
            vision_config=dict(
                hidden_size=arch["hidden"],
                intermediate_size=arch["intermediate"],
                num_hidden_layers=arch["layers"],
                num_attention_heads=arch["heads"],
                image_size=image_size,
                patch_size=arch["patch"],
            ),
        )
    )


def build_gemma3(tokenizer, vision_config: dict, arch: dict) -> nn.Module:
    """A randomly initialised Gemma3ForConditionalGeneration of the stand-in size (`arch`: params.yaml
    `foundation.gemma`; `vocab_size`, default the tokenizer's, sizes the embedding as a real checkpoint's)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        hidden_size=arch["hidden"],
        intermediate_size=arch["intermediate"],
        num_hidden_layers=arch["layers"],
        num_attention_heads=arch["heads"],
        num_key_value_heads=arch["kv_heads"],
        head_dim=arch["head_dim"],
        vocab_size=arch.get("vocab_size", len(tokenizer)),
        sliding_window=arch.get("sliding_window", 512),
        max_position_embeddings=arch["max_positions"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision_config,
        mm_tokens_per_image=arch["mm_tokens_per_image"],
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_gemma3(model: nn.Module, tokenizer, out_dir: Path) -> None:
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    size = model.config.vision_config.image_size
    image_processor = Gemma3ImageProcessor(
        size={"height": size, "width": size},
        image_mean=[PIXEL_MEAN] * 3,
        image_std=[PIXEL_STD] * 3,
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=model.config.mm_tokens_per_image,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
