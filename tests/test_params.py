"""Strict params: every key of params.yaml (shared sections, `-S` overrides, every profile block) is one that a
stage reads and every value fits its type and range (brain3d/params_schema.py); a typo or a misfit fails at
once, in one line naming the key and the nearest valid one or the value and what is expected; and values live
in params.yaml only (no dataclass or function default for a key that params.yaml provides)."""

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
from brain3d.params_schema import SCHEMA, Spec, show

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
TYPO = "params: phase2b.lora_rnak: unknown key; did you mean phase2b.lora_rank?"
# issue 28: `dvc exp run -S phase2b.lora_rank=four` trained for 20 s and died in PEFT with a TypeError
MISFIT = "params: phase2b.lora_rank: 'four' is not an integer (expected an integer >= 1)"
# optional keys whose name the code builds (brain3d/models/backbones.py verify_local)
READ_AS = {"vision_revision": 'f"{key}_revision"', "lm_revision": 'f"{key}_revision"'}


def _leaves(schema: dict, prefix: tuple[str, ...] = ()):
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from _leaves(spec, (*prefix, key))
        else:
            yield (*prefix, key), spec


def _set_leaves(node: dict, prefix: tuple[str, ...] = ()):
    """(path, value) of every value params.yaml sets in `node`: a dict is a section unless the schema has a
    Spec (data such as `laterality_mix`) at its path."""
    for key, value in node.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(_node(SCHEMA, path), dict):
            yield from _set_leaves(value, path)
        else:
            yield path, value


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
    for path, spec in _leaves(SCHEMA):
        dotted = ".".join(path)
        assert isinstance(spec, Spec), f"{dotted}: {spec!r} is neither a section nor a Spec"
        if not spec.optional:
            assert any(_has(block, path) for block in _blocks()), (
                f"schema key {dotted} is set nowhere in params.yaml: remove it from brain3d/params_schema.py"
            )
        else:
            needle = READ_AS.get(path[-1], f'"{path[-1]}"')
            assert needle in code, f"optional key {dotted} is read nowhere in brain3d/ or stages/"


def test_every_value_params_yaml_sets_has_a_type_it_fits():
    seen = 0
    for block in _blocks():
        for path, value in _set_leaves(block):
            spec = _node(SCHEMA, path)
            assert isinstance(spec, Spec), (
                f"params.yaml sets {'.'.join(path)}, which has no type in the schema"
            )
            if path != ("profile",):  # its choices are the file's own blocks (config.validate)
                assert spec.problem(value) is None, f"{'.'.join(path)}: {spec.problem(value)}"
            seen += 1
    assert seen > 100  # the walk reached the leaves, profiles included


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


def test_a_section_set_to_a_value_is_refused_and_a_data_dict_is_checked_as_a_value():
    assert _error(_with("phase2b", 4)) == "params: phase2b: expected a mapping of keys, got 4"
    config.resolve(_with("profiles.demo.download.laterality_mix", {"left": 1, "bilateral": 2.5}))
    assert _error(_with("profiles.demo.download.laterality_mix", {"left": 1.0, "any side": 2.0})) == (
        "params: download.laterality_mix in profiles.demo: {'left': 1.0, 'any side': 2.0} holds key 'any side', "
        "which is not a valid choice (expected a mapping of names among left, right, bilateral, undefined to "
        "numbers >= 0)"
    )


def test_params_errors_are_value_errors_and_a_missing_profile_is_named():
    assert issubclass(config.ParamsError, ValueError)
    params = copy.deepcopy(PARAMS)
    del params["profile"]
    assert _error(params) == "params: profile: missing; set it to one of ['demo', 'paper']"


