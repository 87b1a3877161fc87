"""Resumable work outside DVC's outputs, keyed on everything that determines it, code included.

DVC deletes a stage's outputs before re-running it, so partial work (preprocessed subjects, training
checkpoints, cached visual tokens) is kept in `<cache>/<kind>/<fingerprint>/`. The cache is BRAIN3D_CACHE if
set, else the user cache directory (~/.cache/brain3d on Linux, honouring XDG_CACHE_HOME): the `brain3d` command
never writes into the folder or repository it is run from. Inside a DVC stage it is the repository's
`.cache/brain3d` (`bind_stage` sets BRAIN3D_CACHE, so the stage's worker processes inherit it). The fingerprint covers the caller's key (params) AND everything the stage reads: inside a DVC
stage, the content of every file that dvc.yaml lists as that stage's dependency, code and data alike (the
same list DVC re-runs the stage on, so the two cannot disagree; a caller that forgets an input file cannot
resume on stale data); outside a stage (tests, benchmarks, the CLI), the whole `brain3d` package. Same
inputs + same key resumes; any change starts afresh. A file that is read back as it is (the MNI atlas) is
`seal`ed with its sha256 and trusted only while `intact`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from brain3d.paths import repo_root

CODE_ROOTS = ("brain3d", "stages")  # dvc.yaml deps under these folders are code
_stage_key: str | None = None  # fingerprint of the running stage's deps (bind_stage)


def stage_deps(module: str, dvc_yaml: str | Path = "dvc.yaml", *, code_only: bool = False) -> list[Path]:
    """The deps (with `code_only`, those under brain3d/ or stages/) of every dvc.yaml stage whose command runs
    `python -m <module>` (a `foreach` stage's entries and the stages one module serves count together)."""
    import yaml

    dvc_yaml = Path(dvc_yaml)
    deps: list[str] = []
    found = False
    for cmd, stage_deps_ in _expanded(yaml.safe_load(dvc_yaml.read_text())["stages"]):
        if cmd.split()[:3] == ["python", "-m", module]:
            found = True
            deps += [
                d for d in stage_deps_ if (not code_only or Path(d).parts[0] in CODE_ROOTS) and d not in deps
            ]
    if not found:
        raise ValueError(f"{dvc_yaml}: no stage runs `python -m {module}`")
    return [dvc_yaml.parent / d for d in deps]


def _expanded(stages: dict):
    """(cmd, deps) of every concrete stage: a `foreach` stage once per item, with ${key}, ${item} and
    ${item.<field>} substituted as DVC does."""
    import re

    def fill(text: str, key, item) -> str:
        def value(m: re.Match) -> str:
            expr = m.group(1).strip()
            if expr in ("key", "item"):
                return str(key if expr == "key" else item)
            return str(item[expr.removeprefix("item.")]) if expr.startswith("item.") else m.group(0)

        return re.sub(r"\$\{([^}]+)\}", value, text)

    for spec in stages.values():
        if "foreach" not in spec:
            yield spec["cmd"], spec.get("deps", [])
            continue
        items = spec["foreach"]
        for key, item in items.items() if isinstance(items, dict) else ((i, i) for i in items):
            yield fill(spec["do"]["cmd"], key, item), [fill(d, key, item) for d in spec["do"].get("deps", [])]


def content_fingerprint(paths: list[Path], root: Path) -> str:
    """Hash of the names (relative to `root`) and contents of `paths` (folders: every file below, Python's
    bytecode caches left out; a missing path counts as missing)."""
    files: list[Path] = []
    for path in paths:
        files += (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        if f.exists():
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        h.update(b"\0" if f.exists() else b"\1")
    return h.hexdigest()[:16]


def bind_stage(module: str, dvc_yaml: str | Path = "dvc.yaml") -> str:
    """Key every cache of this process on the deps (code and data) of the DVC stage `module` (called by
    `entrypoint.run`), and keep the caches in the repository's .cache/brain3d unless BRAIN3D_CACHE says
    otherwise. Without a dvc.yaml (a stage run outside the repository) the whole package stays the key."""
    global _stage_key
    os.environ.setdefault("BRAIN3D_CACHE", str(repo_root() / ".cache" / "brain3d"))  # workers inherit it
    if Path(dvc_yaml).exists():
        _stage_key = content_fingerprint(stage_deps(module, dvc_yaml), Path(dvc_yaml).parent)
    return stage_key()


def stage_key() -> str:
    """The running stage's deps fingerprint, or the whole package's outside a stage."""
    package = Path(__file__).resolve().parent
    return _stage_key or content_fingerprint([package], package.parent)


def base_dir() -> Path:
    """BRAIN3D_CACHE, else the user cache directory (platformdirs: $XDG_CACHE_HOME/brain3d or ~/.cache/brain3d
    on Linux, ~/Library/Caches/brain3d on macOS)."""
    if os.environ.get("BRAIN3D_CACHE"):
        return Path(os.environ["BRAIN3D_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("brain3d", appauthor=False))


def cache_dir(kind: str, key: str) -> Path:
    """`<cache>/<kind>/<fingerprint of key + code>/`, created if missing."""
    base = base_dir()
    digest = hashlib.sha256(f"{key}\0{stage_key()}".encode()).hexdigest()[:16]
    path = base / kind / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """Held while `path` is checked and (re)built, so that two processes never build the same file at once."""
    from filelock import FileLock

    with FileLock(f"{path}.lock"):
        yield


def intact(path: Path) -> bool:
    """Whether `path` exists and matches the sha256 that `seal` recorded beside it (<path>.sha256): a
    truncated, corrupted or replaced cache file is not."""
    from brain3d.fileio import sha256_file

    sealed = Path(f"{path}.sha256")
    return path.exists() and sealed.exists() and sealed.read_text().strip() == sha256_file(path)


def seal(path: Path) -> None:
    """Record the sha256 of `path` (written completely) beside it, for `intact`."""
    from brain3d.fileio import sha256_file, write_text

    write_text(f"{path}.sha256", sha256_file(path) + "\n")


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
