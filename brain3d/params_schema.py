"""Every key a stage reads from params.yaml: names and nesting only, never values (params.yaml is the one
home of every value). `brain3d.config` refuses any other key, in the shared sections and in every profile
block, so a typo fails at once instead of being silently ignored.

A key is either a section (a dict of keys, checked recursively) or a leaf:

    VALUE     params.yaml sets it (in the shared sections or in a profile block); a dict value is data
              whose keys are not checked (e.g. `laterality_mix: {left: ..}`).
    OPTIONAL  a leaf params.yaml may leave out: the code that reads it documents its default.

tests/test_params.py keeps this in step with params.yaml: every VALUE key is set in the shared sections or in
at least one profile, and every OPTIONAL key is read somewhere in brain3d/ or stages/.
"""

from __future__ import annotations

VALUE = "value"
OPTIONAL = "optional"


def _values(names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), VALUE)


def _optional(names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), OPTIONAL)


_TRAIN = "epochs batch_size grad_accum lr patience weight_decay warmup_frac seed"  # TrainConfig

SCHEMA: dict = {
    "profile": VALUE,
    "download": {
        **_values("source seed workers"),
        **_values("n_subjects healthy_fraction laterality_mix"),  # phantom (demo)
        **_values("brats_dir textbrats_dir ds000221_dir n_tumour n_healthy fetch"),  # real data (paper)
        **_optional(
            "sha_cache allow_subset healthy_acq ds000221_tag kaggle_dataset"
        ),  # brain3d/data/sources.py
    },
    "preprocess": _values(
        "shape skull_strip fov_mm on_error min_brain_similarity sequence workers max_voxels"
    ),
    "split": _values("fractions seed"),
    "corpus": _values("seed healthy_fraction laterality_mix n_subjects workers"),  # brain3d/data/corpus.py
    "model": _values("kd depth_stride depth_pad inflation n_tokens compressor grid prompt"),
    "foundation": {
        **_values("source dtype load_in_4bit allow_cpu_fallback"),
        # stand-ins (demo): brain3d/models/foundation.py builds, brain3d/training/standins.py trains
        "tokenizer_vocab": VALUE,
        "siglip": {
            **_values("hidden intermediate layers text_layers heads patch"),
            **_optional("text_max_length"),
        },
        "siglip_train": _values(_TRAIN),
        "gemma": {
            **_values("hidden intermediate layers heads kv_heads head_dim max_positions mm_tokens_per_image"),
            **_optional("sliding_window"),
        },
        "gemma_train": _values(_TRAIN),
        # local checkpoints (paper): brain3d/models/backbones.py verify_local
        **_values("vision lm vision_repo lm_repo"),
        **_optional("vision_revision lm_revision"),
    },
    "phase1": _values(f"{_TRAIN} temperature laterality_flip findings_weight"),
    "phase2a": _values(f"{_TRAIN} laterality_flip normal_weight bilateral_weight"),
    "phase2b": _values(
        f"{_TRAIN} lr_lora lora_rank lora_alpha lora_dropout laterality_flip normal_weight bilateral_weight"
    ),
    "generate": _values(
        "temperature top_p repetition_penalty repetition_exempt no_repeat_ngram_size min_new_tokens "
        "max_new_tokens batch_size seed"
    ),
    "baselines": {
        **_values("instruction question n_slices batch_size"),
        "med3dvlm": _values("path revision allow_remote_code question max_new_tokens"),
    },
    "evaluate": _values("n_resamples seed bertscore_model bertscore_layers"),
    "lime": {
        **_values("per_class n_segments compactness n_samples batch_size deletion_steps seed"),
        "cnn": _values("epochs batch_size lr weight_decay channels downsample"),
    },  # CnnSettings
}

# A profile block (`profiles.<name>`) holds the same sections; `profile` itself is only set at the top.
PROFILE_SCHEMA: dict = {k: v for k, v in SCHEMA.items() if k != "profile"}
