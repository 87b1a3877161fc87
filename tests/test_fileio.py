"""Atomic writes: the old file or the new one, never a torn one; synced before the rename; the umask's modes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from brain3d import fileio


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_umask_s_permissions_not_the_temporary_file_s(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        assert fileio.umask() == mask
        fileio.write_text(tmp_path / "a.txt", "x")
        fileio.write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    fileio.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), fileio.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_new_content_is_synced_before_it_replaces_the_old(tmp_path, monkeypatch):
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), replace(a, b))[1])
    fileio.save_npy(tmp_path / "v.npy", np.zeros(3))
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") == 2  # the file, then its folder


def test_verify_sha256_names_the_file_and_both_hashes_in_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights")
    good = fileio.sha256_file(path)
    fileio.verify_sha256(path, good, "restore it")
    path.write_bytes(b"other weights")
    with pytest.raises(fileio.IntegrityError) as bad:
        fileio.verify_sha256(path, good, "restore it")
    assert str(path) in str(bad.value) and good[:16] in str(bad.value) and "\n" not in str(bad.value)
    path.unlink()
    with pytest.raises(fileio.IntegrityError, match="missing"):
        fileio.verify_sha256(path, good, "restore it")
