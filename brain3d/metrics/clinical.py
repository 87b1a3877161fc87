"""Clinical keyword metrics: the paper's keyword F1, a negation-aware variant, and pathology assertion.

Matching is whole-word and case-insensitive (see `brain3d.data.findings`, the keyword sets' and the negation
rules' one home): "left-sided" contains "left", but "lesions" does not match "lesion" and "tumour" does not
match "tumor" (the paper's keyword sets are used exactly as published, without plurals or British spellings).
"""

from __future__ import annotations

from collections.abc import Sequence

# The negation-aware extractor lives with the report text (brain3d.data.findings), where training reads it too.
from brain3d.data.findings import CATEGORIES, extract_negation_aware, words

__all__ = [
    "CATEGORIES",
    "F1_COLUMNS",
    "asserts_pathology",
    "clinical_f1",
    "extract",
    "extract_negation_aware",
    "set_f1",
    "words",
]

#: Per-sample F1 column for each category.
F1_COLUMNS = {"laterality": "lat_f1", "anatomy": "anat_f1", "pathology": "path_f1"}


def extract(text: str) -> dict[str, set[str]]:
    """The paper's keyword sets found anywhere in `text` (negated mentions count too)."""
    found = set(words(text))
    return {cat: found.intersection(keywords) for cat, keywords in CATEGORIES.items()}


def asserts_pathology(text: str) -> bool:
    """Whether a report asserts any pathology keyword outside negation (healthy specificity, sensitivity)."""
    return bool(extract_negation_aware(text)["pathology"])


def set_f1(predicted: set[str], reference: set[str]) -> float:
    """F1 = 2TP / (2TP + FP + FN) of two keyword sets; 1.0 when both are empty."""
    if not predicted and not reference:
        return 1.0
    tp = len(predicted & reference)
    return 2 * tp / (2 * tp + len(predicted - reference) + len(reference - predicted))


def clinical_f1(
    predictions: Sequence[str], references: Sequence[str], *, negation_aware: bool = False
) -> dict[str, list[float]]:
    """Per-sample keyword F1 per category, columns `lat_f1`, `anat_f1`, `path_f1`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    fn = extract_negation_aware if negation_aware else extract
    pairs = [(fn(p), fn(r)) for p, r in zip(predictions, references)]
    return {col: [set_f1(pred[cat], ref[cat]) for pred, ref in pairs] for cat, col in F1_COLUMNS.items()}
