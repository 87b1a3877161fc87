"""CIDEr-D per sample (pycocoevalcap); document frequencies from the references passed in the same call."""

import evaluate

from brain3d.metrics import text
from brain3d.metrics.scoring import module_info


class Cider(evaluate.Metric):
    """Returns {"cider": [...]}, one score per pair. Pass the whole test set at once: its references are the corpus."""

    def _info(self) -> evaluate.MetricInfo:
        return module_info(
            __doc__, "Vedantam et al., CIDEr: Consensus-based Image Description Evaluation, CVPR 2015."
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, list[float]]:
        return text.cider(predictions, references)
