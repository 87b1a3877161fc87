"""LIME figures: attribution over axial, coronal and sagittal slices (red supports, blue opposes), with
the ground-truth lesion outlined; and a contact sheet of every explained case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brain3d.data.views import radiological
from brain3d.fileio import atomic_path


def _planes(array: np.ndarray, centre: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    """Axial, coronal, sagittal slices through `centre` in display orientation (radiological)."""
    d, h, w = centre
    return [
        ("axial", radiological(array[d])),  # anterior up, subject's right on the left
        ("coronal", np.flipud(array[:, h, ::-1])),  # superior up, subject's right on the left
        ("sagittal", np.flipud(array[:, ::-1, w])),  # superior up, anterior on the left
    ]


def centre_of(volume: np.ndarray, seg: np.ndarray | None, attribution: np.ndarray) -> tuple[int, int, int]:
    target = seg > 0 if seg is not None and seg.any() else attribution >= attribution.max()
    return tuple(int(round(c)) for c in np.argwhere(target).mean(0))


def overlay(axes, volume: np.ndarray, attribution: np.ndarray, seg: np.ndarray | None, title: str) -> None:
    """Draw the three planes into `axes` (3 matplotlib axes)."""
    centre = centre_of(volume, seg, attribution)
    vmax = float(np.abs(attribution).max()) or 1.0
    rows = zip(
        _planes(volume, centre),
        _planes(attribution, centre),
        _planes(seg > 0 if seg is not None else np.zeros_like(volume, bool), centre),
    )
    for ax, ((plane, img), (_, att), (_, les)) in zip(axes, rows):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        ax.imshow(
            np.ma.masked_where(att == 0, att),
            cmap="bwr",
            vmin=-vmax,
            vmax=vmax,
            alpha=0.5,
            interpolation="nearest",
            aspect="auto",
        )
        if les.any():
            ax.contour(les, levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{title} — {plane}" if plane == "axial" else plane, fontsize=7)
        ax.axis("off")


def save_case_figure(
    path: Path, volume: np.ndarray, attribution: np.ndarray, seg: np.ndarray | None, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(8, 3))
    overlay(axes, volume, attribution, seg, title)
    fig.text(
        0.5,
        0.01,
        "red: supports the score, blue: opposes; green: true lesion; radiological view",
        ha="center",
        fontsize=6,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def save_contact_sheet(
    path: Path, cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]
) -> None:
    """One row per case: (title, volume, attribution, seg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(max(len(cases), 1), 3, figsize=(8, 2.6 * max(len(cases), 1)), squeeze=False)
    for row, (title, volume, attribution, seg) in zip(axes, cases):
        overlay(row, volume, attribution, seg, title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
