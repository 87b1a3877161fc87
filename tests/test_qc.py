"""The preprocess stage's QC montage (brain3d.data.qc.montage): one axial tile per subject, 12 to a row, written
as a PNG, also for a subject whose volume (and label map) is all zeros."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brain3d.data.qc import montage

DPI, TILE_W, TILE_H = 110, 1.2, 1.35  # montage's figure: 1.2 x 1.35 inches per tile at 110 dpi
SHAPE = (8, 16, 16)


def _cohort(out_dir, n: int, zero: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    (out_dir / "volumes").mkdir(parents=True)
    (out_dir / "seg").mkdir()
    rows = []
    for i in range(n):
        volume = rng.random(SHAPE).astype(np.float32)
        seg = np.zeros(SHAPE, np.uint8)
        seg[5:7, 4:8, 2:6] = 2  # a lesion on the subject's left
        if i == zero:
            volume, seg = (
                np.zeros(SHAPE, np.float32),
                np.zeros(SHAPE, np.uint8),
            )  # empty, with an empty label map
        np.save(out_dir / "volumes" / f"s{i:02d}.npy", volume)
        np.save(out_dir / "seg" / f"s{i:02d}.npy", seg)
        rows.append({"subject": f"s{i:02d}", "laterality": "left"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n,max_subjects,grid", [(3, 120, (1, 3)), (14, 120, (2, 12)), (14, 5, (1, 5))])
def test_montage_is_a_png_of_one_tile_per_subject(tmp_path, n, max_subjects, grid):
    manifest = _cohort(tmp_path / "pre", n, zero=1)
    path = tmp_path / "figures" / "montage.png"
    path.parent.mkdir()
    montage(tmp_path / "pre", manifest, path, max_subjects=max_subjects)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        rows, cols = grid
        width, height = image.size
        assert abs(width - cols * TILE_W * DPI) <= 1 and abs(height - rows * TILE_H * DPI) <= 1, image.size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # tiles drawn, not a blank page
    assert list(tmp_path.rglob("*.png")) == [path]  # written atomically: no temporary file left


def test_montage_of_one_all_zero_subject(tmp_path):
    manifest = _cohort(tmp_path / "pre", 1, zero=0)
    montage(tmp_path / "pre", manifest, tmp_path / "montage.png")
    with Image.open(tmp_path / "montage.png") as image:
        assert image.format == "PNG" and abs(image.size[0] - TILE_W * DPI) <= 1, image.size
