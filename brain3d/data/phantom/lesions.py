"""Tumours on the head grid: the BraTS label codes (`LABELS`), the lesion plan per side (`_Lesion`,
`_plan_lesions`; whole-tumour size drawn by `wt_volume_ml` and fitted by `_fit_size`), the mass effect on the
tissue maps, the growth of a lesion's labels and its FLAIR signal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from statistics import NormalDist

import numpy as np
from scipy import ndimage as ndi

from brain3d.data.atlas import HEMISPHERES, LOBES
from brain3d.data.phantom.anatomy import _Head, _rotation

LABELS = {"necrosis": 1, "edema": 2, "enhancing": 4}  # BraTS convention, 0 = background


# Where gliomas arise (unilateral lesions): mostly frontal, temporal and parietal, as in BraTS.
_LOBE_WEIGHTS = {
    "frontal": 0.34,
    "temporal": 0.26,
    "parietal": 0.2,
    "occipital": 0.07,
    "insula": 0.04,
    "cerebellum": 0.04,
    "deep": 0.03,
    "cingulate": 0.02,
}

# Whole-tumour size (WT = labels 1 + 2 + 4) per tumour subject, in ml of the head frame (MNI mm; the random
# pose then scales it by its determinant, 0.72-1.36, median 1). BraTS volumes are absolute ml (1 mm grid after
# rigid alignment to SRI24), so the target is absolute ml too: 81 ml is 4.3 % of the 1883 ml MNI brain mask.
# Source: WT label volumes of 74 BraTS 2020 training cases (a fixed 20 % split of the 369; 59 HGG, 15 LGG),
# read from the released segmentations: median 81.3 ml, range 16.6-230.9 ml, HGG 10th / 90th percentiles
# 33.2 / 170.7 ml. Model: a log-normal through that median with the log-SD of those percentiles
# (ln(170.7 / 33.2) / 2.563 = 0.64), truncated to that range: median 78, quartiles 52 / 117, 10th / 90th
# percentiles 36 / 160 ml. Third-party measurement, not a peer-reviewed table (docs/design.md).
_WT_MEDIAN_ML = 81.3  # before truncation
_WT_LOG_SD = 0.64
_WT_RANGE_ML = (16.6, 230.9)
_BILATERAL_SHARE = (0.3, 0.7)  # a two-lesion bilateral tumour: the left lesion's share of the subject's WT
# Drawn edema reach (mm) -> effective thickness of the edema shell (`_fit_size`): edema reaches only 0.3 of
# it in grey matter and none into CSF or outside the brain. Calibrated on the drawn labels of a 500-subject
# cohort (395 tumours): median drawn / target WT 1.0; cerebellar lesions stay smaller (the cerebellum is).
_EDEMA_REACH = 0.6


class _Clip(IntEnum):
    """The side of the midline (x = 0) a lesion's labels are kept to."""

    NONE = 0  # both sides (midline lesions)
    LEFT = 1  # keep x < 0
    RIGHT = 2  # keep x > 0


@dataclass
class _Lesion:
    centre: np.ndarray  # MNI mm
    radius: float  # core radius (mm) before shape noise
    axes: np.ndarray  # relative semi-axes (product ~1)
    rotation: np.ndarray  # (3, 3)
    kind: str  # ring (rim + necrosis) / solid (enhancing) / non_enhancing (label 1 core)
    rim_mm: float
    edema_mm: float
    clip: _Clip
    lobe: str  # lobe the centre was drawn in
    hemisphere: str  # left / right / midline
    site: str | None = None  # named midline site (corpus callosum, vermis)


def _plan_lesions(side: str, head: _Head, rng: np.random.Generator) -> list[_Lesion]:
    """One lesion per hemisphere side; bilateral = one per side or one crossing the corpus callosum;
    undefined = a small midline lesion (corpus callosum or vermis).

    Left, right and bilateral subjects draw their whole-tumour volume from the BraTS-sized distribution
    (`wt_volume_ml`; a two-lesion bilateral tumour splits it between the sides); the radius drawn here only
    sets the core / edema proportion. Undefined-side lesions stay small: a large one would reach into a
    hemisphere and its side could be named."""
    if side in ("left", "right"):
        return [_lateral_lesion(side, head, rng, rng.uniform(7.5, 20.0), wt_volume_ml(rng))]
    if side == "bilateral":
        volume = wt_volume_ml(rng)
        if rng.random() < 0.6:
            share = rng.uniform(*_BILATERAL_SHARE)
            return [
                _lateral_lesion(s, head, rng, rng.uniform(7.5, 17.0), volume * f)
                for s, f in (("left", share), ("right", 1.0 - share))
            ]
        radius = rng.uniform(12.0, 20.0)
        return [_midline_lesion("corpus callosum", head, rng, radius, crossing=True, volume_ml=volume)]
    if side == "undefined":
        site = "corpus callosum" if rng.random() < 0.5 else "vermis"
        return [_midline_lesion(site, head, rng, rng.uniform(7.5, 11.0), crossing=False)]
    raise ValueError(f"no lesion plan for side '{side}'")


