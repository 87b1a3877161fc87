"""Resumable work outside DVC's outputs, keyed on everything that determines it, code included.

DVC deletes a stage's outputs before re-running it, so partial work (preprocessed subjects, training
checkpoints, cached visual tokens) is kept in `.cache/brain3d/<kind>/<fingerprint>/` at the repository
root. The fingerprint covers the caller's key (params, input-file hashes) AND the code that computes it:
inside a DVC stage, the content of every code file that dvc.yaml lists as that stage's dependency (the
same list DVC re-runs the stage on, so the two cannot disagree); outside a stage (tests, benchmarks, the
CLI), the whole `brain3d` package. Same code + same key resumes; any change starts afresh. Override the
location with BRAIN3D_CACHE.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CODE_ROOTS = ("brain3d", "stages")  # dvc.yaml deps under these folders are code
_stage_code: str | None = None  # fingerprint of the running stage's code deps (bind_stage)


def stage_code_deps(module: str, dvc_yaml: str | Path = "dvc.yaml") -> list[Path]:
    """The code deps (files or folders under brain3d/ or stages/) of every dvc.yaml stage whose command
    runs `python -m <module>` (a `foreach` stage counts once; `stages.baseline` serves two stages)."""
    import yaml

    dvc_yaml = Path(dvc_yaml)
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    deps: list[str] = []
    for spec in stages.values():
        spec = spec.get("do", spec)
        if spec["cmd"].split()[:3] == ["python", "-m", module]:
            deps += [d for d in spec.get("deps", []) if Path(d).parts[0] in CODE_ROOTS and d not in deps]
    if not deps:
        raise ValueError(f"{dvc_yaml}: no stage runs `python -m {module}`")
    return [dvc_yaml.parent / d for d in deps]


def code_fingerprint(paths: list[Path], root: Path) -> str:
    """Hash of the names (relative to `root`) and contents of `paths` (folders: every file below, Python's
    bytecode caches left out)."""
    files: list[Path] = []
    for path in paths:
        files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def bind_stage(module: str, dvc_yaml: str | Path = "dvc.yaml") -> str:
    """Key every cache of this process on the code of the DVC stage `module` (called by `stage.run`).
    Without a dvc.yaml (a stage run outside the repository) the whole package stays the key."""
    global _stage_code
    if Path(dvc_yaml).exists():
        _stage_code = code_fingerprint(stage_code_deps(module, dvc_yaml), Path(dvc_yaml).parent)
    return code_key()


def code_key() -> str:
    """The running stage's code fingerprint, or the whole package's outside a stage."""
    package = Path(__file__).resolve().parent
    return _stage_code or code_fingerprint([package], package.parent)


def cache_dir(kind: str, key: str) -> Path:
    """`<cache>/<kind>/<fingerprint of key + code>/`, created if missing."""
    if os.environ.get("BRAIN3D_CACHE"):
        base = Path(os.environ["BRAIN3D_CACHE"])
    else:
        from brain3d.tracking import repo_root

        base = repo_root() / ".cache" / "brain3d"
    digest = hashlib.sha256(f"{key}\0{code_key()}".encode()).hexdigest()[:16]
    path = base / kind / digest
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
