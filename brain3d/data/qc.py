"""QC figures: a montage of every preprocessed subject in the radiological view (anterior up, the
subject's right on the image's left, marked), with the lesion outline where ground truth exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brain3d.data.views import radiological


def axial_tile(ax, volume: np.ndarray, seg: np.ndarray | None, title: str) -> None:
    """One axial slice through the lesion centre (or the middle) in the radiological view."""
    d = int(np.argwhere(seg > 0)[:, 0].mean()) if seg is not None and seg.any() else volume.shape[0] // 2
    ax.imshow(radiological(volume[d]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if seg is not None and seg[d].any():
        ax.contour(radiological(seg[d] > 0), levels=[0.5], colors="red", linewidths=0.8)
    ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=7, va="center")
    ax.text(0.98, 0.5, "L", color="yellow", transform=ax.transAxes, fontsize=7, va="center", ha="right")
    ax.set_title(title, fontsize=6)
    ax.axis("off")


def montage(out_dir: Path, manifest, path: Path, max_subjects: int = 120) -> None:
    """Grid of axial tiles (subject id and laterality label) for the subjects in `manifest`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brain3d.fileio import atomic_path

    rows = list(manifest.itertuples(index=False))[:max_subjects]
    n = max(len(rows), 1)
    cols = min(12, n)
    nrows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 1.2, nrows * 1.35), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        vol = np.load(out_dir / "volumes" / f"{row.subject}.npy", mmap_mode="r")
        seg_path = out_dir / "seg" / f"{row.subject}.npy"
        seg = np.load(seg_path) if seg_path.exists() else None
        axial_tile(ax, np.asarray(vol), seg, f"{row.subject}\n{row.laterality}")
    fig.suptitle(
        "Preprocessed FLAIR, axial through the lesion (radiological view: R = subject's right)", fontsize=8
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
