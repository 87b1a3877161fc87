"""Every key a stage reads from params.yaml and what its value must be: names, nesting, types and ranges, never
the values themselves (params.yaml is the one home of every value). `brain3d.config` refuses any other key and
any value that does not fit, in the shared sections and in every profile block, so a typo or a
`dvc exp run -S phase2b.lora_rank=four` fails at once, in one line, instead of deep inside a stage.

A key is either a section (a dict of keys, checked recursively) or a leaf, a `Spec`:

    Int(ge=1)  Float(gt=0)  Float(ge=0, lt=1)  Bool()  Str()  Path()  Choice("seq_pool grid_pool perceiver")
    List(Int(ge=1), n=3)  List(Float(gt=0, lt=1), n=3, total=1)  Mapping(Choice("left right"), Float(ge=0))

    null=True       the value may be null (params.yaml writes null as an empty value)
    optional=True   params.yaml may leave the key out: the code that reads it documents its default

A new key is one line in its section, e.g. `"variant": Choice("paper reference"),`. An int is a number where
a float is expected (YAML `1` for `1.0`); a bool is neither. tests/test_params.py keeps this in step with
params.yaml: every leaf of params.yaml has a spec, every required key is set in the shared sections or in at
least one profile, and every optional key is read somewhere in brain3d/ or stages/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def show(value: Any) -> str:
    """A value as a params message quotes it: YAML's null / true / false, Python's repr otherwise."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    """' >= 1', ' in [0, 1)', '' ... as a description of a range."""
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else ""
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else ""
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'>=' if ge is not None else '>'} {low[1:]}"
    return f" {'<=' if le is not None else '<'} {high[:-1]}" if high else ""


def _in_bounds(x: float, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> bool:
    return not (
        (ge is not None and not x >= ge)
        or (gt is not None and not x > gt)
        or (le is not None and not x <= le)
        or (lt is not None and not x < lt)
    )


@dataclass(frozen=True)
class Spec:
    """A leaf of the schema: what its value must be. Subclasses say what they accept (`fault`) and how that
    reads in a message (`noun`, `nouns`)."""

    null: bool = field(default=False, kw_only=True)
    optional: bool = field(default=False, kw_only=True)

    noun = "a value"
    nouns = "values"

    def fault(self, value: Any) -> str | None:
        """Why `value` does not fit ('is not an integer', 'is out of range'); None when it fits."""
        raise NotImplementedError

    def expected(self, plural: bool = False) -> str:
        """What fits, for a message: 'an integer >= 1' (or 'integers >= 1' for a list's items)."""
        return (self.nouns if plural else self.noun) + ("" if plural or not self.null else ", or null")

    def problem(self, value: Any) -> str | None:
        """`'four' is not an integer (expected an integer >= 1)`, or None when `value` fits."""
        if value is None and self.null:
            return None
        fault = self.fault(value)
        return None if fault is None else f"{show(value)} {fault} (expected {self.expected()})"


@dataclass(frozen=True)
class Int(Spec):
    ge: int | None = None
    le: int | None = None

    @property
    def noun(self) -> str:
        return "an integer" + _bounds(self.ge, None, self.le, None)

    @property
    def nouns(self) -> str:
        return "integers" + _bounds(self.ge, None, self.le, None)

    def fault(self, value: Any) -> str | None:
        if not _is_int(value):
            return "is not an integer"
        return None if _in_bounds(value, self.ge, None, self.le, None) else "is out of range"


@dataclass(frozen=True)
class Float(Spec):
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    @property
    def noun(self) -> str:
        return "a number" + _bounds(self.ge, self.gt, self.le, self.lt)

    @property
    def nouns(self) -> str:
        return "numbers" + _bounds(self.ge, self.gt, self.le, self.lt)

    def fault(self, value: Any) -> str | None:
        if isinstance(value, str) and _parses_as_float(value):  # a number in quotes
            return f"is text, not a number; write it unquoted as {float(value)!r}"
        if not _is_number(value):
            return "is not a number"
        return None if _in_bounds(value, self.ge, self.gt, self.le, self.lt) else "is out of range"


def _parses_as_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass(frozen=True)
class Bool(Spec):
    noun = "true or false"
    nouns = "true/false values"

    def fault(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else "is not true or false"


@dataclass(frozen=True)
class Str(Spec):
    noun = "a string"
    nouns = "strings"

    def fault(self, value: Any) -> str | None:
        return None if isinstance(value, str) else "is not a string"


@dataclass(frozen=True)
class Path(Str):
    """A file or folder, relative to the repository root: a non-empty string."""

    noun = "a path (a non-empty string)"
    nouns = "paths"

    def fault(self, value: Any) -> str | None:
        return None if isinstance(value, str) and value.strip() else "is not a path"


@dataclass(frozen=True)
class Choice(Spec):
    names: str = ""  # the choices, space-separated

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.names.split())

    @property
    def noun(self) -> str:
        return f"one of {', '.join(self.choices)}"

    @property
    def nouns(self) -> str:
        return f"names among {', '.join(self.choices)}"

    def fault(self, value: Any) -> str | None:
        return None if isinstance(value, str) and value in self.choices else "is not a valid choice"


@dataclass(frozen=True)
class List(Spec):
    item: Spec = field(default_factory=Str)
    n: int | None = None  # exactly this many items
    total: float | None = None  # the items sum to this

    @property
    def noun(self) -> str:
        count = f"{self.n} " if self.n is not None else ""
        total = f" summing to {self.total:g}" if self.total is not None else ""
        return f"a list of {count}{self.item.expected(plural=True)}{total}"

    def fault(self, value: Any) -> str | None:
        if not isinstance(value, list):
            return "is not a list"
        if self.n is not None and len(value) != self.n:
            return f"has {len(value)} items"
        for item in value:
            if (fault := self.item.fault(item)) is not None:
                return f"holds {show(item)}, which {fault}"
        if self.total is not None and not math.isclose(sum(value), self.total, abs_tol=1e-6):
            return f"sums to {sum(value):g}"
        return None


@dataclass(frozen=True)
class Mapping(Spec):
    """Data whose keys are values, not schema keys (e.g. `laterality_mix: {left: 0.425, ..}`)."""

    key: Spec = field(default_factory=Str)
    value: Spec = field(default_factory=Str)

    @property
    def noun(self) -> str:
        return f"a mapping of {self.key.expected(plural=True)} to {self.value.expected(plural=True)}"

    def fault(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return "is not a mapping"
        for k, v in value.items():
            if (fault := self.key.fault(k)) is not None:
                return f"holds key {show(k)}, which {fault}"
            if (fault := self.value.fault(v)) is not None:
                return f"holds {k}: {show(v)}, which {fault}"
        return None


SEED = Int(ge=0)
WORKERS = Int(ge=1)
POSITIVE = Int(ge=1)
FRACTION = Float(ge=0, le=1)
LATERALITY_MIX = Mapping(
    Choice("left right bilateral undefined"), Float(ge=0)
)  # brain3d/data/phantom/plan.py
SHAPE = List(Int(ge=1), n=3)  # (D, H, W)

TRAIN = {  # TrainConfig
    "epochs": POSITIVE,
    "batch_size": POSITIVE,
    "grad_accum": POSITIVE,
    "lr": Float(gt=0),
    "patience": POSITIVE,
    "weight_decay": Float(ge=0),
    "warmup_frac": Float(ge=0, lt=1),
    "seed": SEED,
}
CNN = {  # CnnSettings (brain3d/models/side_cnn.py)
    "epochs": POSITIVE,
    "batch_size": POSITIVE,
    "lr": Float(gt=0),
    "weight_decay": Float(ge=0),
    "channels": List(POSITIVE),
    "downsample": POSITIVE,
}
PHASE2 = {  # phase 2A and 2B: brain3d/training/phases.py
    "laterality_flip": Bool(),
    "normal_weight": Float(gt=0),
    "bilateral_weight": Float(gt=0),
}

SCHEMA: dict = {
    "profile": Choice(),  # one of the blocks under `profiles`: brain3d.config.validate names them
    "download": {
        "source": Choice("phantom real"),
        "seed": SEED,
        "workers": WORKERS,
        # phantom (demo): brain3d/data/phantom
        "n_subjects": POSITIVE,
        "healthy_fraction": FRACTION,
        "laterality_mix": LATERALITY_MIX,
        # real data (paper): brain3d/data/sources.py
        "brats_dir": Path(),
        "textbrats_dir": Path(),
        "ds000221_dir": Path(),
        "n_tumour": POSITIVE,
        "n_healthy": POSITIVE,
        "fetch": Bool(),
        "sha_cache": Path(optional=True, null=True),
        "allow_subset": Bool(optional=True),
        "healthy_acq": List(Choice("highres lowres"), optional=True),
        "ds000221_tag": Str(optional=True, null=True),
        "kaggle_dataset": Str(optional=True),
    },
    "preprocess": {  # brain3d/data/preprocess.py
        "shape": SHAPE,
        "skull_strip": Choice("registration threshold"),
        "fov_mm": List(Float(gt=0), n=3, null=True),
        "on_error": Choice("fail skip"),
        "min_brain_similarity": Float(ge=-1, le=1),
        "sequence": Choice("FLAIR any"),
        "workers": WORKERS,
        "max_voxels": POSITIVE,
    },
    "split": {"fractions": List(Float(gt=0, lt=1), n=3, total=1), "seed": SEED},  # train / val / test
    "corpus": {  # brain3d/data/corpus.py
        "seed": SEED,
        "healthy_fraction": FRACTION,
        "laterality_mix": LATERALITY_MIX,
        "n_subjects": Int(ge=0),
        "workers": WORKERS,
    },
    "model": {  # ModelConfig
        "kd": POSITIVE,
        "depth_stride": POSITIVE,
        "depth_pad": Int(ge=0),
        "inflation": Choice("mean sum center"),  # brain3d/models/encoder.py INFLATIONS
        "n_tokens": POSITIVE,
        "compressor": Choice("seq_pool grid_pool perceiver"),  # brain3d/models/compressor.py COMPRESSORS
        "grid": SHAPE,
        "prompt": Str(),
        "variant": Choice("paper reference"),  # brain3d/models/encoder.py VARIANTS
    },
    "foundation": {
        "source": Choice("standins local"),
        "dtype": Choice("float32 bfloat16 float16"),  # brain3d/models/backbones.py torch_dtype
        "load_in_4bit": Bool(),
        "allow_cpu_fallback": Bool(),
        # stand-ins (demo): brain3d/models/foundation.py builds, brain3d/training/standins.py trains
        "tokenizer_vocab": POSITIVE,
        "siglip": {
            **dict.fromkeys(("hidden", "intermediate", "layers", "text_layers", "heads", "patch"), POSITIVE),
            "text_max_length": Int(ge=1, optional=True),
        },
        "siglip_train": TRAIN,
        "gemma": {
            **dict.fromkeys(
                ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "max_positions"),
                POSITIVE,
            ),
            "mm_tokens_per_image": POSITIVE,
            "sliding_window": Int(ge=1, optional=True),
        },
        "gemma_train": TRAIN,
        # local checkpoints (paper): brain3d/models/backbones.py verify_local
        "vision": Path(),
        "lm": Path(),
        "vision_repo": Str(),
        "lm_repo": Str(),
        "vision_revision": Str(optional=True, null=True),
        "lm_revision": Str(optional=True, null=True),
    },
    "detector": {**CNN, "epochs": Int(ge=0)},  # phase 1's side detector; epochs 0: none
    "phase1": {
        **TRAIN,
        "temperature": Float(gt=0),
        "laterality_flip": Bool(),
        "findings_weight": Float(ge=0),
        "side_balance": Bool(),
        "corpus_findings": Bool(),
        "bilateral_weight": Float(gt=0),
        "cell_weight": Float(ge=0),
        "side_refit_epochs": Int(ge=0),
        "side_refit_lr": Float(gt=0),
    },
    "phase2a": {**TRAIN, **PHASE2},
    "phase2b": {
        **TRAIN,
        **PHASE2,
        "lr_lora": Float(gt=0),
        "lora_rank": POSITIVE,
        "lora_alpha": POSITIVE,
        "lora_dropout": Float(ge=0, lt=1),
    },
    "generate": {  # Decoding
        "temperature": Float(gt=0),
        "top_p": Float(gt=0, le=1),
        "repetition_penalty": Float(gt=0),
        "repetition_exempt": List(Str()),
        "no_repeat_ngram_size": Int(ge=0),
        "min_new_tokens": Int(ge=0),
        "select": Choice("plain findings"),
        "guide": Choice("head detector"),
        "candidates": Int(ge=0),
        "candidate_temperature": Float(gt=0),
        "max_new_tokens": POSITIVE,
        "batch_size": POSITIVE,
        "seed": SEED,
    },
    "baselines": {
        "instruction": Str(),
        "question": Str(),
        "n_slices": POSITIVE,
        "batch_size": POSITIVE,
        "med3dvlm": {  # Med3DVLMConfig
            "path": Path(),
            "revision": Str(null=True),
            "allow_remote_code": Bool(),
            "question": Str(),
            "max_new_tokens": POSITIVE,
        },
        "braingemma3d_release": {
            "path": Path(),
            "loader": Choice("project reference"),
            "volume_shape": SHAPE,
        },
    },
    "evaluate": {
        "n_resamples": POSITIVE,
        "seed": SEED,
        "bertscore_model": Path(null=True),  # null: the all-MiniLM-L6-v2 encoder shipped on PyPI
        "bertscore_layers": Int(ge=1, null=True),
    },
    "lime": {  # LimeSettings, and per_class for the stage
        "per_class": POSITIVE,
        "n_segments": POSITIVE,
        "compactness": Float(gt=0),
        "n_samples": POSITIVE,
        "batch_size": POSITIVE,
        "deletion_steps": POSITIVE,
        "seed": SEED,
        "cnn": CNN,
    },
}

# A profile block (`profiles.<name>`) holds the same sections; `profile` itself is only set at the top.
PROFILE_SCHEMA: dict = {k: v for k, v in SCHEMA.items() if k != "profile"}
