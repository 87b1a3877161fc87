"""ROUGE-1, ROUGE-2 and ROUGE-L F-measure per sample: rouge-score's RougeScorer with the Porter stemmer."""

import evaluate

from brain3d.metrics import text
from brain3d.metrics.scoring import module_info


class Rouge(evaluate.Metric):
    """Returns {"rouge1": [...], "rouge2": [...], "rougeL": [...]}, one score per pair."""

    def _info(self) -> evaluate.MetricInfo:
        return module_info(
            __doc__, "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, ACL Workshop 2004."
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, list[float]]:
        return text.rouge(predictions, references)
