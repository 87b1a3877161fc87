"""Where resumable state lives (brain3d/cache.py) and that a cached file is trusted only while intact: the
user cache directory by default (never the folder or repository the command runs in), BRAIN3D_CACHE when
set, the repository's .cache/brain3d inside a DVC stage; the MNI atlas cache rebuilt when tampered with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from brain3d import cache

ROOT = Path(__file__).resolve().parents[1]


def test_the_cache_is_the_user_cache_directory_unless_brain3d_cache_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder the user runs the command in: nothing may be written here
    monkeypatch.delenv("BRAIN3D_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir("kind", "key").is_relative_to(tmp_path / "xdg" / "brain3d" / "kind")
    assert not (tmp_path / ".cache").exists()
    monkeypatch.setenv("BRAIN3D_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir("kind", "key").is_relative_to(tmp_path / "mine" / "kind")


def test_a_stage_keeps_its_cache_in_the_repository_and_its_workers_inherit_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "_stage_key", None)  # restored after the test
    monkeypatch.chdir(tmp_path)  # a stage runs at the repository root (here: not a git checkout)
    monkeypatch.delenv("BRAIN3D_CACHE")
    cache.bind_stage("stages.split", ROOT / "dvc.yaml")
    assert os.environ["BRAIN3D_CACHE"] == str(tmp_path / ".cache" / "brain3d")  # in the environment
    assert cache.cache_dir("kind", "key").is_relative_to(tmp_path / ".cache" / "brain3d")
    monkeypatch.setenv("BRAIN3D_CACHE", str(tmp_path / "chosen"))
    cache.bind_stage("stages.split", ROOT / "dvc.yaml")
    assert os.environ["BRAIN3D_CACHE"] == str(tmp_path / "chosen")  # the user's choice is kept


def test_the_atlas_cache_is_rebuilt_when_truncated_or_tampered_with(monkeypatch, tmp_path):
    from brain3d.data import atlas

    monkeypatch.setenv("BRAIN3D_CACHE", str(tmp_path))
    atlas.mni.cache_clear()
    built = atlas.mni(2)
    path = cache.cache_dir("atlas", "mni2") / "atlas.npz"
    assert cache.intact(path)
    reference = {k: np.array(v) for k, v in vars(built).items()}

    tampered = {**reference, "brain": np.zeros_like(reference["brain"])}  # a valid file, wrong content
    with open(path, "wb") as fh:
        np.savez(fh, **tampered)
    atlas.mni.cache_clear()
    assert atlas.mni(2).brain.sum() == reference["brain"].sum() > 0

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    atlas.mni.cache_clear()
    again = atlas.mni(2)
    assert cache.intact(path)
    for key, value in reference.items():
        np.testing.assert_array_equal(getattr(again, key), value)
    atlas.mni.cache_clear()


def test_intact_needs_the_recorded_hash(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"content")
    assert not cache.intact(path)  # never sealed
    cache.seal(path)
    assert cache.intact(path)
    path.write_bytes(b"content!")
    assert not cache.intact(path)
    with pytest.raises(FileNotFoundError):
        cache.seal(tmp_path / "absent")
