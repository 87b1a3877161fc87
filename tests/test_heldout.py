"""The held-out cohorts' figures (brain3d.heldout): what a report asserts, against the truth and against
the findings head, and the bars of reports/heldout.md."""

import pandas as pd
import pytest

from brain3d import heldout

LEFT = "The lesion is located in the left frontal lobe with surrounding edema."
RIGHT = "A mass in the right temporal lobe with edema."
BOTH = "Bilateral parietal lesions with extensive edema."
NORMAL = "No abnormal signal intensity is seen in the brain parenchyma on FLAIR. Normal study."

COHORT = pd.DataFrame(
    {
        "subject": ["a", "b", "c", "d", "e"],
        "cohort": ["tumour", "tumour", "tumour", "healthy", "healthy"],
        "laterality": ["left", "right", "bilateral", "none", "none"],
        "report": [LEFT, RIGHT, BOTH, NORMAL, NORMAL],
    }
)


def test_score_reads_what_each_report_asserts():
    # a: right instead of left (found, wrong side); b: missed; c: right; d: a false alarm; e: normal
    reports = [RIGHT, NORMAL, BOTH, LEFT, NORMAL]
    wanted = ["left", "right", "bilateral", "none", "left"]  # the head misses nothing, false-alarms on e
    s = heldout.score(COHORT, reports, wanted)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["head_sensitivity"] == 1.0
    assert s["specificity"] == 0.5 and s["head_specificity"] == 0.5
    assert s["bilateral_lat_f1"] == 1.0
    assert s["lat_f1"] == pytest.approx(
        (0 + 0 + 1 + 0 + 1) / 5
    )  # b names no side, d a side that is not there
    assert (s["n_tumour"], s["n_healthy"], s["n_bilateral"]) == (3, 2, 1)


def test_small_lesions_and_necrotic_rings_have_their_own_sensitivity():
    reports = [RIGHT, NORMAL, BOTH, LEFT, NORMAL]  # b (small, a ring) is missed
    cohort = COHORT.assign(lesion_ml=[40.0, 9.0, 12.0, 0.0, 0.0], ring=[True, True, False, False, False])
    s = heldout.score(cohort, reports, ["left"] * 5)
    assert s["small_sensitivity"] == 0.5 and s["ring_sensitivity"] == 0.5  # healthy subjects count in neither
    assert (s["n_small"], s["n_ring"]) == (2, 2)
    s = heldout.score(COHORT, reports, ["left"] * 5)  # no such columns: no figure, not a zero
    assert s["n_small"] == 0 and s["small_sensitivity"] != s["small_sensitivity"]


def test_the_bars_judge_sensitivity_against_the_head():
    row = {"sensitivity": 0.94, "head_sensitivity": 0.95, "specificity": 0.95, "lat_f1": 0.9}
    assert all(heldout.meets({**row, "bilateral_lat_f1": 0.85}).values())
    missed = heldout.meets({**row, "sensitivity": 0.93, "bilateral_lat_f1": 0.849})
    assert not missed["sensitivity"] and not missed["bilateral_lat_f1"] and missed["lat_f1"]


def test_markdown_marks_what_misses_its_bar_on_the_test_cohort_only():
    good = {"sensitivity": 0.96, "head_sensitivity": 0.96, "specificity": 0.97, "lat_f1": 0.93}
    figures = {"bilateral_lat_f1": 0.80, "seconds_per_report": 0.2, "small_sensitivity": float("nan"), **good}
    runs = {"42": {c: {d: figures for d in heldout.DECODERS} for c in ("validation", "test")}}
    cohorts = {
        c: {"seed": s, "n_subjects": 10, "n_scored": 9, "n_tumour": 7, "n_healthy": 2, "n_bilateral": 1}
        for c, s in (("validation", 2026), ("test", 2027))
    }
    md = heldout.markdown({"runs": runs, "cohorts": cohorts, "default_decoder": "findings"})
    validation, test = md.split("## test")
    assert "✗" not in validation.split("## validation")[1]
    assert test.count(".800 ✗") == 3 and ".930 ✗" not in test  # bilateral, under .85, for each decoder
    assert "generator seed 2027, 9 of 10 subjects" in md
    assert "| — |" in test  # no small lesion in the cohort: a dash, not a number


def test_a_cohort_may_not_repeat_the_training_cohort():
    cfg = {"download": {"seed": 7}, "preprocess": {}}
    with pytest.raises(ValueError, match="download.seed"):
        heldout.build_cohort(heldout.Cohort("test", 7, 10), cfg, workers=1)
