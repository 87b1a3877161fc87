"""The experiment tables (brain3d.metrics.experiments) and their entry point `python -m stages.ablations` on a
canned `dvc exp show --json` document (DVC 3.67, taken from the tiny pipeline: a baseline commit, two finished
experiments, a failed one and a queued one)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from brain3d.metrics import experiments
from brain3d.metrics.formatting import cell

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "tests" / "data" / "dvc_exp_show.json"
# stages/ is run as `python -m stages.<name>` from the repository root and is not an installed package
_spec = importlib.util.spec_from_file_location("stages.ablations", ROOT / "stages" / "ablations.py")
ablations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablations)


@pytest.fixture(scope="module")
def doc() -> list[dict]:
    return json.loads(DOC.read_text())


def _metrics(doc, name, system="phase2b"):
    for commit in doc:
        for exp in commit.get("experiments") or []:
            if exp["name"] == name:
                return exp["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"][system]
    raise KeyError(name)


def test_one_row_per_commit_and_experiment(doc):
    table = experiments.build_table(doc).set_index("experiment")
    # the baseline commit, then its experiments by name; no workspace row
    assert list(table.index) == ["main", "bad-comp", "queued-r8", "r32-queued", "tiny-r4"]
    assert table["state"].to_dict() == {
        "main": "success",
        "queued-r8": "success",
        "tiny-r4": "success",
        "bad-comp": "failed",
        "r32-queued": "queued",
    }
    assert table["phase2b.lora_rank"].to_dict() == {
        "main": 16,
        "queued-r8": 8,
        "tiny-r4": 4,
        "bad-comp": 4,
        "r32-queued": 32,
    }
    assert table.loc["bad-comp", "model.compressor"] == "bogus"
    assert table.loc["main", "model.compressor"] == "grid_pool"
    assert not table.loc["main", "phase1.laterality_flip"] and table.loc["main", "phase2b.laterality_flip"]
    assert set(table["baseline"]) == {table.loc["main", "rev"]}


def test_metrics_and_cis_come_from_each_experiments_metrics_json(doc):
    table = experiments.build_table(doc).set_index("experiment")
    want = _metrics(doc, "tiny-r4")
    for m in experiments.METRICS:
        for suffix in ("", "_low", "_high"):
            assert table.loc["tiny-r4", m + suffix] == pytest.approx(want[m + suffix]), m + suffix
    # a failed or queued experiment shows no numbers, even where DVC lists stale workspace files
    assert all(math.isnan(table.loc["bad-comp", m]) for m in experiments.METRICS)
    assert all(math.isnan(table.loc["r32-queued", m]) for m in experiments.METRICS)


def test_other_system(doc):
    table = experiments.build_table(doc, system="phase2b_shuffled").set_index("experiment")
    assert table.loc["tiny-r4", "lat_f1"] == pytest.approx(
        _metrics(doc, "tiny-r4", "phase2b_shuffled")["lat_f1"]
    )
    assert (experiments.build_table(doc, system="nonexistent")[list(experiments.METRICS)].isna()).all().all()


def test_markdown_cells_and_notes(doc):
    table = experiments.build_table(doc)
    md = experiments.markdown(table, "phase2b")
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header, rows = lines[0], {line.split(" | ")[0][2:]: line for line in lines[1:]}
    assert "LoRA r" in header and "compressor" in header and "Lat F1" in header
    m = _metrics(doc, "tiny-r4")
    assert cell(m["lat_f1"], m["lat_f1_low"], m["lat_f1_high"]) in rows["tiny-r4"]
    # rank, compressor, inflation, findings 1 (blank: the canned run predates both), flip 1, 2A, 2B, corpus
    # and corpus rows (blank: predate them), phase-1 epochs (its profile's), cell targets, bilateral draws,
    # refit, decoder, guide, k (blank), seed
    assert "| 4 | grid_pool |  |  | false | true | true |  |  | 1 |  |  |  |  |  |  | 42 |" in rows["tiny-r4"]
    assert "failed: no metrics" in rows["bad-comp"]
    assert "queued: no metrics" in rows["r32-queued"]
    assert all(row.count("|") == header.count("|") for row in rows.values())


def test_main_writes_md_and_csv(tmp_path, capsys):
    ablations.main(["--from-json", str(DOC), "--out", str(tmp_path / "ablations")])
    csv = pd.read_csv(tmp_path / "ablations.csv")
    assert list(csv["experiment"]) == ["main", "bad-comp", "queued-r8", "r32-queued", "tiny-r4"]
    assert {"lat_f1", "lat_f1_low", "lat_f1_high", "phase2b.lora_rank", "state"} <= set(csv.columns)
    assert (tmp_path / "ablations.md").read_text() in capsys.readouterr().out


def test_exp_show_outside_a_repository_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="dvc exp show --json` failed"):
        ablations.exp_show()


def test_exp_show_lists_the_experiments_of_a_given_baseline_commit(tmp_path, monkeypatch):
    """--rev: the grid's baseline commit, once HEAD has moved on (real git + dvc, no experiments)."""
    import subprocess
    import sys

    def run(*cmd):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    shas = []
    for i in range(2):
        (tmp_path / "params.yaml").write_text(f"a: {i}\n")
        run("git", "add", "-A")
        run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"c{i}")
        shas.append(
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
            ).stdout.strip()
        )
    monkeypatch.chdir(tmp_path)
    assert [c["rev"] for c in ablations.exp_show() if c["rev"] != "workspace"] == [shas[1]]
    assert [c["rev"] for c in ablations.exp_show(rev=shas[0]) if c["rev"] != "workspace"] == [shas[0]]
    with pytest.raises(SystemExit, match="dvc exp show --json` failed"):
        ablations.exp_show(rev="no-such-commit")


