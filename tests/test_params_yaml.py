"""params.yaml survives `dvc exp run -S` (issue 30): an override changes the line of the key it sets, nothing else.

DVC 3.67 writes `-S` overrides with `dvc.utils.hydra.apply_overrides`: ruamel.yaml loads params.yaml in
round-trip mode, OmegaConf applies the overrides to a plain copy, the copy is merged back (mappings in place,
so their comments and flow style stay; every list and scalar is replaced by its plain value) and ruamel dumps
it with `default_flow_style=False` and its 80-column width. So a flow list at block level comes back as a block
list (a comment after it is dropped), null comes back empty, quotes go where not needed, and a flow mapping or
plain string past 80 columns is wrapped with a trailing space. params.yaml is written in the style that this
round trip keeps; these tests write overrides to a copy with DVC's own code (no `dvc exp run`, no git).
"""

from __future__ import annotations

import difflib
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from brain3d import config

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
FOLDED = {("baselines", "instruction"), ("baselines", "question")}  # `>-` strings over several lines


def exp_run_set(tmp_path: Path, *overrides: str) -> tuple[list[str], list[str]]:
    """params.yaml's lines before and after DVC writes `dvc exp run -S <override> ...` into a copy of it (as
    dvc.repo.experiments: `to_path_overrides`, then `apply_overrides` per params file)."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, copy)
    for path, items in to_path_overrides(list(overrides)).items():
        assert path == "params.yaml"
        apply_overrides(copy, items)
    return PARAMS.read_text().splitlines(), copy.read_text().splitlines()


def changed(old: list[str], new: list[str]) -> list[tuple[str, str]]:
    """(old line, new line) of every line an override rewrote; fails where lines were added or removed."""
    pairs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag != "equal":
            assert tag == "replace" and i2 - i1 == j2 - j1, (
                f"lines added or removed:\n{old[i1:i2]}\n{new[j1:j2]}"
            )
            pairs += zip(old[i1:i2], new[j1:j2])
    return pairs


def test_writing_params_yaml_back_unchanged_is_byte_identical(tmp_path):
    old, new = exp_run_set(tmp_path)
    assert (tmp_path / "params.yaml").read_bytes() == PARAMS.read_bytes()
    old, new = exp_run_set(tmp_path, "phase2b.lora_rank=16", "model.grid=[2,4,4]", "preprocess.fov_mm=null")
    assert new == old  # an override to the value already there


@pytest.mark.parametrize(
    ("override", "before", "after"),
    [
        ("phase2b.lora_rank=4", "  lora_rank: 16", "  lora_rank: 4"),  # shared
        ("profiles.demo.phase2b.lr=0.001", "      lr: 0.0005", "      lr: 0.001"),  # a profile block
        (
            "profiles.demo.preprocess.shape=[16,32,32]",  # a list
            "    preprocess: {shape: [32, 64, 64]}",
            "    preprocess: {shape: [16, 32, 32]}",
        ),
        (
            "split.fractions=[0.6,0.2,0.2]",
            "split: {fractions: [0.7, 0.1, 0.2], seed: 42}  # fractions: train / val / test, subject level, "
            "stratified by cohort x laterality",
            "split: {fractions: [0.6, 0.2, 0.2], seed: 42}  # fractions: train / val / test, subject level, "
            "stratified by cohort x laterality",
        ),
        (  # DVC writes a small float as YAML 1.2 does, which config.read takes for a number (not YAML 1.1 text)
            "profiles.paper.phase2b.lr_lora=0.00001",
            "      lr_lora: 0.00005",
            "      lr_lora: 1e-05",
        ),
    ],
)
def test_one_override_changes_exactly_its_line(tmp_path, override, before, after):
    old, new = exp_run_set(tmp_path, override)
    assert changed(old, new) == [(before, after)]
    assert config.read(tmp_path / "params.yaml") == _set(config.read(PARAMS), override)
    config.load(tmp_path / "params.yaml")  # what the stages read: valid, every profile block included


def ablation_grid() -> list[tuple[str, list[str]]]:
    """(experiment, its `-S` overrides) as ./ablations.sh queues them (`queue NAME OVERRIDE...`; seed 1 for
    the `seed-$seed` loop)."""
    grid = []
    for line in (ROOT / "ablations.sh").read_text().splitlines():
        if line.strip().startswith("queue ") and "{" not in line:
            words = shlex.split(line.replace("$seed", "1"))
            grid.append((words[1], words[2:]))
    return grid


def test_each_ablation_changes_only_the_lines_of_its_keys(tmp_path):
    grid = ablation_grid()
    assert len(grid) >= 9 and ("lora-r4", ["phase2b.lora_rank=4"]) in grid
    for name, overrides in grid:
        old, new = exp_run_set(tmp_path, *overrides)
        pairs = changed(old, new)
        assert len(pairs) == len(overrides), (name, pairs)  # one line per key, comments kept
        assert [a.partition("#")[2] for a, _ in pairs] == [b.partition("#")[2] for _, b in pairs], name
        expected = config.read(PARAMS)
        for override in overrides:
            expected = _set(expected, override)
        assert config.read(tmp_path / "params.yaml") == expected, name
        config.load(tmp_path / "params.yaml")


def test_overriding_every_value_at_once_changes_only_the_lines_that_hold_them(tmp_path):
    """A property of the layout: every value params.yaml sets (shared and in the profiles, flow mappings
    included), given a longer value, is rewritten on its own line(s) and nowhere else; no line wraps."""
    from ruamel.yaml import YAML

    doc = YAML(typ="rt").load(PARAMS.read_text())
    overrides, lines = [], set()
    for path, parent, key in _leaves(doc):
        if path in FOLDED or path[-2:] in FOLDED:
            continue
        value = parent[key]
        overrides.append(f"{'.'.join(path)}={_longer(value)}")
        if isinstance(value, list) and not value.fa.flow_style():  # a block list: its items' lines
            lines |= {value.lc.item(i)[0] for i in range(len(value))}
        else:
            lines.add(parent.lc.key(key)[0])
    assert len(overrides) > 100
    old, new = exp_run_set(tmp_path, *overrides)
    assert len(new) == len(old), "a line was wrapped or a comment dropped"
    assert {i for i, (a, b) in enumerate(zip(old, new)) if a != b} == lines
    expected = config.read(PARAMS)
    for override in overrides:
        expected = _set(expected, override)
    assert config.read(tmp_path / "params.yaml") == expected


def test_a_folded_string_override_rewrites_its_own_lines_only(tmp_path):
    """A long string is folded (`>-`, lines under 80 columns): DVC keeps the style of a string it replaces."""
    old, new = exp_run_set(tmp_path, "baselines.instruction=Read the slices.")
    start = old.index("  instruction: >-")
    assert new[: start + 1] == old[: start + 1] and new[start + 1] == "    Read the slices."
    assert new[start + 2 :] == old[start + 3 :]  # its two folded lines are now one, the rest is as it was
    assert config.read(tmp_path / "params.yaml")["baselines"]["instruction"] == "Read the slices."


# ------------------------------------------------------------------------------------------------ helpers


def _leaves(node, path: tuple[str, ...] = ()):
    """(path, parent mapping, key) of every non-mapping value under a ruamel round-trip mapping."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), node, key


def _longer(value) -> str:
    """An override value (Hydra syntax) unlike `value` and longer: a layout with no room would wrap it."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int):
        return str(value * 1000 + 7)
    if isinstance(value, float):
        return repr(round(value + 1.234567, 6))
    if isinstance(value, list):
        return "[" + ",".join(_longer(v) for v in value) + "]"
    return "a_longer_value_than_before"  # strings and nulls


def _set(params: dict, override: str) -> dict:
    """`params` with a Hydra `key.path=value` override applied, the value read as YAML."""
    key, value = override.split("=", 1)
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = yaml.safe_load(value.replace(",", ", "))
    return params
