"""The demo's pretraining corpus: extra phantom subjects, in no split, made directly in the standardised space.

MedSigLIP was pretrained on a large image-text corpus before the paper inflated it; the demo's SigLIP
stand-in is trained from scratch, and on the 138 training subjects alone it stays weak (measured: slice
accuracy .85 on val; .96 with 1,000-2,000 extra subjects). The corpus subjects come from the same generator
as the cohort (`phantom.simulate_brain`: no skull, no files, no registration) and go through the same
normalisation and framing as preprocessing (`preprocess.standardize_with_grid`), about 5x cheaper than
simulate + preprocess. Their own seed keeps them apart from the cohort; the foundation stage adds their
slices, captioned from their ground truth, to the training split's. Subjects are cached under
`.cache/brain3d/corpus/` (keyed on the grid params and the code), so an interrupted run resumes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brain3d import fileio
from brain3d.config import ParamsError
from brain3d.data.manifest import CORPUS_COLUMNS, CORPUS_MANIFEST, CORPUS_SEGS, CORPUS_VOLUMES
from brain3d.data.phantom import SubjectSpec, plan_cohort, simulate_brain
from brain3d.data.preprocess import resample_labels, standardize_with_grid


def plan_corpus(
    n_subjects: int, seed: int, healthy_fraction: float, laterality_mix: dict[str, float]
) -> list[SubjectSpec]:
    """The corpus subjects (`corpus-0001`, ...): a cohort plan with the corpus's own seed and mix."""
    return [
        replace(s, subject=f"corpus-{s.index:04d}")
        for s in plan_cohort(n_subjects, seed, healthy_fraction, laterality_mix)
    ]


def standardised_subject(
    spec: SubjectSpec, shape: tuple[int, int, int], fov_mm: tuple | None
) -> tuple[np.ndarray, np.ndarray]:
    """One corpus subject as preprocessing would leave it: volume (D, H, W) float32 in [0, 1], seg uint8."""
    flair, seg, brain, affine = simulate_brain(spec)
    volume, grid = standardize_with_grid(nib.Nifti1Image(flair, affine), shape, brain, fov_mm=fov_mm)
    return volume, resample_labels(nib.Nifti1Image(seg, affine), grid)


def generate_corpus(
    out_dir: Path,
    *,
    n_subjects: int,
    seed: int,
    cohort_seed: int,
    healthy_fraction: float,
    laterality_mix: dict[str, float],
    shape: tuple[int, int, int],
    fov_mm: tuple | None,
    workers: int,
    progress: bool = True,
) -> pd.DataFrame:
    """Write `out_dir/volumes/<subject>.npy`, `out_dir/seg/<subject>.npy` and `out_dir/manifest.csv`
    (CORPUS_COLUMNS); return the manifest. Every keyword but `progress` is a params value (`corpus`, `download.seed`
    as `cohort_seed`, and `preprocess` shape / fov_mm). `n_subjects: 0` writes an empty manifest. `out_dir` is
    the stage's own output: what was there is replaced."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from brain3d.cache import cache_dir, link_or_copy

    if seed == cohort_seed:  # subject i would repeat cohort subject i's brain and lesions (simulate_brain)
        raise ParamsError(
            f"params: corpus.seed ({seed}) must differ from download.seed: the corpus would "
            "repeat the cohort's subjects, test subjects included"
        )
    out_dir = Path(out_dir)
    specs = plan_corpus(n_subjects, seed, healthy_fraction, laterality_mix)
    cache = cache_dir("corpus", fileio.fingerprint({"shape": list(shape), "fov_mm": fov_mm}))  # + the code
    stems = {s.subject: str(cache / f"{s.subject}-{fileio.fingerprint(asdict(s))}") for s in specs}
    todo = [s for s in specs if not Path(f"{stems[s.subject]}.seg.npy").exists()]
    jobs = (delayed(_subject_to_cache)(s, tuple(shape), fov_mm, stems[s.subject]) for s in todo)
    for _ in tqdm(
        Parallel(n_jobs=workers, return_as="generator_unordered")(jobs),
        total=len(todo),
        desc="corpus",
        unit="subject",
        disable=not progress,
    ):
        pass

    for folder in (CORPUS_VOLUMES, CORPUS_SEGS):
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    rows = []
    for s in specs:
        volume, seg = (
            out_dir / CORPUS_VOLUMES / f"{s.subject}.npy",
            out_dir / CORPUS_SEGS / f"{s.subject}.npy",
        )
        link_or_copy(f"{stems[s.subject]}.npy", volume)
        link_or_copy(f"{stems[s.subject]}.seg.npy", seg)
        rows.append(
            {
                "subject": s.subject,
                "cohort": s.cohort,
                "laterality": s.side,
                "sha256": fileio.fingerprint([fileio.sha256_file(volume), fileio.sha256_file(seg)]),
            }
        )
    manifest = pd.DataFrame(rows, columns=CORPUS_COLUMNS)
    fileio.write_csv(out_dir / CORPUS_MANIFEST, manifest)
    return manifest


def _subject_to_cache(
    spec: SubjectSpec, shape: tuple[int, int, int], fov_mm: tuple | None, stem: str
) -> None:
    """Worker: one subject into the cache; the seg, written last, marks it done."""
    volume, seg = standardised_subject(spec, shape, fov_mm)
    fileio.save_npy(f"{stem}.npy", volume)
    fileio.save_npy(f"{stem}.seg.npy", seg)
