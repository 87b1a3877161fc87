"""BLEU-1 and BLEU-4 per sample: NLTK sentence BLEU, smoothing method1, lower-cased whitespace tokens."""

import evaluate

from brain3d.metrics import text
from brain3d.metrics.scoring import module_info


class Bleu(evaluate.Metric):
    """Returns {"bleu1": [...], "bleu4": [...]}, one score per prediction/reference pair."""

    def _info(self) -> evaluate.MetricInfo:
        return module_info(
            __doc__,
            "Papineni et al., BLEU: a Method for Automatic Evaluation of Machine Translation, ACL 2002.",
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, list[float]]:
        return text.bleu(predictions, references)