# ------------------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("phase2b.lora_rank", "four", MISFIT),
        ("phase2b.lora_rank", 0, "params: phase2b.lora_rank: 0 is out of range (expected an integer >= 1)"),
        (
            "profiles.demo.phase2b.lr",
            "fast",
            "params: phase2b.lr in profiles.demo: 'fast' is not a number (expected a number > 0)",
        ),
        (
            "phase2b.lora_rank",
            True,
            "params: phase2b.lora_rank: true is not an integer (expected an integer >= 1)",
        ),
        (
            "phase2b.lora_rank",
            4.0,
            "params: phase2b.lora_rank: 4.0 is not an integer (expected an integer >= 1)",
        ),
        (
            "phase1.laterality_flip",
            1,
            "params: phase1.laterality_flip: 1 is not true or false (expected true or false)",
        ),
        (
            "profiles.paper.phase2b.lr_lora",
            "5e-5",  # a number in quotes is text
            "params: phase2b.lr_lora in profiles.paper: '5e-5' is text, not a number; write it unquoted as 5e-05 "
            "(expected a number > 0)",
        ),
        (
            "phase2b.lora_dropout",
            1.0,
            "params: phase2b.lora_dropout: 1.0 is out of range (expected a number in [0, 1))",
        ),
        (
            "split.fractions",
            [0.7, 0.1, 0.3],
            "params: split.fractions: [0.7, 0.1, 0.3] sums to 1.1 (expected a list of 3 numbers in (0, 1) summing "
            "to 1)",
        ),
        (
            "split.fractions",
            [0.8, 0.2],
            "params: split.fractions: [0.8, 0.2] has 2 items (expected a list of 3 numbers in (0, 1) summing to 1)",
        ),
        (
            "profiles.demo.preprocess.shape",
            [32, 0, 64],
            "params: preprocess.shape in profiles.demo: [32, 0, 64] holds 0, which is out of range (expected a "
            "list of 3 integers >= 1)",
        ),
        (
            "model.compressor",
            "seqpool",
            "params: model.compressor: 'seqpool' is not a valid choice (expected one of seq_pool, grid_pool, "
            "perceiver)",
        ),
        (
            "model.inflation",
            None,
            "params: model.inflation: null is not a valid choice (expected one of mean, sum, center)",
        ),
        (
            "preprocess.fov_mm",
            [180, "x", 180],
            "params: preprocess.fov_mm: [180, 'x', 180] holds 'x', which is not a number (expected a list of 3 "
            "numbers > 0, or null)",
        ),
        (
            "baselines.med3dvlm.path",
            "",
            "params: baselines.med3dvlm.path: '' is not a path (expected a path (a non-empty string))",
        ),
        ("profile", "papr", "params: profile: 'papr' is not a valid choice (expected one of demo, paper)"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_in_one_line(path, value, message):
    assert _error(_with(path, value)) == message


def test_numbers_where_numbers_go_nulls_where_null_is_allowed():
    for path, value in [
        ("profiles.demo.phase2b.lr", 1),  # an int where a float is expected (YAML `1`)
        ("lime.cnn.lr", 1),
        ("preprocess.fov_mm", [180, 216.5, 180]),
        ("profiles.paper.evaluate.bertscore_layers", None),
        ("baselines.med3dvlm.revision", "0123abc"),
        ("generate.repetition_exempt", []),
        ("profiles.paper.phase2b.lr_lora", 5e-05),
    ]:
        config.resolve(_with(path, value))


def test_a_misfit_in_the_inactive_profile_fails_the_active_one_and_all_problems_come_at_once():
    assert PARAMS["profile"] == "demo"
    params = _with("profiles.paper.phase1.epochs", "fifty")
    params["lime"] = {**PARAMS["lime"], "seed": -1, "n_sampels": 3}
    assert _error(params).splitlines() == [
        "params: lime.seed: -1 is out of range (expected an integer >= 0)",
        "params: lime.n_sampels: unknown key; did you mean lime.n_samples?",
        "params: phase1.epochs in profiles.paper: 'fifty' is not an integer (expected an integer >= 1)",
    ]


def _settings() -> list[tuple[str, str, str]]:
    """(the `-S` path, the key, ' in profiles.<name>' or '') of every value params.yaml sets."""
    shared = [(".".join(p), ".".join(p), "") for p, _ in _set_leaves(_blocks()[0])]
    return shared + [
        (f"profiles.{name}.{'.'.join(p)}", ".".join(p), f" in profiles.{name}")
        for name, block in PARAMS["profiles"].items()
        for p, _ in _set_leaves(block)
    ]


@pytest.mark.parametrize(("override", "key", "where"), [s for s in _settings() if s[1] != "profile"])
def test_every_value_refuses_one_of_another_type(override, key, where):
    """A property of the schema over params.yaml: each value it sets (shared or in a profile) is type-checked,
    so a value of another YAML type (text for a number, a number for text, a bool for an int, ...) fails in
    one line naming the key, the value and what is expected."""
    value = _node(PARAMS, tuple(override.split(".")))
    for wrong in _other_types(value):
        message = _error(_with(override, wrong))
        assert message.startswith(f"params: {key}{where}: {show(wrong)} "), message
        assert "\n" not in message and message.endswith(")") and "(expected " in message, message


def _other_types(value) -> list:
    """Values of other YAML types than `value` (which params.yaml sets): none of them may be accepted."""
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, int):
        return ["8", True, 2.5]
    if isinstance(value, float):
        return ["0.5", True, [value]]
    if isinstance(value, str):
        return [1, False, [value]]
    if isinstance(value, (list, dict)):
        return ["x", 3]
    return [True, {}]  # null: a nullable spec takes null or its typed value, neither of these


# ------------------------------------------------------------------------------------------- the code agrees


def test_the_schemas_choices_are_the_codes():
    from brain3d.baselines.braingemma3d import LOADERS
    from brain3d.data.phantom.plan import SIDES
    from brain3d.data.skullstrip import METHODS
    from brain3d.models.compressor import COMPRESSORS
    from brain3d.models.encoder import INFLATIONS, VARIANTS

    model = SCHEMA["model"]
    assert model["compressor"].choices == COMPRESSORS
    assert model["inflation"].choices == INFLATIONS
    assert model["variant"].choices == VARIANTS
    assert SCHEMA["baselines"]["braingemma3d_release"]["loader"].choices == LOADERS
    assert SCHEMA["preprocess"]["skull_strip"].choices == tuple(METHODS)
    assert SCHEMA["corpus"]["laterality_mix"].key.choices == SIDES
    assert SCHEMA["download"]["laterality_mix"] == SCHEMA["corpus"]["laterality_mix"]


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


def test_the_cli_refuses_bad_params_before_loading_a_model(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_with("phase2b.lora_rank", "four"), sort_keys=False))
    out = subprocess.run(
        [sys.executable, "-m", "brain3d.cli", "report", str(tmp_path / "scan.nii.gz"), "--params", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"brain3d: {bad}: {MISFIT}"]


@pytest.mark.parametrize(
    ("path", "value", "message"), [("phase2b.lora_rnak", 4, TYPO), ("phase2b.lora_rank", "four", MISFIT)]
)
def test_a_stage_stops_before_any_work_with_one_line(tmp_path, monkeypatch, capsys, path, value, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with(path, value), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        with entrypoint.run("phase2b", ("model", "phase2b")):
            pytest.fail("the stage body ran")
    assert exc.value.code == 1
    assert capsys.readouterr().err.strip() == f"phase2b: error: {message}"


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
