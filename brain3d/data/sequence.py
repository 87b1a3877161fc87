"""Which MRI sequence a standardised brain volume looks like, from its tissue contrast (a fast heuristic).

The MNI152 grey-matter, white-matter and CSF probability maps, framed as `standardize` frames a scan (the
brain's bounding box scaled to the volume shape: `preprocess.tissue_maps`, which the caller passes in), are
moved onto the scan by an affine ANTs registration with mutual information (any contrast; deterministic seed;
about a second at 32 x 64 x 64), or a similarity transform where the affine one diverges (`_registered`).
Framing alone left the maps a few voxels off, enough to read 13 of 500 phantom FLAIRs as T1; registered, all 200
subjects of the demo cohort and 396 of 398 held-out phantoms read as FLAIR (GM/WM at least 1.12, CSF/GM at most
.54). The scan's intensity is then fitted, by least squares over the brain, as a mixture of the three tissues
(one intensity each, so partial volume is part of the model); the 10 % of voxels that fit worst (a lesion, the
edges) are dropped before a second fit.

    T2:      CSF brighter than grey and white matter
    T1:      white matter brighter than grey matter
    FLAIR:   grey matter brighter than white matter, CSF dark (below 0.6 of grey matter: suppressed)
    unclear: anything else (e.g. CSF as bright as tissue: no usable contrast, or not aligned)

Its measured accuracy (the phantom cohort, public T1 scans) is in docs/cli.md;
tests/test_sequence.py checks each contrast, a lesion, and a shifted, rotated head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brain3d.data.manifest import InputError

SEQUENCES = ("FLAIR", "T1", "T2", "unclear")
CSF_DARK = 0.6  # FLAIR: CSF below this fraction of grey matter (phantom cohort: at most .54; T1 files: ~1)


@dataclass(frozen=True)
class SequenceCheck:
    looks_like: str  # one of SEQUENCES
    gm: float  # fitted intensity of each tissue (standardised units)
    wm: float
    csf: float

    @property
    def is_flair(self) -> bool:
        return self.looks_like == "FLAIR"

    @property
    def reason(self) -> str:
        """Why, in words: e.g. 'looks T1-weighted (white matter brighter than grey matter)'."""
        if self.looks_like == "unclear":
            return "tissue contrast unlike FLAIR (CSF not darker than grey matter)"
        why = {
            "FLAIR": "grey matter brighter than white matter, CSF dark",
            "T1": "white matter brighter than grey matter",
            "T2": "CSF brighter than grey and white matter",
        }[self.looks_like]
        name = "FLAIR" if self.is_flair else f"{self.looks_like}-weighted"
        return f"looks {name} ({why})"

    def qc(self) -> dict:
        """QC columns of the check (qc.csv of the `preprocess` stage, a scan's record in `brain3d report`)."""
        return {
            "sequence": self.looks_like,
            "tissue_gm": round(self.gm, 4),
            "tissue_wm": round(self.wm, 4),
            "tissue_csf": round(self.csf, 4),
        }


class SequenceError(InputError):
    """A scan refused because its tissue contrast is not FLAIR's (`preprocess.sequence: FLAIR`)."""


GOOD_OVERLAP = 0.9  # Dice of the registered template brain with the scan's brain; below: try a similarity


def _registered(maps: np.ndarray, volume: np.ndarray, seed: int = 1) -> np.ndarray:
    """The tissue maps moved onto `volume` by a registration (mutual information, so any contrast) of the
    template's brain (tissue fractions weighted as a T1: a contrast-neutral choice for MI) to it: affine, or,
    when the affine fit diverges (its brain overlaps the scan's by Dice < GOOD_OVERLAP: measured on 12 of 400
    held-out phantoms with large lesions, where the template shrank or drifted away), a similarity transform
    (rotation, translation, one scale), whichever overlaps the scan's brain better."""
    from brain3d.data.skullstrip import _import_ants

    ants = _import_ants()
    ants.config.set_ants_deterministic(True, seed)
    fixed = ants.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    template = ants.from_numpy(
        np.ascontiguousarray(0.4 * maps[0] + 0.8 * maps[1] + 0.1 * maps[2], np.float32)
    )
    brain = volume > 0

    def moved(kind: str) -> tuple[float, np.ndarray]:
        reg = ants.registration(fixed=fixed, moving=template, type_of_transform=kind, aff_metric="mattes")
        out = np.stack(
            [
                ants.apply_transforms(
                    fixed=fixed,
                    moving=ants.from_numpy(np.ascontiguousarray(m)),
                    transformlist=reg["fwdtransforms"],
                ).numpy()
                for m in maps
            ]
        )
        inside = out.sum(0) > 0.5
        return 2 * (inside & brain).sum() / max(inside.sum() + brain.sum(), 1), out

    overlap, out = moved("Affine")
    if overlap < GOOD_OVERLAP:
        overlap, out = max((overlap, out), moved("Similarity"), key=lambda pair: pair[0])
    return out


def check_sequence(volume: np.ndarray, maps: np.ndarray) -> SequenceCheck:
    """The sequence a standardised (D, H, W) brain volume looks like (zero outside the brain); `maps` are the
    MNI GM, WM and CSF fractions (3, D, H, W) framed as the volume was (`preprocess.tissue_maps`)."""
    if (volume > 0).sum() < 50:
        raise ValueError("too little brain to judge the sequence")
    maps = _registered(np.array(maps), volume)
    inside = (volume > 0) & (maps.sum(0) > 0.5)
    if inside.sum() < 50:
        raise ValueError("too little brain overlaps the template to judge the sequence")
    x = maps[:, inside].T.astype(np.float64)  # (N, 3)
    y = volume[inside].astype(np.float64)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    residual = np.abs(y - x @ coef)
    keep = residual <= np.quantile(residual, 0.9)
    gm, wm, csf = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
    if csf > max(gm, wm):
        looks = "T2"
    elif wm > gm:
        looks = "T1"
    elif csf < CSF_DARK * gm:
        looks = "FLAIR"
    else:
        looks = "unclear"
    return SequenceCheck(looks, float(gm), float(wm), float(csf))