def _with_seeds(doc, values: dict[int, float]) -> list[dict]:
    """The canned document plus `seed-<n>` experiments: copies of tiny-r4 with phase1.seed = n and the phase
    2B Lat F1 set to values[n] (the baseline commit keeps its own metrics, seed 42)."""
    import copy

    doc = copy.deepcopy(doc)
    commit = next(c for c in doc if c.get("experiments"))
    template = next(e for e in commit["experiments"] if e["name"] == "tiny-r4")
    for seed, lat in values.items():
        exp = copy.deepcopy(template)
        exp["name"] = f"seed-{seed}"
        rev = exp["revs"][0]
        rev["data"]["params"]["params.yaml"]["data"]["phase1"]["seed"] = seed
        rev["data"]["metrics"]["reports/metrics.json"]["data"]["phase2b"]["lat_f1"] = lat
        commit["experiments"].append(exp)
    return doc


def test_seed_table_is_mean_and_sd_over_the_commit_and_its_seed_experiments(doc):
    runs = experiments.seed_runs(_with_seeds(doc, {1: 0.5, 2: 0.7}))
    assert [(name, seed) for name, seed, *_ in runs] == [("main", 42), ("seed-1", 1), ("seed-2", 2)]
    long = experiments.seed_table(runs)
    lat = long[(long["system"] == "phase2b") & (long["metric"] == "lat_f1")].set_index("seed")["mean"]
    base = next(c for c in doc if c.get("experiments"))["data"]["metrics"]["reports/metrics.json"]["data"][
        "phase2b"
    ]["lat_f1"]
    assert lat.to_dict() == pytest.approx({42: base, 1: 0.5, 2: 0.7})
    md = experiments.seeds_markdown(long, 42)
    row = next(line for line in md.splitlines() if line.startswith("| phase2b |"))
    mean, sd = pd.Series([base, 0.5, 0.7]).mean(), pd.Series([base, 0.5, 0.7]).std()
    assert f"{mean:.3f} ± {sd:.3f}".replace("0.", ".") in row
    assert (
        sum(line.startswith(("| 42 |", "| 1 |", "| 2 |")) for line in md.splitlines()) == 3
    )  # one check row per seed


def test_two_baseline_commits_one_table_and_the_first_ones_seeds(doc):
    """`--rev A --rev B`: every experiment of both commits in the ablation table; the seeds of A only."""
    import copy

    first = _with_seeds(doc, {1: 0.5, 2: 0.7})
    second = copy.deepcopy([c for c in _with_seeds(doc, {1: 0.1}) if c.get("experiments")])
    second[0]["rev"] = "f" * 40
    table = experiments.build_table(first + second)
    assert len(table) == len(experiments.build_table(first)) + 1 + len(second[0]["experiments"])
    assert "fffffff" in set(table["rev"])  # the second commit's own row
    runs = experiments.seed_runs(first + second)
    assert [(name, seed) for name, seed, *_ in runs] == [("main", 42), ("seed-1", 1), ("seed-2", 2)]
    assert [m["phase2b"]["lat_f1"] for _, seed, m, _ in runs if seed == 1] == [0.5]


def test_main_writes_the_seed_tables_beside_the_ablation_table(doc, tmp_path, capsys):
    saved = tmp_path / "exp_show.json"
    saved.write_text(json.dumps(_with_seeds(doc, {1: 0.5, 2: 0.7})))
    ablations.main(["--from-json", str(saved), "--out", str(tmp_path / "ablations")])
    seeds = (tmp_path / "seeds.md").read_text()
    assert (
        seeds.startswith("# Seeds: every system over 3 seeds (1, 2, 42)") and seeds in capsys.readouterr().out
    )
    assert set(pd.read_csv(tmp_path / "seeds.csv")["seed"]) == {1, 2, 42}


def test_a_row_shows_the_profile_values_of_params_that_todays_schema_refuses(doc):
    """An experiment of an older commit may hold a key since renamed, or a value since ruled out: its row
    still shows what it ran with, the active profile's keys included (not only the shared sections)."""
    import copy

    doc = copy.deepcopy(doc)
    commit = next(c for c in doc if c.get("experiments"))
    params = next(e for e in commit["experiments"] if e["name"] == "tiny-r4")["revs"][0]["data"]["params"]
    data = params["params.yaml"]["data"]
    data["phase2b"]["lora_rnak"] = 4  # a key today's schema does not know
    data["profiles"]["demo"]["corpus"] = {"n_subjects": 250}  # set in the profile
    data["model"]["compressor"] = "bogus"
    table = experiments.build_table(doc).set_index("experiment")
    assert table.loc["tiny-r4", "corpus.n_subjects"] == 250
    assert table.loc["tiny-r4", "model.compressor"] == "bogus"
