"""`brain3d report` against hostile input (issue 28): hostile files cannot hurt, and nothing written can be
mistaken. Two good scans and a folder of malformed ones (a header claiming 30000^3 voxels, a gzip bomb,
truncated files, NaN transforms, a pipe, non-UTF-8 names, a DICOM series with a slice missing...) in one
call: exit status 2, a report row for each good scan and a failed row for each bad file, one line each on
stderr and never a traceback, memory within 1 GB of a clean run of the good scans alone. kill -9 half-way
keeps every finished row and a re-run completes the rest; a worker killed by the OS fails only its scan."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "brain3d"  # the console script (pyproject [project.scripts])
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "BRAIN3D_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "brain3d.cli"]
OPTIONS = ("--skull-stripped", "--device", "cpu", "--max-new-tokens", "12")
IS_ROOT = os.geteuid() == 0  # permissions do not stop root: the unreadable cases need another user


def good_scan(path: Path) -> Path:
    """A brain-extracted FLAIR-like scan: the MNI anatomy with a bright left frontal lesion (as test_cli)."""
    from brain3d.data.atlas import flair_like, mni

    atlas = mni(2)
    flair = flair_like(atlas.gm, atlas.wm, atlas.csf) * atlas.brain
    x, y, z = atlas.world_axes()
    lesion = (x[:, None, None] + 30) ** 2 + (y[None, :, None] - 25) ** 2 + (z[None, None, :] - 20) ** 2 < 225
    flair[atlas.brain & lesion] = 1.0
    nib.save(nib.Nifti1Image((1000 * flair).astype(np.int16), atlas.affine), str(path))
    return path


def header(shape, dtype=np.float32, **fields) -> bytes:
    """A NIfTI-1 header (and its 4 extension bytes) with `fields` set as given."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    hdr["vox_offset"] = 352
    for key, value in fields.items():
        hdr[key] = value
    return hdr.binaryblock + b"\0\0\0\0"


def gzip_bomb(path: Path) -> None:
    """A header describing 64^3 bytes, followed by 256 MiB of zeros: 260 KB on disk."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(pack.compress(header((64, 64, 64), np.uint8)))
        for _ in range(16):
            fh.write(pack.compress(bytes(1 << 24)))
        fh.write(pack.flush())


def _bad_files(d: Path, good: Path) -> dict[str, str]:
    """Writes the malformed inputs into `d`; returns {file name: what its failed row's reason must say}."""
    from brain3d.data.dicom import write_series

    volume = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32) + 1
    voxels = volume.tobytes(order="F")
    expected = {}

    def put(name: str, data: bytes, reason: str) -> None:
        (d / name).write_bytes(data)
        expected[name] = reason

    put(
        "huge.nii",
        header((30000, 30000, 30000)) + bytes(100),
        "30000x30000x30000 = 2.7e+13 voxels, more than",
    )
    gzip_bomb(d / "bomb.nii.gz")
    expected["bomb.nii.gz"] = "more data than the header describes"
    whole = good.read_bytes()
    put("truncated.nii.gz", whole[: len(whole) // 2], "truncated: the header needs")
    put("nan-affine.nii", header((12, 12, 12), srow_x=[np.nan, 0, 0, 0]) + voxels, "sform is not finite")
    put(
        "zero-pixdim.nii",
        header((12, 12, 12), pixdim=[1, 0, 0, 0, 1, 1, 1, 1]) + voxels,
        "invalid voxel size",
    )
    put("empty.nii.gz", b"", "empty file (0 bytes)")
    put("flat.nii", header((12, 12)) + voxels[: 12 * 12 * 4], "expected a 3D volume, got shape (12, 12) (2D)")
    put("all-nan.nii", header((12, 12, 12)) + np.full(1728, np.nan, np.float32).tobytes(), "1728 non-finite")
    put(os.fsdecode(b"bad-\xff.nii.gz"), gzip.compress(header((12, 12, 12)) + bytes(6912)), "empty volume")
    put("singleton.nii", (header((12, 12, 12, 1)) + voxels)[:4000], "truncated: the header needs 7264 bytes")
    put("series.nii", header((12, 12, 12, 3)) + voxels * 3, "expected a 3D volume, got shape (12, 12, 12, 3)")
    put("notes.nii.gz", b"patient notes, not an image\n" * 20, "not a readable NIfTI")
    put("complex.nii", header((12, 12, 12), np.complex64) + voxels * 2, "unsupported datatype code 32")
    put("offset.nii", header((12, 12, 12), vox_offset=10) + voxels, "invalid vox_offset 10")
    put(
        "inter.nii", header((12, 12, 12), scl_slope=2.0, scl_inter=np.inf) + voxels, "scl_inter is not finite"
    )
    os.mkfifo(d / "pipe.nii.gz")  # opening it would block forever
    expected["pipe.nii.gz"] = "not a regular file"
    (d / "dangling.nii.gz").symlink_to(d / "nowhere.nii.gz")
    expected["dangling.nii.gz"] = "file not found"
    files = write_series(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 4.0, 1.0])), d / "AX_GAP")
    files[5].unlink()
    expected["AX_GAP"] = "slices 5 and 6 (slice0005.dcm, slice0007.dcm) are 8.0 mm apart, the others 4.0 mm"
    if not IS_ROOT:
        put("locked.nii.gz", whole, "cannot read the file (Permission denied)")
        os.chmod(d / "locked.nii.gz", 0)
        (d / "locked").mkdir()
        os.chmod(d / "locked", 0)
        expected["locked"] = "cannot read the folder (Permission denied)"
    return expected


