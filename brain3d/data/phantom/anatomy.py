"""The head anatomy every subject shares: the MNI 2 mm atlas extended by a neck, with the distance maps that
skull, scalp and lesions are drawn from (`_Head`, built once per process by `_head`), the CSF rim, skull and
scalp shells, the smooth bias field, and `_rotation`, the rotation helper of the head frame.

`reshaped_head` is an anatomy the cohort never has: the MNI maps stretched, warped and given larger
ventricles, for checks that a model has not learnt the one brain shape every phantom shares."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from brain3d.data.atlas import MNIAtlas, mni

_HEAD_CENTRE = np.array([0.0, -18.0, 8.0])  # MNI mm, the pivot of the random head pose
_NECK_VOXELS = 12  # grid rows added below the MNI grid: the cord and the shells around it continue down
_RESHAPE_STREAM = 7  # keeps a reshaped anatomy's random numbers apart from the subject's own (seed, index)


@dataclass(frozen=True, eq=False)
class _Head:
    """The MNI anatomy on a grid extended below (neck), with distance maps used for every subject."""

    affine: np.ndarray
    x: np.ndarray  # 1D MNI mm per axis
    y: np.ndarray
    z: np.ndarray
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    vent: np.ndarray  # float32 lateral-ventricle fraction
    lobe: np.ndarray
    hemi: np.ndarray  # index into atlas.HEMISPHERES: 0 none/midline, 1 left, 2 right
    shell: np.ndarray  # flat indices of the voxels 0 < dist_out <= 25 mm, where skull and scalp can be
    dist_out: np.ndarray  # mm from brain (and cord) at `shell`
    dist_in: np.ndarray  # mm to the nearest non-brain voxel
    dist_vent: np.ndarray  # mm to the lateral ventricles
    dirs: np.ndarray  # (3, n) unit vectors from the head centre at `shell`, to vary skull/scalp thickness
    vent_box: tuple[slice, slice, slice]  # bounding box of the lateral ventricles

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brain.shape

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])


@functools.cache
def _head() -> _Head:
    """The MNI 2 mm anatomy with a neck below it and the distance maps, built once per process."""
    return _assemble(mni(2))


@functools.lru_cache(maxsize=2)
def reshaped_head(seed: int, index: int) -> _Head:
    """Subject `index`'s own anatomy in a cohort of generator seed `seed`: the MNI maps scaled by 0.88-1.12
    per axis about the head centre, displaced by a smooth random field (4-8 mm at most; its left-right part
    fades to 0 at the midline, so the hemispheres keep their sides) and with lateral ventricles grown by
    0-2 voxels into CSF."""
    atlas = mni(2)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _RESHAPE_STREAM]))
    x, y, z = np.meshgrid(*atlas.world_axes(), indexing="ij")
    scale = rng.uniform(0.88, 1.12, 3)
    centre = np.array([0.0, _HEAD_CENTRE[1], _HEAD_CENTRE[2]])  # on the midline
    field = np.stack([ndi.gaussian_filter(rng.standard_normal(atlas.shape), 6.0) for _ in range(3)])
    field *= rng.uniform(4.0, 8.0) / np.abs(field).max()
    field[0] *= np.tanh(np.abs(x) / 10.0)
    source = [(c - c0) / k + c0 + d for c, c0, k, d in zip((x, y, z), centre, scale, field)]
    index_grid = [(c - atlas.affine[i, 3]) / atlas.affine[i, i] for i, c in enumerate(source)]

    def warp(volume: np.ndarray, order: int) -> np.ndarray:
        out = ndi.map_coordinates(volume.astype(np.float32), index_grid, order=order, mode="constant")
        return out.astype(volume.dtype) if order == 0 else out.astype(np.float32)

    brain = warp(atlas.brain.view(np.uint8), 0).astype(bool)
    gm, wm, csf = (warp(m, 1) * brain for m in (atlas.gm, atlas.wm, atlas.csf))
    ventricles = warp(atlas.ventricles.view(np.uint8), 0).astype(bool)
    grow = int(rng.integers(0, 3))
    if grow:
        ventricles = ndi.binary_dilation(ventricles, iterations=grow) & brain
        gm[ventricles], wm[ventricles], csf[ventricles] = 0.0, 0.0, 1.0
    return _assemble(
        replace(
            atlas,
            brain=brain,
            gm=gm,
            wm=wm,
            csf=csf,
            lobe=warp(atlas.lobe, 0),
            hemi=warp(atlas.hemi, 0),
            ventricles=ventricles,
        )
    )


def _assemble(atlas: MNIAtlas) -> _Head:
    """`_Head` of an atlas's anatomy: a neck below it and the distance maps."""
    pad = ((0, 0), (0, 0), (_NECK_VOXELS, 0))
    affine = atlas.affine.copy()
    affine[2, 3] -= _NECK_VOXELS * affine[2, 2]
    brain = np.pad(atlas.brain, pad)
    cord = np.zeros_like(brain)
    cord[:, :, :_NECK_VOXELS] = atlas.brain[:, :, :1]  # the medulla continues down as the cord
    wm = np.pad(atlas.wm, pad) + cord
    spacing = float(affine[0, 0])
    x, y, z = (affine[i, i] * np.arange(n) + affine[i, 3] for i, n in enumerate(brain.shape))
    vent = np.pad(atlas.ventricles, pad)
    dist_out = ndi.distance_transform_edt(~(brain | cord), sampling=spacing).ravel()
    shell = np.flatnonzero((dist_out > 0) & (dist_out <= 25.0))
    offsets = np.stack(
        [c[i] - c0 for c, i, c0 in zip((x, y, z), np.unravel_index(shell, brain.shape), _HEAD_CENTRE)]
    )
    offsets /= np.maximum(np.linalg.norm(offsets, axis=0), 1e-3)
    f32 = np.float32
    head = _Head(
        affine=affine,
        x=x,
        y=y,
        z=z,
        brain=brain,
        gm=np.pad(atlas.gm, pad),
        wm=wm.astype(f32),
        csf=np.pad(atlas.csf, pad),
        vent=vent.astype(f32),
        lobe=np.pad(atlas.lobe, pad),
        hemi=np.pad(atlas.hemi, pad),
        shell=shell,
        dist_out=dist_out[shell].astype(f32),
        dist_in=ndi.distance_transform_edt(brain, sampling=spacing).astype(f32),
        dist_vent=ndi.distance_transform_edt(~vent, sampling=spacing).astype(f32),
        dirs=offsets.astype(f32),
        vent_box=ndi.find_objects(vent.astype(np.uint8))[0],
    )
    for value in vars(head).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # shared by every subject of the process
    return head


