"""Atomic file writes and small readers: an interrupted stage never leaves a half-written file behind.

Every write goes to a temporary file beside its target, is flushed to disk (fsync) and renamed over the target
(then the folder is synced), so a crash or `kill -9` leaves either the old file or the new one, never a torn
one. Written files get the permissions of a plain `open()` under the process umask (0644 by default), not the
0600 of the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class IntegrityError(ValueError):
    """A file is not the one that was recorded (its sha256 differs, or it is missing): one line naming it."""


def umask() -> int:
    """The process umask, read without changing it (Linux /proc; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds it is synced to disk, given the umask's
    permissions and renamed over `path` (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # the block may have written through another handle: sync it here
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_csv(path: str | Path, df) -> None:  # pandas.DataFrame
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_npy(path: str | Path, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str, what: str) -> None:
    """Raise IntegrityError unless `path` exists with sha256 `expected`; `what` says how to recover, in words."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path} is missing (sha256 {expected[:16]}… expected); {what}")
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(f"{path} has sha256 {actual[:16]}…, not the {expected[:16]}… recorded; {what}")


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (configs, lists of input hashes)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, set, tuple)):
        return sorted(obj) if isinstance(obj, set) else list(obj.tolist() if hasattr(obj, "tolist") else obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
