"""The `brain3d` command, run as a user runs it (a subprocess) on a tiny model directory laid out like
models/phase2b: help, a report for a good scan (text and JSON), a LIME figure, many scans in one call with
--out, the FLAIR check, the model named in every result, and one clear line on stderr with exit status 2 for
every kind of bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brain3d.cli import DEMO_WARNING, _parser, findings, settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "brain3d"  # the console script (pyproject [project.scripts])
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "BRAIN3D_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def brain3d(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "brain3d.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)


OPTIONS = ("--skull-stripped", "--device", "cpu", "--max-new-tokens", "12")


def report(scan: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    return brain3d("report", str(scan), "--model", str(model), *OPTIONS, *extra)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """A brain-extracted FLAIR-like scan (the MNI anatomy with a bright left frontal lesion, stored LPS
    like DICOM-derived files) and every kind of bad input."""
    from brain3d.data.atlas import flair_like, mni

    d = tmp_path_factory.mktemp("scans")
    atlas = mni(2)
    flair = flair_like(atlas.gm, atlas.wm, atlas.csf) * atlas.brain
    x, y, z = atlas.world_axes()
    lesion = atlas.brain & (
        (x[:, None, None] + 30) ** 2 + (y[None, :, None] - 25) ** 2 + (z[None, None, :] - 20) ** 2 < 15**2
    )
    flair[lesion] = 1.0
    flip = np.array(
        [[-1, 0, 0, atlas.shape[0] - 1], [0, -1, 0, atlas.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    affine = atlas.affine @ flip  # voxel i -> n - 1 - i on the first two axes: the same head, stored LPS
    good = save(d / "good.nii.gz", (1000 * flair[::-1, ::-1]).astype(np.int16), affine)

    rng = np.random.default_rng(0)
    out = {"good": good, "missing": d / "absent.nii.gz"}
    (out.setdefault("text", d / "notes.nii.gz")).write_text("patient notes, not an image\n" * 20)
    data = good.read_bytes()
    (out.setdefault("truncated", d / "truncated.nii.gz")).write_bytes(data[: len(data) // 2])
    out["4d"] = save(d / "series.nii.gz", rng.random((20, 20, 20, 3)).astype(np.float32))
    for name, contrast in (("t1", (0.55, 0.85, 0.1)), ("t2", (0.6, 0.45, 1.0))):  # (GM, WM, CSF)
        other = flair_like(atlas.gm, atlas.wm, atlas.csf, contrast) * atlas.brain
        out[name] = save(d / f"{name}.nii.gz", (1000 * other).astype(np.int16), atlas.affine)
    nan = (1000 * flair).astype(np.float32)
    nan[40, 50, 40] = np.nan
    out["nan"] = save(d / "nan.nii.gz", nan, atlas.affine)
    out["zero"] = save(d / "zero.nii.gz", np.zeros((40, 40, 40), np.float32))
    out["noise"] = save(
        d / "noise.nii.gz", (rng.random((40, 40, 40)) + 0.1).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])
    )
    cube = np.zeros((60, 60, 60), np.float32)
    cube[10:50, 10:50, 10:50] = 1 + 0.1 * rng.random((40, 40, 40))
    out["cube"] = save(d / "cube.nii.gz", cube, np.diag([3.0, 3.0, 3.0, 1.0]))
    (out.setdefault("junk_gzip", d / "junk.nii.gz")).write_bytes(gzip.compress(b"\x00" * 500))
    return out


# --------------------------------------------------------------------------------------------- help


def test_help_explains_the_command():
    top = brain3d("--help")
    assert top.returncode == 0 and "report" in top.stdout and "radiology reports" in top.stdout
    sub = brain3d("report", "--help")
    assert sub.returncode == 0, sub.stderr
    for option in (
        "--model",
        "--explain",
        "--json",
        "--skull-stripped",
        "--skull-strip",
        "--lime-samples",
        "--device",
        "--params",
        "models/phase2b",
        "lime.n_samples",
        "BrainGemma3D",
        "release's own defaults",
    ):
        assert option in sub.stdout, f"`brain3d report --help` does not mention {option}"
    assert brain3d().returncode == 2  # no command: argparse's usage error


def test_decoding_and_lime_settings_are_the_stages_params():
    from brain3d import config
    from brain3d.generation import decoding_from_params
    from brain3d.interpretability.cases import LimeSettings

    cfg = config.load(ROOT / "params.yaml")
    args = _parser().parse_args(["report", "scan.nii.gz"])
    assert settings(cfg, args) == (
        decoding_from_params(cfg["generate"]),
        LimeSettings.from_params(cfg["lime"]),
    )
    args = _parser().parse_args(["report", "scan.nii.gz", "--max-new-tokens", "7", "--lime-samples", "5"])
    decoding, lime = settings(cfg, args)
    assert (decoding.max_new_tokens, lime.n_samples) == (7, 5)


def test_findings_are_negation_aware():
    f = findings("The lesion is located in the left frontal lobe with surrounding edema and necrosis.")
    assert f == {"side": "left", "anatomy": ["frontal"], "pathology": ["edema", "lesion", "necrosis"]}
    assert findings("No mass or edema is seen in the right temporal lobe. Normal study.")["side"] == "none"
    # a side stated only in a negation does not make the report bilateral
    assert (
        findings("A lesion is seen in the left frontal lobe. No lesion in the right hemisphere.")["side"]
        == "left"
    )


# ---------------------------------------------------------------------------------------- good scans


@pytest.fixture(scope="module")
def text_run(scans, tiny_model_dir, tmp_path_factory):
    """One good scan, its report as text, and its row in --out results.csv: (the run, the csv)."""
    csv = tmp_path_factory.mktemp("text") / "results.csv"
    return report(scans["good"], tiny_model_dir, "--out", str(csv)), csv


@pytest.fixture(scope="module")
def json_run(scans, tiny_model_dir, tmp_path_factory):
    png = tmp_path_factory.mktemp("explain") / "figures" / "lime.png"
    return report(scans["good"], tiny_model_dir, "--json", "--explain", str(png), "--lime-samples", "6"), png


def test_a_good_scan_prints_a_report_and_its_findings(text_run, tiny_model_dir):
    text_run, _ = text_run
    assert text_run.returncode == 0, text_run.stderr
    assert "Traceback" not in text_run.stderr
    # piped stderr holds nothing but the demo model's warning (the tiny model's card says "standins")
    assert text_run.stderr.splitlines() == [DEMO_WARNING.format(dir=tiny_model_dir)], text_run.stderr
    body, _, tail = text_run.stdout.rstrip("\n").rpartition("\n\n")
    assert body.strip(), "no report text"
    found, model = tail.splitlines()
    assert found.startswith("findings: side=") and "; anatomy=" in found and "; pathology=" in found
    assert (
        model.startswith(f"model: {tiny_model_dir.resolve()} (demo profile, phase2b")
        and "research use only" in model
    )


def test_json_output_and_explanation_figure(json_run, text_run):
    run, png = json_run
    text_run, _ = text_run
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    result = json.loads(run.stdout)
    assert isinstance(result["report"], str) and result["report"].strip()
    assert result["report"] == text_run.stdout.rstrip("\n").rpartition("\n\n")[0], "same seed, same report"
    f = result["findings"]
    assert set(f) == {"side", "anatomy", "pathology"}
    assert f["side"] in ("none", "left", "right", "bilateral", "undefined")
    assert isinstance(f["anatomy"], list) and isinstance(f["pathology"], list)
    assert f == findings(result["report"])
    p = result["side_probability"]
    assert (
        p is None if f["side"] not in ("left", "right") else sum(p.values()) == pytest.approx(1.0, abs=1e-3)
    )
    assert result["sequence"] == "FLAIR" and result["status"] == "ok"
    assert result["model"]["profile"] == "demo" and "phantom" in result["model"]["trained_on"]
    assert result["model"]["use"].startswith("research use only")
    # params' generate.select and guide, the model having a side detector
    assert result["model"]["decoder"] == "findings" and result["model"]["guide"] == "detector"
    assert result["explanation"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    import matplotlib.image as mpimg

    image = mpimg.imread(png)
    assert image.shape[1] > 2.5 * image.shape[0] and image[..., :3].std() > 0.05  # three planes, not blank


# ------------------------------------------------------------------------------ other libraries' chatter

QUIET_PROBE = """
import logging, warnings
chatty = logging.getLogger("chattylib")  # a library that set up its own handler and level before us
chatty.addHandler(logging.StreamHandler())
chatty.setLevel(logging.INFO)
chatty.propagate = False

