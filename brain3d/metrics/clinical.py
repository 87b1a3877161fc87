"""Clinical keyword metrics: the paper's keyword F1, a negation-aware variant, and pathology assertion.

Matching is whole-word and case-insensitive: a word is a maximal run of letters or digits, so
"left-sided" contains "left", but "lesions" does not match "lesion" and "tumour" does not match "tumor"
(the paper's keyword sets are used exactly as published, without plurals or British spellings).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CATEGORIES: dict[str, tuple[str, ...]] = {
    "laterality": ("left", "right", "bilateral"),
    "anatomy": ("frontal", "parietal", "temporal", "occipital", "cerebellum", "ventricle", "periventricular"),
    "pathology": ("edema", "necrosis", "enhancement", "compression", "tumor", "mass", "lesion"),
}
#: Per-sample F1 column for each category.
F1_COLUMNS = {"laterality": "lat_f1", "anatomy": "anat_f1", "pathology": "path_f1"}

# Negation: a cue before a finding negates the rest of its clause ("no mass, edema or midline shift");
# a cue after it negates the clause up to the cue ("edema is not seen", "necrosis: none"). Clauses end
# at . ; ! ? or a new line (not at a colon: "Edema: absent" is one statement) and at contrastive words
# ("no edema but a mass ..." asserts the mass).
_PRE_CUES = (("no",), ("not",), ("without",), ("neither",), ("nor",), ("negative", "for"), ("free", "of"),
             ("absence", "of"), ("rule", "out"))
_POST_CUES = (("absent",), ("none",), ("excluded",), ("ruled", "out"), ("not", "seen"), ("not", "identified"),
              ("not", "present"), ("not", "evident"), ("not", "visible"), ("not", "visualized"),
              ("not", "observed"), ("not", "detected"), ("not", "demonstrated"), ("not", "appreciated"))
# Phrases that contain a cue but do not negate a finding ("a mass cannot be excluded" asserts it).
_PSEUDO = (("no", "change"), ("no", "interval", "change"), ("no", "significant", "change"), ("not", "only"),
           ("cannot", "be", "excluded"), ("cannot", "be", "ruled", "out"), ("not", "be", "excluded"),
           ("not", "be", "ruled", "out"), ("not", "excluded"), ("not", "ruled", "out"))
_CLAUSE_BREAKS = frozenset(".;!?\n") | {"but", "however", "although", "though", "whereas", "except", "yet"}
_TOKEN = re.compile(r"[^\W_]+|[.;!?\n]")


def words(text: str) -> list[str]:
    """Lower-cased words: maximal runs of letters or digits (underscores and punctuation separate)."""
    return re.findall(r"[^\W_]+", text.lower())


def extract(text: str) -> dict[str, set[str]]:
    """The paper's keyword sets found anywhere in `text` (negated mentions count too)."""
    found = set(words(text))
    return {cat: found.intersection(keywords) for cat, keywords in CATEGORIES.items()}


def _starts(clause: list[str], i: int, phrases: tuple[tuple[str, ...], ...]) -> int:
    """Length of the first phrase that starts at clause[i], or 0."""
    for phrase in phrases:
        if tuple(clause[i:i + len(phrase)]) == phrase:
            return len(phrase)
    return 0


def _clauses(text: str) -> list[list[str]]:
    clauses: list[list[str]] = [[]]
    for tok in _TOKEN.findall(text.lower()):
        if tok in _CLAUSE_BREAKS:
            clauses.append([])
        else:
            clauses[-1].append(tok)
    return [c for c in clauses if c]


def _asserted_words(clause: list[str]) -> list[str]:
    """The words of one clause that lie outside every negation scope."""
    negated = [False] * len(clause)
    i = 0
    while i < len(clause):
        if n := _starts(clause, i, _PSEUDO):
            i += n
            continue
        if _starts(clause, i, _PRE_CUES):
            negated[i:] = [True] * (len(clause) - i)
        if n := _starts(clause, i, _POST_CUES):
            negated[:i + n] = [True] * (i + n)
        i += 1
    return [w for w, neg in zip(clause, negated) if not neg]


def extract_negation_aware(text: str) -> dict[str, set[str]]:
    """Keyword sets of the findings `text` asserts: mentions inside a negation scope are dropped.

    "No mass, edema or midline shift", "negative for necrosis", "free of enhancement", "absence of
    edema", "edema is not seen" assert nothing; "left frontal mass without necrosis" asserts left,
    frontal and mass. A rule-based NegEx-style approximation, reported as a supplementary analysis.
    """
    asserted = {w for clause in _clauses(text) for w in _asserted_words(clause)}
    return {cat: asserted.intersection(keywords) for cat, keywords in CATEGORIES.items()}


def asserts_pathology(text: str) -> bool:
    """Whether a report asserts any pathology keyword outside negation (healthy specificity, sensitivity)."""
    return bool(extract_negation_aware(text)["pathology"])


def set_f1(predicted: set[str], reference: set[str]) -> float:
    """F1 = 2TP / (2TP + FP + FN) of two keyword sets; 1.0 when both are empty."""
    if not predicted and not reference:
        return 1.0
    tp = len(predicted & reference)
    return 2 * tp / (2 * tp + len(predicted - reference) + len(reference - predicted))


def clinical_f1(predictions: Sequence[str], references: Sequence[str], *,
                negation_aware: bool = False) -> dict[str, list[float]]:
    """Per-sample keyword F1 per category, columns `lat_f1`, `anat_f1`, `path_f1`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    fn = extract_negation_aware if negation_aware else extract
    pairs = [(fn(p), fn(r)) for p, r in zip(predictions, references)]
    return {col: [set_f1(pred[cat], ref[cat]) for pred, ref in pairs] for cat, col in F1_COLUMNS.items()}
