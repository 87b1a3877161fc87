"""The laterality-flip augmentation (phases 1 and 2): the volume mirrored across the mid-sagittal plane (W, the
last axis, runs from the subject's left to right), every side word of its report swapped (left <-> right, case
kept, "bilateral" untouched), and the side target swapped likewise; each half is its own inverse."""

from __future__ import annotations

import re

import torch

from brain3d.data.findings import SIDES, UNDEFINED_SIDE, mirror_side
from brain3d.data.reports import laterality_from_report, swap_laterality
from brain3d.data.views import mirror

SWAPPED = {
    "left": "right",
    "right": "left",
    "Left": "Right",
    "Right": "Left",
    "LEFT": "RIGHT",
    "RIGHT": "LEFT",
}
REPORTS = [
    "A lesion is seen in the left frontal lobe, extending into the Left parietal lobe, with compression of the "
    "LEFT lateral ventricle. A second focus lies in the right cerebellar hemisphere.",
    "Right temporal mass with edema; no lesion on the left. The leftover cleft is normal.",
    "Bilateral periventricular lesions, more marked on the right than on the left, bilaterally symmetric edema.",
    "No abnormal signal intensity is seen in the brain parenchyma.",
]


def test_mirror_flips_the_left_right_axis_only_and_twice_is_identity():
    torch.manual_seed(0)
    batch = torch.rand(2, 1, 3, 4, 5)  # (B, 1, D, H, W) as phase 2 mirrors it; phase 1 mirrors (D, H, W)
    flipped = mirror(batch)
    assert flipped.shape == batch.shape
    for w in range(5):
        assert torch.equal(flipped[..., w], batch[..., 4 - w]), w
    assert torch.equal(mirror(flipped), batch)
    volume = torch.zeros(4, 6, 8)
    volume[3, 5, 1] = 1.0  # superior, anterior, the subject's LEFT (low W)
    assert torch.nonzero(mirror(volume)).tolist() == [[3, 5, 6]]  # same slice and row, now on the right


def test_every_side_word_is_swapped_and_nothing_else():
    for report in REPORTS:
        swapped = swap_laterality(report)
        before, after = re.findall(r"\w+|\W+", report), re.findall(r"\w+|\W+", swapped)
        assert len(before) == len(after), report
        for old, new in zip(before, after):
            assert new == SWAPPED.get(old, old), (old, new, report)
        assert swap_laterality(swapped) == report  # twice is identity
        side = laterality_from_report(report)
        assert laterality_from_report(swapped) == {"left": "right", "right": "left"}.get(side, side)
    assert swap_laterality(REPORTS[-1]) == REPORTS[-1]  # no side, nothing to swap


def test_side_targets_swap_left_and_right_only_and_twice_is_identity():
    left, right = SIDES.index("left"), SIDES.index("right")
    assert (mirror_side(left), mirror_side(right)) == (right, left)
    for side in [*range(len(SIDES)), UNDEFINED_SIDE]:
        assert mirror_side(mirror_side(side)) == side
        if side not in (left, right):
            assert mirror_side(side) == side, SIDES[side] if side >= 0 else "undefined"
