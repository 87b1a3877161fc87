"""What a report asserts: negation-aware clinical keywords, and the phase-1 findings targets built from them.

This is the one home of the project's negation-aware extractor: the metrics (`brain3d.metrics.clinical`,
the CLI) and the findings-grounded phase 1 (`brain3d.training.phases`) both read reports through it, and it
sits in `data` so that training never imports `metrics` (layers: data <- models <- training; metrics reads
data). Targets come from report text only, never from segmentations, so every cohort with reports (the
phantom's, TextBraTS) gets the same supervision.

Matching is whole-word and case-insensitive: a word is a maximal run of letters or digits, so
"left-sided" contains "left", but "lesions" does not match "lesion" and "tumour" does not match "tumor"
(the paper's keyword sets are used exactly as published, without plurals or British spellings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CATEGORIES: dict[str, tuple[str, ...]] = {
    "laterality": ("left", "right", "bilateral"),
    "anatomy": ("frontal", "parietal", "temporal", "occipital", "cerebellum", "ventricle", "periventricular"),
    "pathology": ("edema", "necrosis", "enhancement", "compression", "tumor", "mass", "lesion"),
}

# Negation: a cue before a finding negates the rest of its clause ("no mass, edema or midline shift");
# a cue after it negates the clause up to the cue ("edema is not seen", "necrosis: none"). Clauses end
# at . ; ! ? or a new line (not at a colon: "Edema: absent" is one statement) and at contrastive words
# ("no edema but a mass ..." asserts the mass).
_PRE_CUES = (
    ("no",),
    ("not",),
    ("without",),
    ("neither",),
    ("nor",),
    ("negative", "for"),
    ("free", "of"),
    ("absence", "of"),
    ("rule", "out"),
)
_POST_CUES = (
    ("absent",),
    ("none",),
    ("excluded",),
    ("ruled", "out"),
    ("not", "seen"),
    ("not", "identified"),
    ("not", "present"),
    ("not", "evident"),
    ("not", "visible"),
    ("not", "visualized"),
    ("not", "observed"),
    ("not", "detected"),
    ("not", "demonstrated"),
    ("not", "appreciated"),
)
# Phrases that contain a cue but do not negate a finding ("a mass cannot be excluded" asserts it).
_PSEUDO = (
    ("no", "change"),
    ("no", "interval", "change"),
    ("no", "significant", "change"),
    ("not", "only"),
    ("cannot", "be", "excluded"),
    ("cannot", "be", "ruled", "out"),
    ("not", "be", "excluded"),
    ("not", "be", "ruled", "out"),
    ("not", "excluded"),
    ("not", "ruled", "out"),
)
_CLAUSE_BREAKS = frozenset(".;!?\n") | {"but", "however", "although", "though", "whereas", "except", "yet"}
_TOKEN = re.compile(r"[^\W_]+|[.;!?\n]")


def words(text: str) -> list[str]:
    """Lower-cased words: maximal runs of letters or digits (underscores and punctuation separate)."""
    return re.findall(r"[^\W_]+", text.lower())


def _starts(clause: list[str], i: int, phrases: tuple[tuple[str, ...], ...]) -> int:
    """Length of the first phrase that starts at clause[i], or 0."""
    for phrase in phrases:
        if tuple(clause[i : i + len(phrase)]) == phrase:
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
            negated[: i + n] = [True] * (i + n)
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


# ------------------------------------------------------------------------------ phase-1 findings targets
#: Side classes, in the order of the side logits (and of the laterality probe's classes).
SIDES = ("left", "right", "bilateral", "none")
#: Side target of a report that asserts a finding but no side (midline lesions): left out of the side loss.
UNDEFINED_SIDE = -100
ANATOMY, PATHOLOGY = CATEGORIES["anatomy"], CATEGORIES["pathology"]
_BOTH_SIDES = (
    ("bilateral",),
    ("bilaterally",),
    ("both", "hemispheres"),
    ("both", "cerebral", "hemispheres"),
    ("both", "sides"),
)


@dataclass(frozen=True)
class Findings:
    """Phase-1 targets of one report: presence (0/1), side index into SIDES (or UNDEFINED_SIDE), and
    multi-hot anatomy (over ANATOMY) and pathology (over PATHOLOGY)."""

    presence: int
    side: int
    anatomy: tuple[int, ...]
    pathology: tuple[int, ...]


def asserted_side(text: str) -> str:
    """left / right / bilateral / undefined from the side words a report asserts (negated mentions dropped).

    Bilateral: "bilateral(ly)", "both (cerebral) hemispheres", "both sides", or both left and right asserted.
    """
    sides: set[str] = set()
    for clause in _clauses(text):
        kept = _asserted_words(clause)
        if any(_starts(kept, i, _BOTH_SIDES) for i in range(len(kept))):
            return "bilateral"
        sides |= {"left", "right"}.intersection(kept)
    if sides == {"left", "right"}:
        return "bilateral"
    return sides.pop() if sides else "undefined"


#: The hemispheres a report must name for each side the findings head can decide.
HEMISPHERES = {"left": {"left"}, "right": {"right"}, "bilateral": {"left", "right"}}


def named_hemispheres(text: str) -> set[str]:
    """The hemispheres (left, right) a report names outside negation: "bilateral" alone names neither, as
    laterality F1 reads a report's side words against a reference that names the sides of each part."""
    return {w for clause in _clauses(text) for w in _asserted_words(clause)} & {"left", "right"}


def findings_targets(text: str) -> Findings:
    """The findings a report asserts, as targets: presence = any pathology keyword asserted; side = the
    asserted side when present ("undefined", i.e. masked, when present without a side), "none" when absent."""
    found = extract_negation_aware(text)
    presence = int(bool(found["pathology"]))
    side = asserted_side(text) if presence else "none"
    return Findings(
        presence=presence,
        side=SIDES.index(side) if side in SIDES else UNDEFINED_SIDE,
        anatomy=tuple(int(k in found["anatomy"]) for k in ANATOMY),
        pathology=tuple(int(k in found["pathology"]) for k in PATHOLOGY),
    )


def side_index(laterality: str) -> int:
    """The side target of a ground-truth laterality (left, right, bilateral, none; anything else, e.g. a
    midline lesion's "undefined": UNDEFINED_SIDE)."""
    return SIDES.index(laterality) if laterality in SIDES else UNDEFINED_SIDE


def mirror_side(side: int) -> int:
    """The side target of the mirrored volume (left <-> right; bilateral, none and undefined unchanged)."""
    swap = {SIDES.index("left"): SIDES.index("right"), SIDES.index("right"): SIDES.index("left")}
    return swap.get(side, side)
