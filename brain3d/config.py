"""Parameters: one params.yaml, a `profile` key, and per-profile overrides under `profiles.<name>`.

The effective configuration is the shared sections deep-merged with `profiles[profile]`. A leaf may be
set in the shared sections or in a profile, never in both, so `dvc exp run -S section.key=v` can never be
silently overridden by a profile.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

PROFILES_KEY = "profiles"


def deep_merge(base: dict, override: dict, where: str = "") -> dict:
    """Merge `override` into a copy of `base`; a leaf present in both is an error."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, path)
        elif key in out:
            raise ValueError(
                f"params: '{path}' is set both in the shared sections and in the active profile; "
                "set it in one place only"
            )
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(params: dict) -> dict:
    """Return the effective configuration for `params['profile']` (without the `profiles` block)."""
    profile = params.get("profile", "demo")
    profiles = params.get(PROFILES_KEY, {})
    if profile not in profiles:
        raise ValueError(f"params: unknown profile '{profile}'; choose one of {sorted(profiles)}")
    shared = {k: v for k, v in params.items() if k != PROFILES_KEY}
    return deep_merge(shared, profiles[profile])


def load(path: str | Path = "params.yaml") -> dict:
    """Load and resolve a params file."""
    with open(path) as fh:
        return resolve(yaml.safe_load(fh))


def get(cfg: dict, dotted: str, default: Any = ...) -> Any:
    """`get(cfg, "phase2b.lora_rank")`; raises KeyError naming the key when it is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise KeyError(f"params: missing '{dotted}'")
            return default
        node = node[part]
    return node


def from_section(cls, section: dict):
    """An instance of dataclass `cls` from the keys of a params section that it declares (others ignored)."""
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section})
