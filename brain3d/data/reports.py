"""Report text: the healthy-study templates, laterality read from a report, and left/right swapping.

Tumour reports for the phantom cohort are written from ground truth by `tumour_report`.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Normal-study templates. The choice is a stable hash of the subject id, so a subject always gets the
# same text (the reference implementation used Python's salted hash(), which changes every run).
HEALTHY_TEMPLATES: tuple[str, ...] = (
    "No abnormal signal intensity is seen in the brain parenchyma on FLAIR. The ventricular system is "
    "normal in size and configuration. No mass, edema or midline shift. Normal study.",
    "Brain parenchyma shows normal FLAIR signal. No focal lesion, mass effect or edema is identified. "
    "Ventricles and sulci are normal for age. No acute intracranial abnormality.",
    "FLAIR images show normal grey-white matter differentiation without abnormal hyperintensity. "
    "No space-occupying lesion. The ventricles are symmetric and not compressed. Unremarkable study.",
    "There is no abnormal FLAIR hyperintensity. No tumor, edema or necrosis. The midline structures are "
    "central and the ventricular system is normal. Normal brain MRI.",
    "Normal appearance of the brain on FLAIR. No evidence of mass, lesion or perilesional edema. "
    "Ventricles, cisterns and sulci are within normal limits.",
    "The cerebral hemispheres and posterior fossa structures demonstrate normal signal on FLAIR. No mass "
    "lesion or abnormal hyperintensity. No ventricular compression. No abnormality detected.",
    "No intra-axial or extra-axial lesion is seen. FLAIR signal of white and grey matter is normal, "
    "without edema or mass effect. Normal-sized ventricles. Normal study of the brain.",
)

_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_BILATERAL = re.compile(
    r"\b(bilateral|bilaterally|both hemispheres|both cerebral hemispheres)\b", re.IGNORECASE
)


def stable_index(key: str, n: int) -> int:
    """An index in [0, n) that depends only on `key` (sha256, not Python's per-process salted hash)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % n


def healthy_report(subject_id: str) -> str:
    """The normal-study report of a healthy subject: deterministic across runs and machines."""
    return HEALTHY_TEMPLATES[stable_index(subject_id, len(HEALTHY_TEMPLATES))]


def laterality_from_report(text: str) -> str:
    """left / right / bilateral / undefined, as stated by a tumour report."""
    if _BILATERAL.search(text):
        return "bilateral"
    sides = {m.group(1).lower() for m in _SIDE_WORDS.finditer(text)}
    if sides == {"left", "right"}:
        return "bilateral"
    if sides:
        return sides.pop()
    return "undefined"


def swap_laterality(text: str) -> str:
    """Swap every whole-word left/right (keeping case): the text half of the laterality-flip augmentation."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _SIDE_WORDS.sub(swap, text)


# ------------------------------------------------------------------------------------------ tumour reports
# Written from a phantom's truth.json in TextBraTS style. Every finding that is present is stated with its
# exact evaluation keyword in every variant (edema, necrosis, enhancement, compression + ventricle,
# periventricular, lobe names, cerebellum); an absent finding is either left out or negated ("no necrosis").
# Reports of midline (undefined-side) lesions never name a side.

_CEREBRAL_LOBES = ("frontal", "parietal", "temporal", "occipital")
_OTHER_REGIONS = {
    "insula": "insula",
    "cingulate": "cingulate gyrus",
    "deep": "basal ganglia",
    "cerebellum": "cerebellum",
}
_SIGNALS = (
    "mixed high signal on FLAIR",
    "heterogeneous hyperintense signal on FLAIR",
    "predominantly high FLAIR signal",
    "mixed hyperintensity on the FLAIR sequence",
    "patchy high signal on FLAIR",
)
_NOUNS = (
    "a lesion",
    "an irregular lesion",
    "a mass lesion",
    "a space-occupying lesion",
    "an infiltrative tumor lesion",
    "a tumor lesion",
)
_VERBS = ("is seen", "is identified", "is located", "is present")
_ONE_SIDE = (
    "{Noun} {verb} in the {where}, showing {signal}.",
    "There is {noun} in the {where} with {signal}.",
    "The {where} contains {noun} with {signal}.",
    "In the {where}, {noun} with {signal} {verb}.",
)
_TWO_LESIONS = (
    "Lesions are seen in both hemispheres, in the {a} and in the {b}, showing {signal}.",
    "There are two lesions, one in the {a} and one in the {b}, both with {signal}.",
    "Bilateral lesions are present in the {a} and the {b}, with {signal}.",
    "Multiple lesions involve the {a} and the {b}, showing {signal}.",
)
_CROSSING = (
    "{Noun} crossing the midline through the corpus callosum involves the {a} and the {b}, showing {signal}.",
    "{Noun} {verb} in the corpus callosum, extending bilaterally into the {a} and the {b}, with {signal}.",
    "There is a bilateral lesion spanning the corpus callosum into the {a} and the {b}, with {signal}.",
)
_MIDLINE = (
    "{Noun} {verb} in the midline at {site}{adjacent}, showing {signal}.",
    "There is a midline lesion in {site}{adjacent} with {signal}.",
    "{Noun} centered on {site} in the midline shows {signal}{adjacent}.",
)
_MIDLINE_SITES = {"corpus callosum": "the corpus callosum", "vermis": "the vermis of the cerebellum"}
_PERIVENTRICULAR = (
    "Periventricular white matter is involved.",
    "There is periventricular extension of the abnormal signal.",
    "Abnormal signal reaches the periventricular white matter.",
    "Involvement of the periventricular region is noted.",
)
_EDEMA = (
    "{Grade} peritumoral edema surrounds {the}.",
    "There is {grade} surrounding edema.",
    "{Grade} edema is seen around {the}, extending into the adjacent white matter.",
    "{The} {is} surrounded by {grade} edema.",
)
_NECROSIS = (
    "Necrosis is seen in the center of {the}.",
    "Central necrosis is present.",
    "Areas of necrosis are noted within {the}.",
    "{The} {shows} central low signal consistent with necrosis.",
    "Internal necrosis is noted.",
)
_RING_ENHANCEMENT = (
    "{The} {shows} irregular ring enhancement.",
    "Ring-like enhancement is seen along the margin of {the}.",
    "There is heterogeneous rim enhancement.",
)
_SOLID_ENHANCEMENT = (
    "{The} {shows} heterogeneous enhancement.",
    "Solid enhancement of {the} is noted.",
    "There is patchy enhancement within {the}.",
)
_COMPRESSION = (
    "{V} shows compression.",
    "There is compression of {v}.",
    "Mass effect causes compression of {v}.",
    "Compression of {v} is noted.",
)
_SHIFT = (
    "The midline is shifted by about {mm} mm.",
    "There is midline shift of approximately {mm} mm.",
    "Midline structures are displaced by about {mm} mm.",
)
# Absent findings: negated, or (the empty strings) not mentioned at all.
_NO_EDEMA = ("No significant peritumoral edema is seen.", "There is no obvious surrounding edema.", "", "")
_NO_NECROSIS = ("No obvious necrosis is seen.", "There is no evidence of necrosis.", "", "")
_NO_ENHANCEMENT = ("No significant enhancement is seen.", "There is no obvious enhancement.", "", "")


def tumour_report(truth: dict, rng: np.random.Generator) -> str:
    """A FLAIR report for a tumour phantom, phrased at random (seeded `rng`) from its truth.json fields.

    Uses truth["side"], ["lobes"] (per hemisphere), ["findings"], and when present ["lesions"] (count and
    midline site), ["volumes_ml"] (edema extent) and ["max_diameter_mm"].
    """
    side = truth["side"]
    lobes = truth.get("lobes", {})
    findings = truth.get("findings", {})
    lesions = truth.get("lesions", [])
    plural = side == "bilateral" and len(lesions) > 1
    words = {
        "the": "the lesions" if plural else "the lesion",
        "is": "are" if plural else "is",
        "shows": "show" if plural else "shows",
    }
    words["The"] = words["the"].capitalize()

    middle = [_edema(findings.get("edema", False), truth.get("volumes_ml", {}), words, rng)]
    necrosis = findings.get("necrosis", False)
    middle.append(_pick(rng, _NECROSIS).format(**words) if necrosis else _pick(rng, _NO_NECROSIS))
    if findings.get("enhancement"):
        middle.append(_pick(rng, _RING_ENHANCEMENT if necrosis else _SOLID_ENHANCEMENT).format(**words))
    else:
        middle.append(_pick(rng, _NO_ENHANCEMENT))
    if findings.get("periventricular"):
        middle.append(_pick(rng, _PERIVENTRICULAR))
    diameter = truth.get("max_diameter_mm") or 0.0
    if not plural and diameter > 0 and rng.random() < 0.4:
        middle.append(f"{words['The']} measures about {diameter / 10:.1f} cm in maximum diameter.")
    compression = findings.get("ventricle_compression") or {}
    tail = [_compression(compression.get("side"), side, rng)] if compression.get("present") else []
    shift = findings.get("midline_shift_mm") or 0.0
    if shift >= 3.0:
        tail.append(_pick(rng, _SHIFT).format(mm=round(shift)))
    sentences = [_location(side, lobes, lesions, rng)]
    sentences += [middle[i] for i in rng.permutation(len(middle))]
    sentences += [tail[i] for i in rng.permutation(len(tail))]
    return " ".join(s for s in sentences if s)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _regions(names: list[str], rng: np.random.Generator) -> str:
    """'frontal and parietal lobes', 'temporal lobe and insula', 'cerebellum': lobe keywords kept whole."""
    cerebral = [n for n in names if n in _CEREBRAL_LOBES]
    parts = []
    if cerebral:
        noun = _pick(rng, ("lobe", "lobe", "region"))
        parts.append(f"{_join(cerebral)} {noun}{'s' if len(cerebral) > 1 else ''}")
    parts += [_OTHER_REGIONS[n] for n in names if n in _OTHER_REGIONS]
    return _join(parts) if parts else "cerebral hemisphere"


def _location(side: str, lobes: dict, lesions: list[dict], rng: np.random.Generator) -> str:
    """The opening sentence: where the lesion is (side + lobes, both sides, or a named midline site)."""
    noun, verb, signal = _pick(rng, _NOUNS), _pick(rng, _VERBS), _pick(rng, _SIGNALS)
    fields = {"Noun": noun.capitalize(), "noun": noun, "verb": verb, "signal": signal}
    if side in ("left", "right"):
        return _pick(rng, _ONE_SIDE).format(where=f"{side} {_regions(lobes.get(side, []), rng)}", **fields)
    if side == "bilateral":
        first, second = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        a = f"{first} {_regions(lobes.get(first, []), rng)}"
        b = f"{second} {_regions(lobes.get(second, []), rng)}"
        return _pick(rng, _TWO_LESIONS if len(lesions) > 1 else _CROSSING).format(a=a, b=b, **fields)
    site = next((les.get("site") for les in lesions if les.get("site")), None)
    named = _MIDLINE_SITES.get(site)
    involved = dict.fromkeys(lobes.get("left", []) + lobes.get("right", []) + lobes.get("midline", []))
    names = [n for n in involved if not (site == "vermis" and n == "cerebellum")]
    if named is None and "cerebellum" in names:
        named, names = "the cerebellum", [n for n in names if n != "cerebellum"]
    adjacent = f", involving the adjacent {_regions(names, rng)}" if names else ""
    site_text = named or "the interhemispheric region"
    return _pick(rng, _MIDLINE).format(site=site_text, adjacent=adjacent, **fields)


def _edema(present: bool, volumes: dict, words: dict, rng: np.random.Generator) -> str:
    if not present:
        return _pick(rng, _NO_EDEMA)
    ratio = volumes.get("edema", 0.0) / max(volumes.get("core", 0.0), 0.1)
    grades = ("mild", "slight") if ratio < 1 else ("moderate",) if ratio < 3 else ("extensive", "marked")
    grade = _pick(rng, grades)
    return _pick(rng, _EDEMA).format(Grade=grade.capitalize(), grade=grade, **words)


def _compression(where: str | None, side: str, rng: np.random.Generator) -> str:
    if side == "undefined" or where not in ("left", "right", "both"):
        ventricle = _pick(rng, ("the adjacent lateral ventricle", "the adjacent ventricle"))
    elif where == "both":
        ventricle = "each lateral ventricle"
    else:
        ventricle = f"the {where} lateral ventricle"
    return _pick(rng, _COMPRESSION).format(V=ventricle[0].upper() + ventricle[1:], v=ventricle)