def wt_volume_ml(rng: np.random.Generator) -> float:
    """One tumour subject's whole-tumour volume (ml): the BraTS 2020 log-normal truncated to its range
    (inverse CDF of one uniform draw)."""
    lo, hi = (NormalDist().cdf(math.log(v / _WT_MEDIAN_ML) / _WT_LOG_SD) for v in _WT_RANGE_ML)
    return _WT_MEDIAN_ML * math.exp(_WT_LOG_SD * NormalDist().inv_cdf(rng.uniform(lo, hi)))


def _fit_size(
    volume_ml: float, radius: float, edema_mm: float, edema_cap: float = math.inf
) -> tuple[float, float]:
    """Core radius and edema reach (mm) scaled together so the whole tumour holds about `volume_ml`: a
    sphere of radius core + _EDEMA_REACH x edema. A capped edema leaves the rest of the volume to the core."""
    outer = (3000.0 * volume_ml / (4.0 * math.pi)) ** (1 / 3)
    scale = outer / (radius + _EDEMA_REACH * edema_mm)
    radius, edema_mm = radius * scale, edema_mm * scale
    if edema_mm > edema_cap:
        edema_mm = edema_cap
        radius = outer - _EDEMA_REACH * edema_cap
    return radius, edema_mm


def _unit_volume(axes: np.ndarray) -> np.ndarray:
    """Relative semi-axes rescaled to product 1, so the radius alone sets the lesion volume."""
    return axes / np.prod(axes) ** (1 / 3)


def _lesion_kind(rng: np.random.Generator) -> tuple[str, float, float]:
    kind = str(rng.choice(["ring", "solid", "non_enhancing"], p=[0.6, 0.25, 0.15]))
    edema = rng.uniform(5.0, 25.0) if rng.random() < 0.92 else 0.0
    return kind, rng.uniform(2.5, 6.0), edema


def _lateral_lesion(
    side: str, head: _Head, rng: np.random.Generator, radius: float, volume_ml: float
) -> _Lesion:
    hemi = HEMISPHERES.index(side)
    clip = _Clip.LEFT if side == "left" else _Clip.RIGHT
    names = list(_LOBE_WEIGHTS)
    lobe = names[rng.choice(len(names), p=np.array(list(_LOBE_WEIGHTS.values())))]
    axes = _unit_volume(rng.uniform(0.8, 1.25, 3))
    rotation = _rotation(rng.normal(size=3), rng.uniform(0, 180))
    kind, rim, edema = _lesion_kind(rng)
    radius, edema = _fit_size(volume_ml, radius, edema)
    x = np.abs(head.x)[:, None, None]
    for attempt in range(12):
        if attempt == 6:
            lobe = "frontal"  # a large lesion that fits nowhere in a small lobe goes to the largest
        extent = radius * axes.max() * 1.2
        ok = (
            (head.lobe == LOBES.index(lobe) + 1)
            & (head.hemi == hemi)
            & (x >= extent + 2.0)
            & (head.dist_in >= 0.6 * radius + 4.0)
            & (head.dist_vent >= 0.5 * radius)
        )
        centre = _random_voxel(ok, head, rng)
        if centre is not None:
            return _Lesion(centre, radius, axes, rotation, kind, rim, edema, clip, lobe, side)
        radius = max(7.5, radius * 0.85)
    raise RuntimeError(f"no room for a {side} lesion")  # unreachable with the MNI anatomy


