"""Baselines behind one small interface: `predict(volumes) -> list[str]` on preprocessed volumes, scored on
exactly the test subjects of our split.

- `medgemma_slices`: MedGemma 1.5 (or the demo Gemma 3 stand-in) reading every axial slice as an image,
  interleaved with "SLICE n" labels, instruction first, question last, greedy (zero-shot, as the paper).
- `slices_ft`: the same slice-sequence model fine-tuned with LoRA on the train split with the budget of
  phase 2B: separates the value of 3D encoding from the value of fine-tuning.
- `med3dvlm`: MagicXin/Med3DVLM-Qwen-2.5-7B from a local snapshot, opt-in (remote code).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Baseline(Protocol):
    def predict(self, volumes: list[np.ndarray]) -> list[str]: ...


class NotRunnable(RuntimeError):
    """A baseline that cannot run here (no weights offline, remote code not allowed...): the table row
    says why, and no number is produced."""
