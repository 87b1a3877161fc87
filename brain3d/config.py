"""Parameters: one params.yaml, a `profile` key, and per-profile overrides under `profiles.<name>`.

The effective configuration is the shared sections deep-merged with `profiles[profile]`. A leaf may be
set in the shared sections or in a profile, never in both, so `dvc exp run -S section.key=v` can never be
silently overridden by a profile. Every key must be one that a stage reads and every value must fit its
type and range (`brain3d.params_schema`), in the shared sections and in every profile block: a typo or a
misfit is a `ParamsError`, one line per problem, naming the key and the nearest valid one or the value and
what is expected. Values live in params.yaml only; a dataclass built from a section (`from_section`) has no
default for a key that params.yaml provides.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from brain3d.params_schema import PROFILE_SCHEMA, SCHEMA, Choice

PROFILES_KEY = "profiles"


class ParamsError(ValueError):
    """params.yaml (or a `-S` override) that no stage can run with; one line per problem."""


class PrecisionError(ParamsError):
    """The params ask for a precision (4-bit NF4) this machine cannot run, and allow no fallback."""


def _unknown(path: str, key: str, schema: dict, where: str, block: str) -> str:
    in_block = f" in {block}" if block else ""
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(str(key), list(schema), n=1)
    hint = (
        f"did you mean {prefix}{close[0]}?"
        if close
        else f"valid keys{f' of {where}' if where else ''}: {', '.join(sorted(schema))}"
    )
    return f"params: {path}: unknown key{in_block}; {hint}"


def _at(where: str, block: str) -> str:
    return f"{where} in {block}" if where and block else where or block or "the file"


def _check(node: Any, schema: dict, where: str = "", block: str = "") -> list[str]:
    """Problems of `node` (a section at dotted path `where`) against `schema`, one message per key: an unknown
    key, or a value that does not fit its `Spec`."""
    if not isinstance(node, dict):
        return [f"params: {_at(where, block)}: expected a mapping of keys, got {node!r}"]
    problems = []
    for key, value in node.items():
        path = f"{where}.{key}" if where else str(key)
        spec = schema.get(key)
        if spec is None:
            problems.append(_unknown(path, key, schema, where, block))
        elif isinstance(spec, dict):
            problems += _check(value, spec, path, block)
        elif (problem := spec.problem(value)) is not None:
            problems.append(f"params: {_at(path, block)}: {problem}")
    return problems


def validate(params: dict) -> None:
    """Raise ParamsError unless the shared sections and every profile block hold only known keys, each with a
    value that fits its type and range (every problem at once, one line each)."""
    if not isinstance(params, dict):
        raise ParamsError(f"params: expected a mapping of sections, got {params!r}")
    profiles = params.get(PROFILES_KEY, {})
    blocks = profiles if isinstance(profiles, dict) else {}
    schema = {**SCHEMA, "profile": Choice(" ".join(map(str, blocks)))}  # one of this file's blocks
    problems = _check({k: v for k, v in params.items() if k != PROFILES_KEY}, schema)
    if not isinstance(profiles, dict):
        problems.append(f"params: {PROFILES_KEY}: expected a mapping of profile blocks, got {profiles!r}")
    for name, block in blocks.items():
        problems += _check(block, PROFILE_SCHEMA, block=f"{PROFILES_KEY}.{name}")
    if problems:
        raise ParamsError("\n".join(problems))


def deep_merge(base: dict, override: dict, where: str = "") -> dict:
    """Merge `override` into a copy of `base`; a leaf present in both is an error."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, path)
        elif key in out:
            raise ParamsError(
                f"params: '{path}' is set both in the shared sections and in the active profile; "
                "set it in one place only"
            )
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(params: dict) -> dict:
    """Validate `params` and return the effective configuration for `params['profile']` (without the
    `profiles` block)."""
    validate(params)
    profiles = params.get(PROFILES_KEY, {})
    if "profile" not in params:
        raise ParamsError(f"params: profile: missing; set it to one of {sorted(profiles)}")
    shared = {k: v for k, v in params.items() if k != PROFILES_KEY}
    return deep_merge(shared, profiles[params["profile"]])  # validate checked it names a block


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads `1e-05` as a float, as YAML 1.2 does: `dvc exp run -S x=0.00001`
    writes it so (ruamel.yaml), and YAML 1.1 wants a dot (`1.0e-05`) or reads it as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read(path: str | Path = "params.yaml") -> Any:
    """The params file as written (not validated, not resolved)."""
    with open(path) as fh:
        return yaml.load(fh, Loader=_Loader)


def load(path: str | Path = "params.yaml", profile: str | None = None) -> dict:
    """Load, validate and resolve a params file (for `profile` instead of the file's own when given)."""
    params = read(path)
    if profile is not None and isinstance(params, dict):
        params = {**params, "profile": profile}
    return resolve(params)


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
    """An instance of dataclass `cls` from the keys of a params section that it declares (the section's other
    keys belong to other readers). A field without a default that the section lacks is a ParamsError."""
    fields = dataclasses.fields(cls)
    missing = [
        f.name
        for f in fields
        if f.name not in section
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ParamsError(f"params: missing {', '.join(missing)} (needed by {cls.__name__})")
    return cls(**{f.name: section[f.name] for f in fields if f.name in section})