def _midline_lesion(
    site: str,
    head: _Head,
    rng: np.random.Generator,
    radius: float,
    crossing: bool,
    volume_ml: float | None = None,
) -> _Lesion:
    """A lesion centred on the midline; `volume_ml` (a bilateral crossing tumour) sizes it, else the drawn
    radius stands (small undefined-side lesions)."""
    x, y, z = head.x[:, None, None], head.y[None, :, None], head.z[None, None, :]
    if site == "vermis":
        ok = (
            (x == 0)
            & (head.lobe == LOBES.index("cerebellum") + 1)
            & (head.gm > 0.4)
            & (z <= -15)
            & (head.dist_in >= 0.6 * radius)
        )
        lobe = "cerebellum"
    else:
        ok = (x == 0) & (head.wm > 0.5) & (z >= 10) & (z <= 28) & (y >= -35) & (y <= 25)
        lobe = "cingulate"
    # A crossing lesion is wide across the midline (butterfly); an undefined one stays narrow and long.
    stretch = (
        np.array([rng.uniform(1.3, 1.6), rng.uniform(0.9, 1.2), 0.8])
        if crossing
        else np.array([0.8, rng.uniform(1.1, 1.4), 1.0])
    )
    axes = _unit_volume(stretch)
    rotation = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(-15, 15))  # keeps the long axis in place
    kind, rim, edema = _lesion_kind(rng)
    cap = rng.uniform(8.0, 20.0) if crossing else rng.uniform(3.0, 8.0)
    edema = min(edema, cap)
    if volume_ml is not None:
        radius, edema = _fit_size(volume_ml, radius, edema, cap)
    centre = _random_voxel(ok, head, rng)
    if centre is None:
        raise RuntimeError(f"no midline voxel for a {site} lesion")
    return _Lesion(centre, radius, axes, rotation, kind, rim, edema, _Clip.NONE, lobe, "midline", site)


def _random_voxel(mask: np.ndarray, head: _Head, rng: np.random.Generator) -> np.ndarray | None:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    i, j, k = np.unravel_index(idx[rng.integers(idx.size)], mask.shape)
    return np.array([head.x[i], head.y[j], head.z[k]])


def _box(head: _Head, centre: np.ndarray, half_mm: float) -> tuple[slice, slice, slice]:
    """Grid slices of the cube of half-size `half_mm` around `centre`, clipped to the grid."""
    ijk = (centre - head.affine[:3, 3]) / head.spacing
    half = half_mm / head.spacing
    return tuple(
        slice(max(0, int(c - half)), min(n, int(math.ceil(c + half)) + 1)) for c, n in zip(ijk, head.shape)
    )


def _offsets(head: _Head, box: tuple[slice, ...], centre: np.ndarray) -> list[np.ndarray]:
    return [
        np.asarray(a[s] - c, np.float32).reshape(shape)
        for a, s, c, shape in zip((head.x, head.y, head.z), box, centre, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)))
    ]


