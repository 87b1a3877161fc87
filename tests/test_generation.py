"""The shuffled-tokens control of the generate stage: every test subject reads another subject's visual tokens
(brain3d.generation.derangement), the same ones in every run."""

from __future__ import annotations

import numpy as np
import pytest

from brain3d.generation import derangement


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10, 31, 100])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm.tolist()) == list(range(n)), (n, seed, perm)  # nobody dropped or repeated
        fixed = np.flatnonzero(perm == np.arange(n))
        assert fixed.size == 0, f"n={n} seed={seed}: subjects {fixed.tolist()} keep their own tokens"


def test_derangement_is_seeded():
    assert derangement(2, 0).tolist() == [1, 0]  # the only derangement of two
    first = derangement(40, 7)
    assert np.array_equal(derangement(40, 7), first), "the same seed must give the same control"
    others = {tuple(derangement(40, seed)) for seed in range(8)}
    assert len(others) == 8, "another seed must give another pairing"


@pytest.mark.parametrize("n", [0, 1])
def test_derangement_needs_two_subjects(n):
    with pytest.raises(ValueError, match="at least 2"):
        derangement(n, 0)
