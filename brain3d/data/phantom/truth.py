"""Ground truth for truth.json, measured on the drawn labels: the healthy schema, and a tumour's lesions,
findings (ventricle compression, midline shift), volumes, diameters and the lobes involved per hemisphere."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from brain3d.data.atlas import HEMISPHERES, LOBES
from brain3d.data.phantom.anatomy import _Head
from brain3d.data.phantom.lesions import LABELS, _Clip, _Lesion

_LOBE_SHARE = 0.15  # a lobe is involved when it holds this share of a hemisphere's lesion ...
_LOBE_MIN_ML = 0.5  # ... and at least this volume
_COMPRESSION = 0.2  # relative loss of lateral-ventricle volume recorded as compression


def _healthy_truth() -> dict:
    """The truth fields of a healthy subject: the same schema as a tumour's, with nothing found."""
    return {
        "lobes": {"left": [], "right": [], "midline": []},
        "lesions": [],
        "findings": {
            "edema": False,
            "necrosis": False,
            "enhancement": False,
            "periventricular": False,
            "ventricle_compression": {"present": False, "side": None},
            "midline_shift_mm": 0.0,
        },
        "volumes_ml": {name: 0.0 for name in (*LABELS, "core", "total")},
        "max_diameter_mm": 0.0,
    }


def _tumour_truth(
    side: str,
    lesions: list[_Lesion],
    labels: np.ndarray,
    region: tuple[slice, ...],
    vent: np.ndarray,
    head: _Head,
    pose: np.ndarray,
    shift: float,
) -> dict:
    """Lobes, findings, volumes, diameters and centres measured on the drawn labels (scaled by the pose).

    `region` bounds every lesion voxel, so the measurements only look there.
    """
    linear = pose[:3, :3]
    voxel_ml = float(head.spacing**3 * abs(np.linalg.det(linear)) / 1000.0)
    scale = float(abs(np.linalg.det(linear)) ** (1 / 3))
    lab = labels[region]
    xs, ys, zs = (a[r] for a, r in zip((head.x, head.y, head.z), region))
    idx = np.nonzero(lab)
    points_all, values_all = np.stack([xs[idx[0]], ys[idx[1]], zs[idx[2]]], axis=1), lab[idx]
    entries = []
    for lesion in lesions:
        # Lesions never share a side: a clipped one owns the labels on its side of the midline.
        own = (
            slice(None)
            if lesion.clip is _Clip.NONE
            else points_all[:, 0] < 0
            if lesion.clip is _Clip.LEFT
            else points_all[:, 0] > 0
        )
        points, values = points_all[own], values_all[own]
        core = points[(values == LABELS["enhancing"]) | (values == LABELS["necrosis"])]
        centre = points.mean(axis=0)
        entries.append(
            {
                "hemisphere": lesion.hemisphere,
                "lobe": lesion.lobe,
                "site": lesion.site,
                "kind": lesion.kind,
                "centre_mni_mm": _round(centre),
                "centre_world_mm": _round(linear @ centre + pose[:3, 3]),
                "volumes_ml": _volumes(values, voxel_ml),
                "core_diameter_mm": _diameter(core @ linear.T, head.spacing * scale),
                "lesion_diameter_mm": _diameter(points @ linear.T, head.spacing * scale),
            }
        )
    volumes = _volumes(values_all, voxel_ml)

    box = head.vent_box
    x = head.x[box[0]][:, None, None]
    before, after = head.vent[box], vent[box] * (labels[box] == 0)
    halves = {"left": np.broadcast_to(x < 0, before.shape), "right": np.broadcast_to(x > 0, before.shape)}
    change = {s: round(float(after[m].sum()) / float(before[m].sum()) - 1.0, 3) for s, m in halves.items()}
    squeezed = [s for s in halves if change[s] <= -_COMPRESSION]
    if side in halves:
        squeezed = [s for s in squeezed if s == side]  # a unilateral lesion: only the ipsilateral ventricle
    compression_side = None
    if squeezed:
        compression_side = "midline" if side == "undefined" else "both" if len(squeezed) == 2 else squeezed[0]
    near_ventricle = ndi.binary_dilation(lab > 0, iterations=1) & (vent[region] > 0.5)
    return {
        "lobes": _lobes_involved(side, lab > 0, head.lobe[region], head.hemi[region], head.spacing),
        "lesions": entries,
        "findings": {
            "edema": volumes["edema"] >= 0.5,
            "necrosis": volumes["necrosis"] >= 0.3,
            "enhancement": volumes["enhancing"] >= 0.3,
            "periventricular": bool(near_ventricle.any()),
            "ventricle_compression": {
                "present": bool(squeezed),
                "side": compression_side,
                "volume_change": change,
            },
            "midline_shift_mm": round(shift * scale, 1),
        },
        "volumes_ml": volumes,
        "max_diameter_mm": max(e["core_diameter_mm"] for e in entries),
    }


def _volumes(lab: np.ndarray, voxel_ml: float) -> dict[str, float]:
    counts = {name: int((lab == value).sum()) for name, value in LABELS.items()}
    vol = {name: round(n * voxel_ml, 2) for name, n in counts.items()}
    vol["core"] = round((counts["necrosis"] + counts["enhancing"]) * voxel_ml, 2)
    vol["total"] = round(sum(counts.values()) * voxel_ml, 2)
    return vol


def _diameter(points: np.ndarray, voxel_mm: float) -> float:
    """Largest distance across a set of voxel centres, plus one voxel (their extent)."""
    if len(points) < 2:
        return round(voxel_mm * len(points), 1)
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:  # flat or tiny sets: use all points
        pass
    return round(float(pdist(points).max()) + voxel_mm, 1)


def _lobes_involved(
    side: str, lesion: np.ndarray, lobe: np.ndarray, hemi: np.ndarray, spacing: float
) -> dict[str, list[str]]:
    """Per hemisphere, the lobes holding a clear share of that hemisphere's lesion (largest first).

    A unilateral lesion lists its own side only; only a midline (undefined-side) lesion lists the
    midline voxels (vermis, the x = 0 plane) under "midline"."""
    voxel_ml = spacing**3 / 1000.0
    out: dict[str, list[str]] = {}
    for key, name in (("left", "left"), ("right", "right"), ("midline", "none")):
        counts = np.bincount(lobe[lesion & (hemi == HEMISPHERES.index(name))], minlength=len(LOBES) + 1)[1:]
        total = counts.sum()
        if (
            total == 0
            or (side in ("left", "right") and key != side)
            or (key == "midline" and side != "undefined")
        ):
            out[key] = []
            continue
        order = np.argsort(-counts, kind="stable")
        chosen = [
            LOBES[i]
            for i in order
            if counts[i] >= _LOBE_SHARE * total and counts[i] * voxel_ml >= _LOBE_MIN_ML
        ]
        out[key] = chosen or [LOBES[order[0]]]
    return out


def _round(v: np.ndarray, digits: int = 2) -> list[float]:
    return [round(float(a), digits) for a in v]