def _mass_effect(
    lesion: _Lesion, head: _Head, maps: dict[str, np.ndarray], rng: np.random.Generator
) -> float:
    """Push the brain radially away from a lesion and efface the CSF (sulci, ventricle) it squeezes.

    The push is largest at the core edge, falls smoothly to 0 at `reach` beyond it and fades near the brain
    surface, so the outline of the brain stays put. Returns the largest push at the midline (mm).
    """
    size = np.clip((lesion.radius - 6.0) / 10.0, 0.0, 1.0)
    push = lesion.radius * rng.uniform(0.25, 0.5) * size
    reach = 0.8 * lesion.radius + rng.uniform(12.0, 25.0)
    efface = rng.uniform(0.6, 1.0) * size
    if push <= 0:
        return 0.0
    box = _box(head, lesion.centre, lesion.radius * lesion.axes.max() + reach + head.spacing)
    dx, dy, dz = _offsets(head, box, lesion.centre)
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    t = np.clip((dist - lesion.radius) / reach, 0.0, 1.0)
    falloff = np.where(dist < lesion.radius, 1.0, 1.0 - t * t * (3.0 - 2.0 * t)).astype(np.float32)
    along = push * np.minimum(dist / lesion.radius, 1.0) * falloff * np.clip(head.dist_in[box] / 8.0, 0, 1)
    along /= np.maximum(dist, 1e-3)
    shifted = [dx * along, dy * along, dz * along]
    # Backward mapping: the value at p comes from p - u(p), in the box's own voxel coordinates; only the
    # voxels that move are interpolated.
    moving = np.nonzero(along > 1e-4)
    coords = np.stack([i - s[moving] / head.spacing for i, s in zip(moving, shifted)])
    for name in ("gm", "wm", "csf", "vent"):
        part = maps[name][box]
        part[moving] = ndi.map_coordinates(part, coords, order=1, mode="nearest")
    gm, wm, csf = maps["gm"][box], maps["wm"][box], maps["csf"][box]
    lost = csf * efface * falloff
    to_gm = gm / np.maximum(gm + wm, 1e-6)
    maps["gm"][box] = gm + lost * to_gm
    maps["wm"][box] = wm + lost * (1.0 - to_gm)
    maps["csf"][box] = csf - lost
    maps["vent"][box] *= 1.0 - efface * falloff
    midline = (np.abs(head.x[box[0]]) < 1e-6)[:, None, None] & head.brain[box]
    return float(np.abs(shifted[0])[np.broadcast_to(midline, dist.shape)].max(initial=0.0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=2.5)
    return field / max(float(field.std()), 1e-6)


def _grow_lesion(
    lesion: _Lesion, head: _Head, maps: dict[str, np.ndarray], labels: np.ndarray, rng: np.random.Generator
) -> tuple[slice, ...]:
    """Draw a lesion's BraTS labels into `labels`: a noise-distorted ellipsoidal core (enhancing rim around
    necrosis, solid enhancement, or a non-enhancing core) and edema reaching further along white matter."""
    extent = lesion.radius * lesion.axes.max()
    box = _box(head, lesion.centre, 1.4 * extent + 1.6 * lesion.edema_mm + 6.0)
    offsets = np.stack(np.broadcast_arrays(*_offsets(head, box, lesion.centre)))
    local = np.tensordot((lesion.rotation.T / lesion.axes[:, None]).astype(np.float32), offsets, axes=1)
    shape = offsets.shape[1:]
    rho = np.linalg.norm(local, axis=0) / lesion.radius
    rho += rng.uniform(0.08, 0.18) * _smooth_noise(rng, shape, 3.0)
    rho += rng.uniform(0.02, 0.06) * _smooth_noise(rng, shape, 1.0)

    allowed = head.brain[box].copy()
    infratentorial = head.lobe[box] == LOBES.index("cerebellum") + 1
    allowed &= infratentorial if lesion.lobe == "cerebellum" else ~infratentorial
    if lesion.clip is not _Clip.NONE:
        x = head.x[box[0]][:, None, None]
        allowed &= (x < -1.0) if lesion.clip is _Clip.LEFT else (x > 1.0)
    core = (rho < 1.0) & allowed
    out = np.zeros(shape, np.uint8)
    if lesion.edema_mm > 0:
        reach = lesion.edema_mm * (0.3 + 0.7 * maps["wm"][box]) * (1.0 + 0.3 * _smooth_noise(rng, shape, 4.0))
        from_core = ndi.distance_transform_edt(~core, sampling=head.spacing)
        out[(from_core > 0) & (from_core < reach) & allowed & (maps["csf"][box] < 0.5)] = LABELS["edema"]
    if lesion.kind == "non_enhancing":
        out[core] = LABELS["necrosis"]
    else:
        out[core] = LABELS["enhancing"]
        if lesion.kind == "ring":
            out[core & (rho < 1.0 - lesion.rim_mm / lesion.radius)] = LABELS["necrosis"]
    region = labels[box]
    region[out > 0] = out[out > 0]
    return box


def _lesion_signal(
    image: np.ndarray, labels: np.ndarray, box: tuple[slice, ...], rng: np.random.Generator
) -> None:
    """FLAIR signal in a lesion box: edema brightest, enhancing rim high, necrosis intermediate and
    heterogeneous; blended into the surrounding brain over about one voxel."""
    lab = labels[box]
    base = image[box]
    texture = _smooth_noise(rng, lab.shape, 1.0)
    target = base.copy()
    edema, rim, necrosis = rng.uniform(1.08, 1.25), rng.uniform(0.88, 1.0), rng.uniform(0.4, 0.68)
    for label, level, spread in (
        (LABELS["edema"], edema, 0.04),
        (LABELS["enhancing"], rim, 0.06),
        (LABELS["necrosis"], necrosis, 0.1),
    ):
        hit = lab == label
        target[hit] = level + spread * texture[hit]
    band = ndi.binary_dilation(lab > 0, iterations=2)
    image[box] = np.where(band, ndi.gaussian_filter(target, 0.7), base)