from brain3d.cli import _quiet_libraries

_quiet_libraries()
import bitsandbytes  # noqa: F401  (on CPUs with AVX512-BF16 it logs a warning when imported)
from transformers.utils import logging as hf_logging

logging.getLogger("bitsandbytes.backends.cpu.ops").warning("library warning through the root logger")
chatty.info("library info through its own handler")
chatty.warning("library warning through its own handler")
hf_logging.get_logger("transformers.modeling_utils").warning("transformers warning")
warnings.warn_explicit("library UserWarning", UserWarning, "tuners.py", 1, module="peft.tuners")
warnings.warn_explicit("library FutureWarning", FutureWarning, "ops.py", 1, module="torch.ops")
logging.getLogger("bitsandbytes").error("library error")
logging.getLogger("brain3d.cli").warning("our warning")
warnings.warn_explicit("our UserWarning", UserWarning, "cli.py", 7, module="brain3d.cli")
"""


def test_other_libraries_log_records_and_warnings_stay_off_the_terminal():
    """What the CLI does first: below ERROR, only brain3d's own log records and warnings reach stderr."""
    run = subprocess.run(
        [sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "library error",
        "our warning",
        "cli.py:7: UserWarning: our UserWarning",
    ], f"stderr should hold only brain3d's lines (and a library's error), got:\n{run.stderr}"


# ----------------------------------------------------------------------------------------- bad input

BAD = {  # case -> what its one line must say
    "missing": "file not found",
    "text": "not a readable NIfTI",
    "junk_gzip": "not a readable NIfTI",
    "truncated": "truncated",
    "4d": "expected a 3D volume",
    "nan": "non-finite",
    "zero": "empty volume",
    "noise": "does not look like a brain",
    "cube": "does not look like a brain",
    "t1": "looks T1-weighted (white matter brighter than grey matter); Brain3D reads FLAIR",
    "t2": "does not look like a brain FLAIR",  # its contrast fails the template correlation first
    "no_model": "brain3d.json missing",
}


SCAN_CASES = [case for case in BAD if case != "no_model"]  # a failed row each; no_model refuses the call


@pytest.fixture(scope="module")
def bad_runs(scans, tiny_model_dir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every bad scan in one call, and a model folder without its card in another (two processes at a time:
    each pays the interpreter start-up). A bad scan alone takes the same path as among others (brain3d.cli
    `report`: a failed row, then its one line at the end), so one call checks them all: its stderr must hold
    one line per scan, in their order, and nothing else."""
    with ThreadPoolExecutor(2) as pool:
        paths = [str(scans[case]) for case in SCAN_CASES]
        many = pool.submit(brain3d, "report", *paths, "--model", str(tiny_model_dir), *OPTIONS)
        no_model = pool.submit(report, scans["good"], tmp_path_factory.mktemp("not_a_model"))
        return {"scans": many.result(), "no_model": no_model.result()}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_on_stderr_and_exit_2(bad_runs, scans, case):
    run = bad_runs["no_model" if case == "no_model" else "scans"]
    assert run.returncode == 2, f"{case}: exit {run.returncode}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    if case == "no_model":
        assert len(lines) == 1, f"{case}: expected one line on stderr, got {len(lines)}:\n{run.stderr}"
        line = lines[0]
    else:
        named = [str(scans[c]) for c in SCAN_CASES]
        assert [ln.split(": ")[1] for ln in lines] == named, f"one line per bad scan, in order:\n{run.stderr}"
        line = lines[SCAN_CASES.index(case)]
        assert line.startswith(f"brain3d: {scans[case]}: "), "the message names the file"
    assert line.startswith("brain3d: ") and BAD[case] in line, line
    assert run.stdout == ""


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(scans, tiny_model_dir):
    run = brain3d(
        "report", str(scans["good"]), "--model", str(tiny_model_dir), "--skull-stripped", "--device", "cuda"
    )
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1 and "CUDA is not available" in run.stderr


# ------------------------------------------------------------------------------------ many scans at once


def test_many_scans_in_one_call_with_out_rows_and_failures_at_the_end(
    scans, tiny_model_dir, tmp_path, text_run
):
    """A folder (two good scans, one T1) plus a missing file: the model loads once, every good scan gets its
    report, the bad ones are listed at the end, exit status 2, and --out holds one row per scan (a .csv: the
    one-scan run of text_run)."""
    import shutil

    import pandas as pd

    folder = tmp_path / "cohort"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(scans["good"], folder / "a.nii.gz")
    shutil.copy(scans["good"], folder / "sub" / "b.nii.gz")
    shutil.copy(scans["t1"], folder / "c.nii.gz")
    missing = tmp_path / "absent.nii.gz"
    out = tmp_path / "results.jsonl"
    run = brain3d(
        "report",
        str(folder),
        str(missing),
        "--model",
        str(tiny_model_dir),
        "--skull-stripped",
        "--device",
        "cpu",
        "--max-new-tokens",
        "12",
        "--out",
        str(out),
        "--workers",
        "2",
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == DEMO_WARNING.format(dir=tiny_model_dir)
    assert [line.split(": ")[1] for line in lines[1:]] == [str(folder / "c.nii.gz"), str(missing)], lines
    assert "looks T1-weighted" in lines[1] and "file not found" in lines[2]
    assert run.stdout.count("findings: side=") == 2 and run.stdout.count("== ") == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(Path(r["scan"]).name, r["status"]) for r in rows] == [
        ("a.nii.gz", "ok"),
        ("c.nii.gz", "failed"),
        ("b.nii.gz", "ok"),
        ("absent.nii.gz", "failed"),
    ]
    a, c, b, _ = rows
    assert a["report"] == b["report"], "the same scan, the same seed: the same report"
    assert a["model"]["dir"] == str(tiny_model_dir.resolve()) and set(a["seconds"]) == {
        "preprocess",
        "model_load",
        "generate",
    }
    assert (
        a["seconds"]["model_load"] > 0 and b["seconds"]["model_load"] == 0
    )  # loaded once, for the first scan
    assert "looks T1-weighted" in c["reason"] and "report" not in c
    run, csv = text_run  # the same scan as a.nii.gz, alone
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(csv)
    assert list(table["status"]) == ["ok"] and table.loc[0, "model_profile"] == "demo"
    assert table.loc[0, "report"] == a["report"] and "findings_side" in table


def test_any_sequence_is_read_when_the_user_says_so(scans, tiny_model_dir):
    run = report(scans["t1"], tiny_model_dir, "--allow-any-sequence", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["sequence"] == "T1"


def test_model_info_names_revision_and_dvc_lock_hash(tmp_path, tiny_model_dir):
    """A model that is a DVC output of a git checkout: its revision and dvc.lock hash; elsewhere: none."""
    import shutil

    from brain3d.cli import model_info
    from brain3d.models.checkpoint import read_card

    card = read_card(tiny_model_dir)
    info = model_info(tiny_model_dir, card)
    assert (info["profile"], info["revision"], info["dvc_lock_md5"]) == ("demo", None, None)
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repo / "models" / "phase2b")
    (repo / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  phase2b:\n    cmd: python -m stages.phase2b\n"
        "    outs:\n    - path: models/phase2b\n      md5: abc123.dir\n"
    )
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    info = model_info(repo / "models" / "phase2b", card)
    assert info["dvc_lock_md5"] == "abc123.dir" and len(info["revision"]) == 40
    assert model_info(tiny_model_dir, {**card, "backbones": {}})["profile"] == "unknown"


def test_the_default_model_is_the_repositorys_not_the_working_directorys(monkeypatch):
    from brain3d import cli

    monkeypatch.delenv("BRAIN3D_MODEL", raising=False)
    assert cli._default_model() == ROOT / "models" / "phase2b"
    monkeypatch.setenv("BRAIN3D_MODEL", "/somewhere/else")
    assert cli._default_model() == Path("/somewhere/else")


def test_side_probability_is_the_models_and_follows_the_side(tiny_model_dir):
    """p(left) + p(right) = 1; a report and its mirror get the same answer (the same two candidates, labelled
    by side); the odds are the model's summed token log-likelihoods of the report and its mirror."""
    import torch

    from brain3d.cli import side_probabilities
    from brain3d.data.reports import swap_laterality
    from brain3d.models.model import Brain3D

    model = Brain3D.from_pretrained(tiny_model_dir, "cpu")
    torch.manual_seed(0)
    z = model.visual(torch.rand(1, 1, *model.visual.encoder.volume_shape))
    text = "A lesion is seen in the left frontal lobe with surrounding edema."
    p = side_probabilities(model, z, text)
    q = side_probabilities(model, z, swap_laterality(text))
    assert set(p) == {"left", "right"} and sum(p.values()) == pytest.approx(1.0, abs=1e-9)
    assert q == p
    ll = model.log_likelihood(z.expand(2, -1, -1), [text, swap_laterality(text)], reduction="sum").double()
    assert np.log(p["left"] / p["right"]) == pytest.approx(float(ll[0] - ll[1]), abs=1e-3)
    assert side_probabilities(model, z, "No lesion. Normal study.") is None


def test_a_model_without_a_findings_head_decodes_plainly():
    """generate.select findings needs the guide that generate.guide names (phase 1's findings head or side
    detector): a card without it (phase1.findings_weight 0, detector.epochs 0, a release) gets the paper's plain
    decoder rather than an error on every scan."""
    import argparse

    from brain3d import config
    from brain3d.cli import settings

    cfg = config.load(ROOT / "params.yaml")
    assert cfg["generate"]["select"] == "findings"
    args = argparse.Namespace(max_new_tokens=None, lime_samples=None)
    assert cfg["generate"]["guide"] == "detector"
    assert settings(cfg, args, {"detector": "detector.safetensors"})[0].select == "findings"
    assert (
        settings(cfg, args, {"findings": "findings.safetensors"})[0].select == "plain"
    )  # not the guide named
    assert (
        settings({**cfg, "generate": {**cfg["generate"], "guide": "head"}}, args, {"findings": "f"})[0].select
        == "findings"
    )
    assert settings(cfg, args, {"phase": "phase2b"})[0].select == "plain"