def measured(*args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, int]:
    """Run `brain3d`, sampling the RSS of it and its worker processes together every 20 ms: (result, the
    peak of that sum in bytes)."""
    import tempfile

    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*CMD, *args], stdout=out, stderr=err, env=ENV, cwd=ROOT)
        root, peak, t0 = psutil.Process(proc.pid), 0, time.time()
        while proc.poll() is None and time.time() - t0 < timeout:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    total += p.memory_info().rss
            except psutil.Error:  # a worker came or went while sampling
                continue
            peak = max(peak, total)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read().decode("utf-8"), err.read().decode("utf-8")
        )
    return result, peak


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]  # strict UTF-8


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(a folder of two good scans, one named with a non-UTF-8 byte, and the malformed files; a folder of
    the two good scans alone; {bad file name: expected reason})."""
    clean = tmp_path_factory.mktemp("clean")
    good = good_scan(clean / "good.nii.gz")
    shutil.copy(good, clean / os.fsdecode(b"good-\xe9.nii.gz"))
    hostile = tmp_path_factory.mktemp("hostile")
    for f in clean.iterdir():
        shutil.copy(f, hostile / f.name)
    expected = _bad_files(hostile, good)
    yield hostile, clean, expected
    for name in ("locked", "locked.nii.gz"):
        if (hostile / name).exists():
            os.chmod(hostile / name, 0o755)


def test_hostile_files_fail_alone_and_cost_no_memory(cohort, tiny_model_dir, tmp_path):
    hostile, clean, expected = cohort
    out = tmp_path / "results.jsonl"
    args = ("--model", str(tiny_model_dir), *OPTIONS, "--workers", "2")
    run, peak = measured("report", str(hostile), *args, "--out", str(out))
    clean_run, clean_peak = measured("report", str(clean), *args, "--out", str(tmp_path / "clean.jsonl"))
    print(
        f"\npeak RSS (process + workers): {len(expected)} malformed + 2 good scans {peak / 2**20:.0f} MB, "
        f"the 2 good scans alone {clean_peak / 2**20:.0f} MB"
    )
    assert clean_run.returncode == 0, clean_run.stderr
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stdout.count("findings: side=") == 2
    assert peak - clean_peak < 2**30, f"{peak / 2**20:.0f} MB vs {clean_peak / 2**20:.0f} MB for a clean run"

    rows = rows_of(out)
    by_name = {Path(r["scan"]).name: r for r in rows}
    assert len(rows) == len(by_name) == len(expected) + 2, "one row per scan"
    assert {n for n, r in by_name.items() if r["status"] == "ok"} == {"good.nii.gz", "good-\\xe9.nii.gz"}
    assert all(by_name[n]["report"] for n in ("good.nii.gz", "good-\\xe9.nii.gz"))
    for name, reason in expected.items():
        row = by_name[name.replace("\udcff", "\\xff")]
        assert row["status"] == "failed" and reason in row["reason"], (name, row["reason"])
        assert "\n" not in row["reason"]

    lines = run.stderr.splitlines()
    assert lines[0].startswith("brain3d: warning:") and "demo model" in lines[0]
    assert len(lines) == 1 + len(expected), run.stderr  # one line per bad file
    assert all(line.startswith(f"brain3d: {hostile}") for line in lines[1:])
    assert f"brain3d: {hostile}/bad-\\xff.nii.gz: empty volume" in run.stderr

    # the same --out again: the two reports are kept, the failed scans retried (and fail again)
    again = subprocess.run(
        [*CMD, "report", str(hostile), *args, "--out", str(out)], capture_output=True, text=True, env=ENV
    )
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"brain3d: 2 scan(s) already reported ok in {out}: skipped" in again.stderr.splitlines()
    after = rows_of(out)  # the same rows in the same order; only the retried ones' timings differ
    assert after == [
        r if r["status"] == "ok" else {**r, "seconds": new["seconds"]} for r, new in zip(rows, after)
    ]
    assert len(after) == len(rows)


def test_kill_minus_9_keeps_every_finished_row_and_a_rerun_completes_the_rest(tiny_model_dir, tmp_path):
    import psutil

    folder = tmp_path / "batch"
    folder.mkdir()
    good = good_scan(folder / "scan-0.nii.gz")
    for i in range(1, 6):
        shutil.copy(good, folder / f"scan-{i}.nii.gz")
    out = tmp_path / "results.jsonl"
    args = [*CMD, "report", str(folder), "--model", str(tiny_model_dir), *OPTIONS, "--out", str(out)]
    proc = subprocess.Popen(
        [*args, "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)  # kill -9 of the command alone, as the OOM killer would
    proc.wait()
    done = rows_of(out)
    assert 1 <= len(done) < 6, f"{len(done)} rows: the kill did not land half-way"
    assert all(r["status"] == "ok" and r["report"] for r in done)
    gone = psutil.wait_procs(workers, timeout=15)[1]  # workers notice their parent is gone and exit
    assert not [p for p in gone if p.status() != psutil.STATUS_ZOMBIE], "worker processes left running"

    with open(out, "a", encoding="utf-8") as fh:
        fh.write('{"scan": "' + str(folder))  # and a row cut short by a kill in the middle of a write
    rerun = subprocess.run([*args, "--workers", "2"], capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"brain3d: {len(done)} scan(s) already reported ok in {out}: skipped" in rerun.stderr
    rows = rows_of(out)
    assert rows[: len(done)] == done, "the finished rows are kept as they were"
    assert sorted(Path(r["scan"]).name for r in rows) == [f"scan-{i}.nii.gz" for i in range(6)]
    assert all(r["status"] == "ok" for r in rows)


# ------------------------------------------------------------------------------ the steps, in process


def die_on(item: str) -> str:
    """A worker task: the item "die" kills its own process, as the out-of-memory killer would."""
    if item == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return item.upper()


def test_a_worker_killed_by_the_os_fails_only_its_own_item():
    """The pool breaks twice; each time the items in flight are retried alone, and only the culprits fail."""
    from brain3d.workers import imap

    items = ["a", "b", "die", "c", "d", "e", "die", "f", "g"]
    got = list(imap(die_on, items, 2))
    assert [item for item, _, _ in got] == items, "in order"
    killed = "the worker process died (killed by SIGKILL; out of memory?)"
    assert [(r, why) for item, r, why in got if item == "die"] == [(None, killed)] * 2
    assert [r for item, r, why in got if item != "die" and not why] == ["A", "B", "C", "D", "E", "F", "G"]


@pytest.mark.parametrize(
    "error,reason",
    [
        (MemoryError(), "out of memory while preprocessing"),
        (
            RuntimeError("antsRegistration: itk::ExceptionObject\nline two"),
            "preprocessing failed (RuntimeError",
        ),
        (PermissionError(13, "Permission denied"), "preprocessing failed (PermissionError"),
    ],
)
def test_a_failure_in_preprocessing_is_that_scans_reason(monkeypatch, error, reason):
    from brain3d import runtime
    from brain3d.data import scans

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(scans, "preprocess_scan", fail)
    monkeypatch.setattr(runtime, "quiet_logs_and_warnings", lambda: None)  # a worker's, not pytest's
    pre, got, _, trace = scans.prepare((Path("scan.nii.gz"), (32, 64, 64), {}, ""))
    assert pre is None and got.startswith(reason) and "Traceback" in trace


def test_unreadable_files_and_folders_are_their_own_reason(monkeypatch, tmp_path):
    """As root (tests in a container) permissions do not bite, so the OS's refusal is simulated here; the
    must-show test above includes real unreadable files when it runs as another user."""
    from brain3d.data import dicom, nifti, scans
    from brain3d.data.manifest import InputError

    scan = tmp_path / "locked.nii.gz"
    scan.write_bytes(b"x" * 400)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nifti, "open", refuse, raising=False)  # the module's open(): the file's bytes
    with pytest.raises(InputError, match=r"cannot read the file \(Permission denied\)"):
        nifti.load(scan, max_voxels=512**3)
    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(InputError, match=r"cannot read the folder \(Permission denied\)"):
        dicom.read_series(tmp_path, max_voxels=512**3)
    monkeypatch.undo()

    (tmp_path / "sub" / "locked").mkdir(parents=True)
    walk = os.walk

    def walk_refusing_locked(top, onerror=None, **kwargs):
        for root, dirs, files in walk(top, onerror=onerror, **kwargs):
            if "locked" in dirs:
                dirs.remove("locked")
                onerror(PermissionError(13, "Permission denied", str(Path(root) / "locked")))
            yield root, dirs, files

    monkeypatch.setattr(os, "walk", walk_refusing_locked)
    assert scans.expand([tmp_path]) == [scan, tmp_path / "sub" / "locked"]  # kept: its row says why


def test_unexpected_errors_are_one_line_and_a_log_file(monkeypatch, capsys, tmp_path):
    from brain3d import cli

    monkeypatch.setattr(cli, "_log_path", None)

    def boom(args):
        raise ZeroDivisionError("a bug\nover two lines")

    monkeypatch.setattr(cli, "report", boom)
    assert cli.main(["report", "scan.nii.gz"]) == cli.EXIT_UNEXPECTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("brain3d: unexpected error (ZeroDivisionError: a bug over two lines); details in ")
    log = Path(err.rstrip("\n").rsplit(" ", 1)[1])
    assert log.is_relative_to(os.environ["BRAIN3D_CACHE"]) and log.parent.name == "logs"
    assert "Traceback" in log.read_text() and "ZeroDivisionError: a bug" in log.read_text()


def test_a_bad_model_card_or_params_file_is_one_line_exit_2(tiny_model_dir, tmp_path):
    corrupt = tmp_path / "model"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "brain3d.json").write_text('{"model": {"volume_shape": [32, 64')
    card = json.loads((tiny_model_dir / "brain3d.json").read_text())
    del card["backbones"]
    (tmp_path / "nobackbones").mkdir()
    (tmp_path / "nobackbones" / "brain3d.json").write_text(json.dumps(card))
    (tmp_path / "params.yaml").write_text("profile: demo\npreprocess: [unclosed\n")
    scan = tmp_path / "scan.nii.gz"
    cases = {
        "corrupt card": (
            ["--model", str(corrupt)],
            "not a usable Brain3D model (brain3d.json: JSONDecodeError",
        ),
        "card without backbones": (["--model", str(tmp_path / "nobackbones")], "brain3d.json: KeyError"),
        "bad YAML": (
            ["--model", str(tiny_model_dir), "--params", str(tmp_path / "params.yaml")],
            "while parsing",
        ),
        "no model": (["--model", str(tmp_path / "absent")], "brain3d.json missing"),
    }

    def call(extra):
        return subprocess.run([*CMD, "report", str(scan), *extra], capture_output=True, text=True, env=ENV)

    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(cases, pool.map(call, [extra for extra, _ in cases.values()])))
    for case, (_, reason) in cases.items():
        run = runs[case]
        assert run.returncode == 2 and "Traceback" not in run.stderr, (case, run.stderr)
        assert len(run.stderr.splitlines()) == 1 and reason in run.stderr, (case, run.stderr)


def test_explanation_figures_never_share_a_name():
    from brain3d.cli import figure_paths

    scans = [
        Path(p) for p in ("/d/a/flair.nii.gz", "/d/b/flair.nii.gz", "/d/b/t.nii", "/d/b/t.nii.gz", "/d/c/AX")
    ]
    got = figure_paths(Path("out"), scans)
    assert [str(p) for p in got.values()] == [
        "out/a/flair.png",
        "out/b/flair.png",
        "out/b/t.nii.png",
        "out/b/t.nii.gz.png",
        "out/c/AX.png",
    ]
    assert figure_paths(Path("one.png"), scans[:1]) == {scans[0]: Path("one.png")}


# --------------------------------------------------------------------------------------------- --out


def _row(scan: str, status: str = "ok", model: str = "/m") -> dict:
    return {
        "scan": scan,
        "status": status,
        "reason": "",
        "report": "r",
        "model": {"dir": model},
        "seconds": {},
    }


def test_rows_are_durable_one_per_scan_and_a_foreign_file_is_never_overwritten(tmp_path):
    from brain3d.results import Results, ResultsError

    out = tmp_path / "r.jsonl"
    results = Results(out)
    results.add(_row("a"))
    results.add(_row(os.fsdecode(b"b-\xff"), "failed"))
    assert out.read_text(encoding="utf-8").count("\n") == 2  # on disk before close
    results.close()
    results = Results(out)
    assert results.finished("a", "/m") and not results.finished("a", "/other model")
    assert not results.finished("b-\\xff", "/m")  # failed: retried
    results.add(_row("b-\\xff"))
    results.close()
    assert [r["scan"] for r in rows_of(out)] == ["a", "b-\\xff"] and rows_of(out)[1]["status"] == "ok"

    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my own notes\n")
    with pytest.raises(ResultsError, match="not a brain3d results file"):
        Results(foreign)
    assert foreign.read_text() == "my own notes\n"


def test_csv_rows_have_a_fixed_header_written_once(tmp_path):
    import pandas as pd

    from brain3d.results import CSV_COLUMNS, Results

    out = tmp_path / "r.csv"
    for scan in ("a", "b"):
        results = Results(out)
        results.add({**_row(scan), "findings": {"side": "left", "anatomy": ["frontal"], "pathology": []}})
        results.close()
    with open(out, "a", encoding="utf-8") as fh:
        fh.write('c,ok,"a report cut')  # a kill in the middle of a row
    Results(out).close()
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == CSV_COLUMNS and list(table["scan"]) == ["a", "b"]
    assert list(table["findings_side"]) == ["left", "left"] and table.loc[0, "findings_anatomy"] == "frontal"
