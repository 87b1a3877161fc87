"""BERTScore F1 per sample (bert-score package) with a local encoder, no idf, no baseline rescaling."""

import evaluate

from brain3d.metrics import text
from brain3d.metrics.scoring import module_info


class Bertscore(evaluate.Metric):
    """Returns {"bertscore": [...]}. Load with `evaluate.load(path, model=..., num_layers=...)` to pick the encoder."""

    def __init__(self, model: str | None = None, num_layers: int | None = None, **kwargs) -> None:
        self.model, self.num_layers = text.resolve_bertscore(model, num_layers)
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return module_info(
            __doc__, "Zhang et al., BERTScore: Evaluating Text Generation with BERT, ICLR 2020."
        )

    def _download_and_prepare(self, dl_manager) -> None:
        text.bert_scorer(self.model, self.num_layers)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, list[float]]:
        return text.bertscore(predictions, references, self.model, self.num_layers)
