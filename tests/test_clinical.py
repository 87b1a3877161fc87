"""Clinical keyword extraction (paper rules), negation handling, keyword F1 and pathology assertion."""

import pytest

from brain3d.metrics.clinical import asserts_pathology, clinical_f1, extract, extract_negation_aware, set_f1


def test_extract_finds_the_paper_keywords_case_insensitively():
    found = extract("LEFT frontal Mass with periventricular Edema; the Ventricle is compressed. Bilateral.")
    assert found == {
        "laterality": {"left", "bilateral"},
        "anatomy": {"frontal", "periventricular", "ventricle"},
        "pathology": {"mass", "edema"},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("multiple lesions", set()),  # whole word: the plural is another word
        ("a tumour", set()),  # the keyword set is American English, as published
        ("massive edema", {"edema"}),  # "mass" is not inside "massive"
        ("lesion.", {"lesion"}),  # punctuation separates words
        ("tumor/mass", {"tumor", "mass"}),
        ("edema_necrosis", {"edema", "necrosis"}),  # underscores separate words too
    ],
)
def test_pathology_matching_is_whole_word(text, expected):
    assert extract(text)["pathology"] == expected


def test_hyphenated_and_compound_words():
    assert extract("left-sided lesion")["laterality"] == {"left"}
    assert extract("ventricles and intraventricular extension")["anatomy"] == set()
    assert extract("periventricular")["anatomy"] == {"periventricular"}


def test_plain_extraction_counts_negated_mentions():
    assert extract("No mass, edema or midline shift.")["pathology"] == {"mass", "edema"}


@pytest.mark.parametrize(
    "text",
    [
        "No mass, edema or midline shift.",
        "There is no evidence of edema or necrosis.",
        "Study without necrosis or enhancement.",
        "Negative for mass.",
        "Brain parenchyma free of lesion.",
        "Absence of edema.",
        "Edema is not seen.",
        "Necrosis: absent.",
        "Edema: none.",
        "Neither mass nor edema.",
        "A tumor was ruled out.",
    ],
)
def test_negated_findings_are_not_findings(text):
    assert extract_negation_aware(text)["pathology"] == set()
    assert not asserts_pathology(text)


def test_negation_scope_is_the_clause():
    found = extract_negation_aware("Large left frontal mass without necrosis. No midline shift.")
    assert found == {"laterality": {"left"}, "anatomy": {"frontal"}, "pathology": {"mass"}}
    found = extract_negation_aware("No edema but a mass in the right temporal lobe")
    assert found["pathology"] == {"mass"} and found["laterality"] == {"right"}
    assert extract_negation_aware("No edema. Lesion in the left parietal lobe.")["pathology"] == {"lesion"}


@pytest.mark.parametrize(
    "text",
    [
        "A tumor cannot be excluded.",
        "No change in the size of the mass.",
        "Not only edema but also necrosis.",
    ],
)
def test_pseudo_negations_keep_the_finding(text):
    assert asserts_pathology(text)


def test_set_f1():
    assert set_f1(set(), set()) == 1.0
    assert set_f1({"left"}, set()) == 0.0
    assert set_f1(set(), {"left"}) == 0.0
    assert set_f1({"left", "right"}, {"right", "bilateral"}) == pytest.approx(2 / 4)
    assert set_f1({"mass", "edema", "lesion"}, {"mass", "edema"}) == pytest.approx(4 / 5)


def test_clinical_f1_per_sample_and_negation_aware_variant():
    preds = ["Left frontal mass with edema.", "No edema.", "Normal brain."]
    refs = ["Right frontal mass with edema and necrosis.", "Edema around the lesion.", "Unremarkable study."]
    plain = clinical_f1(preds, refs)
    assert plain["lat_f1"] == [0.0, 1.0, 1.0]  # both-empty laterality sets count as agreement
    assert plain["anat_f1"] == [1.0, 1.0, 1.0]
    assert plain["path_f1"] == pytest.approx([4 / 5, 2 / 3, 1.0])
    negated = clinical_f1(preds, refs, negation_aware=True)
    assert negated["path_f1"] == pytest.approx([4 / 5, 0.0, 1.0])
    with pytest.raises(ValueError):
        clinical_f1(["a"], [])
