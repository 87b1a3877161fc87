"""Clinical keyword F1 per sample (laterality, anatomy, pathology), the paper's whole-word keyword rules."""

import evaluate

from brain3d.metrics import clinical
from brain3d.metrics.scoring import module_info


class ClinicalF1(evaluate.Metric):
    """Returns {"lat_f1": [...], "anat_f1": [...], "path_f1": [...]}, one score per pair."""

    def _info(self) -> evaluate.MetricInfo:
        return module_info(
            __doc__,
            "Brain3D: Brain Report Automation via Inflated Vision Transformers in 3D, arXiv 2602.22098.",
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, list[float]]:
        return clinical.clinical_f1(predictions, references)
