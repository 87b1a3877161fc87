"""The learning-rate schedule of every training phase (brain3d.training.loop.warmup_cosine): a linear warm-up
from near 0 to the peak over `warmup_frac` of the steps, then a cosine decay to ~0 at the last step."""

from __future__ import annotations

import numpy as np
import pytest

from brain3d.training.loop import warmup_cosine


@pytest.mark.parametrize("total,frac", [(200, 0.25), (1000, 0.05), (37, 0.1)])
def test_warmup_then_cosine_decay(total, frac):
    warmup = round(total * frac)
    f = np.array([warmup_cosine(total, frac)(step) for step in range(total)])
    assert f[0] <= 1.0 / warmup + 1e-9 and f[0] > 0  # starts near 0 (not at 0: the first step trains)
    assert f.max() == pytest.approx(1.0) and f[warmup - 1] == pytest.approx(1.0)  # the peak, as warm-up ends
    assert f[warmup] == pytest.approx(1.0, abs=1e-3)  # the decay starts from the peak: no jump
    assert np.all(np.diff(f[:warmup]) > 0), "warm-up is not increasing"
    assert np.all(np.diff(f[warmup - 1 :]) <= 1e-12), "the decay is not monotone"
    assert f[-1] < 1e-2 and warmup_cosine(total, frac)(total) == pytest.approx(
        0.0, abs=1e-12
    )  # ~0 at the end
    half = warmup + (total - warmup) // 2  # halfway through the decay: half the peak
    assert f[half] == pytest.approx(0.5, abs=0.05)


def test_no_warmup_starts_at_the_peak():
    f = warmup_cosine(50, 0.0)  # warm-up is one step long: the peak at once, the decay after it
    assert f(0) == f(1) == 1.0 and f(2) < 1.0 and f(49) < 1e-2
