"""Report generation for the test subjects: batched, KV-cached, seeded per batch (so the text of a
subject does not depend on which other subjects share its batch... as long as the batch size is kept)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from brain3d import config, fileio
from brain3d.models.model import Brain3D, Decoding

if TYPE_CHECKING:
    from brain3d.data.split import SplitSubjects


def decoding_from_params(section: dict) -> Decoding:
    """The decoding settings of the `generate` params section."""
    return config.from_section(
        Decoding, {**section, "repetition_exempt": tuple(section["repetition_exempt"])}
    )


def generate_reports(
    model: Brain3D,
    tokens: torch.Tensor,
    decoding: Decoding,
    *,
    batch_size: int,
    seed: int,
    progress: bool = True,
    desc: str = "generate",
    volumes: list[np.ndarray] | None = None,
) -> list[str]:
    """One report per row of `tokens` (N, K, Cv); `volumes`, the N volumes they were encoded from, for a
    decoder guided by the side detector (`generate.guide: detector`)."""
    out: list[str] = []
    starts = range(0, len(tokens), batch_size)
    for b, start in enumerate(tqdm(starts, desc=desc, disable=not progress, unit="batch")):
        rows = slice(start, start + batch_size)
        out.extend(
            model.generate(
                tokens[rows], decoding, seed=seed + b, volumes=None if volumes is None else volumes[rows]
            )
        )
    return out


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point: subject i gets the visual tokens of subject perm[i] != i."""
    if n < 2:
        raise ValueError("a shuffled control needs at least 2 subjects")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def write_predictions(
    pred_dir: Path, system: str, test: SplitSubjects, predictions: list[str], *, meta: dict
) -> None:
    """`<system>.jsonl` (one row per test subject, empty for a system that did not run) and `<system>.json`
    (`meta`: status, reason, baseline, description), as `brain3d.metrics.systems.load_systems` reads them."""
    rows = [
        {"subject": s, "split": "test", "reference": r, "prediction": p}
        for s, r, p in zip(test.subjects, test.reports, predictions)
    ]
    fileio.write_jsonl(Path(pred_dir) / f"{system}.jsonl", rows)
    fileio.write_json(Path(pred_dir) / f"{system}.json", {"system": system, **meta})