def _skull_and_scalp(image: np.ndarray, head: _Head, rng: np.random.Generator) -> np.ndarray:
    """Wrap the brain in a CSF rim, a dark skull (faint diploe) and a bright fatty scalp (in place).

    Layer thicknesses vary smoothly around the head so the shells are not plain offsets of the brain.
    """
    rim, skull, scalp = rng.uniform(1.0, 3.0), rng.uniform(4.0, 7.0), rng.uniform(3.0, 6.0)
    tilt = rng.normal(size=3)
    tilt *= rng.uniform(0.05, 0.15) / np.linalg.norm(tilt)
    dist = head.dist_out / (1.0 + tilt.astype(np.float32) @ head.dirs)
    inner, outer = rim + skull, rim + skull + scalp
    fat, diploe = rng.uniform(0.85, 1.0), rng.uniform(0.1, 0.22)
    conditions = [
        dist <= rim,
        (dist > rim + skull / 3) & (dist <= inner - skull / 3),
        dist <= inner,
        dist <= inner + 0.3 * scalp,
        dist <= outer - 1.0,
        dist <= outer,
    ]
    values = [0.06, diploe, 0.03, 0.35, fat, 0.5]
    np.put(image, head.shell, np.select(conditions, values, default=0.0))  # no brain tissue there
    return image


def _bias_field(head: _Head, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field in [0.8, 1.2]: a random quadratic polynomial over the head."""
    x, y, z = (((a - c) / 100.0).astype(np.float32) for a, c in zip((head.x, head.y, head.z), _HEAD_CENTRE))
    c = rng.normal(size=9).astype(np.float32)
    field = (
        (c[0] * x + c[3] * x * x)[:, None, None]
        + (c[1] * y + c[4] * y * y)[None, :, None]
        + (c[2] * z + c[5] * z * z)[None, None, :]
        + (c[6] * np.outer(x, y))[:, :, None]
        + (c[7] * np.outer(y, z))[None]
        + (c[8] * np.outer(x, z))[:, None, :]
    )
    field -= field.mean()
    field *= rng.uniform(0.08, 0.2) / np.abs(field).max()
    field += 1.0
    return field


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k
