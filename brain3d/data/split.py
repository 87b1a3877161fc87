"""Subject-level train/val/test split, stratified by cohort x laterality, deterministic, and the subjects of
one split with their reports and volumes (`SplitSubjects`).

Every system (ours, the baselines, every ablation) is scored on the test subjects written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain3d.config import ParamsError

SPLITS = ("train", "val", "test")


def stratified_split(
    subjects: pd.DataFrame, *, fractions: tuple[float, float, float], seed: int
) -> pd.DataFrame:
    """Columns subject, split, cohort, laterality; refuses duplicate ids. `fractions` (train, val, test) and
    `seed` are the `split` params.

    Within each stratum (cohort x laterality, subjects sorted then shuffled with `seed`) the val and test
    counts are round(n * fraction) and the rest is train, so a stratum of one or two subjects stays in
    train rather than yielding an unrepresentative test case.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    dup = subjects["subject"][subjects["subject"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate subject ids: {sorted(set(dup))}")
    rng = np.random.default_rng(seed)
    parts = []
    for (cohort, lat), group in sorted(subjects.groupby(["cohort", "laterality"]), key=lambda kv: kv[0]):
        ids = sorted(group["subject"])
        order = rng.permutation(len(ids))
        n = len(ids)
        n_test = int(round(n * fractions[2]))
        n_val = int(round(n * fractions[1]))
        if n_test + n_val > n:
            n_val = n - n_test
        labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        parts.append(
            pd.DataFrame(
                {"subject": [ids[i] for i in order], "split": labels, "cohort": cohort, "laterality": lat}
            )
        )
    out = pd.concat(parts).sort_values("subject").reset_index(drop=True)
    assert not out["subject"].duplicated().any(), "a subject landed in two splits"
    empty = [name for name, f in zip(SPLITS, fractions) if f > 0 and not (out["split"] == name).any()]
    if empty:
        sizes = ", ".join(f"{c}/{lat} {len(g)}" for (c, lat), g in subjects.groupby(["cohort", "laterality"]))
        raise ParamsError(
            f"split: no {' or '.join(empty)} subjects with fractions {tuple(fractions)}: each stratum "
            f"(cohort/laterality) gives round(n x fraction) subjects, and these strata are too small "
            f"({sizes}); add subjects or raise those fractions"
        )
    return out


@dataclass
class SplitSubjects:
    """The subjects of one split (sorted by id) with their reports and preprocessed volumes."""

    subjects: list[str]
    reports: list[str]
    volumes_dir: Path

    @classmethod
    def load(
        cls, splits: pd.DataFrame, manifest: pd.DataFrame, split: str, volumes_dir: Path
    ) -> SplitSubjects:
        rows = splits[splits["split"] == split].merge(manifest[["subject", "report"]], on="subject")
        rows = rows.sort_values("subject")
        return cls(list(rows["subject"]), list(rows["report"]), Path(volumes_dir))

    def volume(self, i: int) -> np.ndarray:
        return np.load(self.volumes_dir / f"{self.subjects[i]}.npy")

    def volumes(self) -> list[np.ndarray]:
        return [self.volume(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.subjects)
