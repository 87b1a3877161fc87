"""Resumable work outside DVC's outputs.

DVC deletes a stage's outputs before re-running it, so partial work (preprocessed subjects, training
checkpoints) is kept in `.cache/brain3d/<kind>/<fingerprint>/` at the repository root, keyed by a
fingerprint of everything that determines it. Re-running the same configuration resumes; any change of
configuration starts afresh. Override the location with BRAIN3D_CACHE.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir(kind: str, key: str) -> Path:
    if os.environ.get("BRAIN3D_CACHE"):
        base = Path(os.environ["BRAIN3D_CACHE"])
    else:
        from brain3d.tracking import repo_root

        base = repo_root() / ".cache" / "brain3d"
    path = base / kind / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Place `src` at `dst` (hard link when possible: no extra disk), replacing what was there."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
