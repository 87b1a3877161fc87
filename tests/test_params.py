"""Strict params: every key of params.yaml (shared sections, `-S` overrides, every profile block) is one that a
stage reads (brain3d/params_schema.py); a typo fails at once, naming the key and the nearest valid one; and
values live in params.yaml only (no dataclass or function default for a key that params.yaml provides)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from brain3d import config, entrypoint
from brain3d.params_schema import OPTIONAL, SCHEMA, VALUE

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
TYPO = "params: phase2b.lora_rnak: unknown key; did you mean phase2b.lora_rank?"
# optional keys whose name the code builds (brain3d/models/backbones.py verify_local)
READ_AS = {"vision_revision": 'f"{key}_revision"', "lm_revision": 'f"{key}_revision"'}


def _leaves(schema: dict, prefix: tuple[str, ...] = ()):
    for key, kind in schema.items():
        if isinstance(kind, dict):
            yield from _leaves(kind, (*prefix, key))
        else:
            yield (*prefix, key), kind


def _node(params: dict, path: tuple[str, ...]):
    for part in path:
        if not isinstance(params, dict) or part not in params:
            return None
        params = params[part]
    return params


def _has(block: dict, path: tuple[str, ...]) -> bool:
    parent = _node(block, path[:-1])
    return isinstance(parent, dict) and path[-1] in parent


def _blocks() -> list[dict]:
    """The shared sections and every profile block of the committed params.yaml."""
    return [{k: v for k, v in PARAMS.items() if k != "profiles"}, *PARAMS["profiles"].values()]


def _keys(dotted: str) -> set[str]:
    """Every key params.yaml sets in section `dotted`, shared or in any profile."""
    return {k for block in _blocks() for k in (_node(block, tuple(dotted.split("."))) or {})}


def _with(path: str, value) -> dict:
    """The committed params with `path` (dotted, e.g. profiles.demo.phase2b.lr_lroa) set to `value`."""
    params = copy.deepcopy(PARAMS)
    *parents, leaf = path.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = value
    return params


def _error(params: dict) -> str:
    with pytest.raises(config.ParamsError) as exc:
        config.resolve(params)
    return str(exc.value)


# ------------------------------------------------------------------------------------ the schema


def test_committed_params_validate_for_every_profile():
    for profile in PARAMS["profiles"]:
        cfg = config.load(ROOT / "params.yaml", profile=profile)
        assert cfg["profile"] == profile


def test_every_schema_key_is_set_by_params_yaml_or_read_as_optional():
    code = "\n".join(
        p.read_text()
        for d in ("brain3d", "stages")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "params_schema.py"
    )
    for path, kind in _leaves(SCHEMA):
        dotted = ".".join(path)
        if kind == VALUE:
            assert any(_has(block, path) for block in _blocks()), (
                f"schema key {dotted} is set nowhere in params.yaml: remove it from brain3d/params_schema.py"
            )
        else:
            assert kind == OPTIONAL
            needle = READ_AS.get(path[-1], f'"{path[-1]}"')
            assert needle in code, f"optional key {dotted} is read nowhere in brain3d/ or stages/"


def test_the_tiny_pipeline_params_validate():
    from tiny_pipeline import tiny_params

    config.resolve(tiny_params(PARAMS))


# ------------------------------------------------------------------------------------- typos


def test_a_typo_in_a_shared_section_names_the_key_and_the_nearest_one():
    assert _error(_with("phase2b.lora_rnak", 4)) == TYPO


def test_a_typo_in_a_profile_block_names_the_block():
    assert _error(_with("profiles.demo.phase2b.lr_lroa", 0.001)) == (
        "params: phase2b.lr_lroa: unknown key in profiles.demo; did you mean phase2b.lr_lora?"
    )


def test_a_typo_in_a_nested_dict_and_in_an_inactive_profile():
    assert _error(_with("profiles.demo.foundation.siglip.hiden", 96)) == (
        "params: foundation.siglip.hiden: unknown key in profiles.demo; did you mean foundation.siglip.hidden?"
    )
    assert PARAMS["profile"] != "paper"
    assert _error(_with("profiles.paper.foundation.vison", "x")) == (
        "params: foundation.vison: unknown key in profiles.paper; did you mean foundation.vision?"
    )


def test_unknown_sections_and_keys_without_a_near_one():
    assert _error(_with("phase2c", {})) == "params: phase2c: unknown key; did you mean phase2b?"
    message = _error(_with("split.zzz", 1))
    assert message == "params: split.zzz: unknown key; valid keys of split: fractions, seed"
    both = _error(
        _with("profiles.demo.generate.max_new_tokns", 8) | {"lime": {**PARAMS["lime"], "n_sampels": 3}}
    )
    assert both.splitlines() == [  # every problem at once, one line each
        "params: lime.n_sampels: unknown key; did you mean lime.n_samples?",
        "params: generate.max_new_tokns: unknown key in profiles.demo; did you mean generate.max_new_tokens?",
    ]


def test_a_section_set_to_a_value_is_refused_and_data_dicts_are_not_checked():
    assert _error(_with("phase2b", 4)) == "params: phase2b: expected a mapping of keys, got 4"
    config.resolve(_with("profiles.demo.download.laterality_mix", {"left": 1.0, "any side": 2.0}))


def test_params_errors_are_value_errors_and_a_missing_profile_is_named():
    assert issubclass(config.ParamsError, ValueError)
    params = copy.deepcopy(PARAMS)
    del params["profile"]
    assert _error(params) == "params: profile: missing; set it to one of ['demo', 'paper']"


# ------------------------------------------------------------------------- one home per value


def _defaults(fields_or_params) -> set[str]:
    return {
        f.name
        for f in fields_or_params
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def test_dataclasses_built_from_params_have_no_default_for_a_params_key():
    from brain3d.baselines.braingemma3d import ReleaseBaselineConfig
    from brain3d.baselines.med3dvlm import Med3DVLMConfig
    from brain3d.interpretability.cases import LimeSettings
    from brain3d.models.model import Decoding, ModelConfig
    from brain3d.training.loop import TrainConfig

    built_from = {
        TrainConfig: ("phase1", "phase2a", "phase2b", "foundation.siglip_train", "foundation.gemma_train"),
        ModelConfig: ("model",),
        Decoding: ("generate",),
        LimeSettings: ("lime",),
        Med3DVLMConfig: ("baselines.med3dvlm",),
        ReleaseBaselineConfig: ("baselines.braingemma3d_release",),
    }
    for cls, sections in built_from.items():
        keys = set().union(*map(_keys, sections))
        assert keys, sections
        shadowed = _defaults(dataclasses.fields(cls)) & keys
        assert not shadowed, f"{cls.__name__} defaults {sorted(shadowed)}, which params.yaml sets"
    with pytest.raises(config.ParamsError, match="params: missing epochs, batch_size, lr, grad_accum"):
        TrainConfig.from_params({})
    with pytest.raises(config.ParamsError, match="params: missing kd, depth_stride"):
        ModelConfig.from_params({"model": {"grid": [2, 4, 4]}, "preprocess": {"shape": [32, 64, 64]}})
    with pytest.raises(TypeError):
        ModelConfig(volume_shape=(32, 64, 64))  # type: ignore[call-arg]


def test_functions_fed_from_params_have_no_default_for_a_params_key():
    from brain3d.data.phantom import generate_cohort, plan_cohort
    from brain3d.generation import generate_reports
    from brain3d.interpretability.lime3d import explain, supervoxels
    from brain3d.interpretability.probe import laterality_probes, linear_probe
    from brain3d.interpretability.targets import randomised_copy

    fed_from = {
        generate_cohort: "download",
        plan_cohort: "download",
        generate_reports: "generate",
        supervoxels: "lime",
        explain: "lime",
        laterality_probes: "lime",
        linear_probe: "lime",
        randomised_copy: "lime",
    }
    for fn, section in fed_from.items():
        defaulted = {name for name, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}
        shadowed = defaulted & _keys(section)
        assert not shadowed, f"{fn.__name__} defaults {sorted(shadowed)}, which params.yaml {section} sets"


# ------------------------------------------------------------------------------- a stage run


def test_a_stage_stops_before_any_work_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with("phase2b.lora_rnak", 4), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        with entrypoint.run("phase2b", ("model", "phase2b")):
            pytest.fail("the stage body ran")
    assert exc.value.code == 1
    assert capsys.readouterr().err.strip() == f"phase2b: error: {TYPO}"


def test_bad_input_found_by_a_stage_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    """An InputError raised by the stage's own work (params fine, inside its MLflow run) ends the process with
    status 1 and one line `<stage>: error: <message>` on stderr, no 'done' line; any other exception is a bug
    and keeps its traceback."""
    from contextlib import contextmanager

    from brain3d.data.manifest import InputError
    from brain3d.tracking import Tracker

    runs = []

    @contextmanager
    def fake_run(name, params=None, tags=None):  # no MLflow store in the test
        runs.append(name)
        yield Tracker()

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(entrypoint, "mlflow_run", fake_run)
    with pytest.raises(SystemExit) as exc:
        with entrypoint.run("preprocess", ("preprocess",)):
            raise InputError("sub-07", "data/sub-07/flair.nii.gz", "empty volume (every voxel is 0)")
    assert exc.value.code == 1 and runs == ["preprocess"]
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "preprocess: error: sub-07 (data/sub-07/flair.nii.gz): empty volume (every voxel is 0)"
    ]
    with pytest.raises(RuntimeError, match="a bug"):
        with entrypoint.run("preprocess", ("preprocess",)):
            raise RuntimeError("a bug")
    assert "error:" not in capsys.readouterr().err


def test_dvc_exp_run_typo_fails_the_phase2b_stage_within_seconds(tmp_path):
    """What `dvc exp run -S phase2b.lora_rnak=4` leaves for the first stage it runs: the key in params.yaml."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with("phase2b.lora_rnak", 4), sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BRAIN3D_CACHE": str(tmp_path / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "stages.phase2b"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - t0
    assert out.returncode == 1, out.stderr
    assert f"phase2b: error: {TYPO}" in out.stderr.splitlines()
    assert "Traceback" not in out.stderr and not (tmp_path / "mlflow.db").exists()
    assert seconds < 120, f"{seconds:.0f} s (imports included)"
