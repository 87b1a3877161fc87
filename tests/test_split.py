"""The subject-level split (brain3d.data.split.stratified_split): each cohort x laterality stratum divided in
the params' proportions, every subject in exactly one split, the same split for the same seed."""

from __future__ import annotations

import pandas as pd
import pytest

from brain3d.data.split import SPLITS, stratified_split

FRACTIONS = (0.6, 0.2, 0.2)  # (train, val, test): a test value (the pipeline's is split.fractions)
STRATA = {
    ("tumour", "left"): 40,
    ("tumour", "right"): 31,
    ("tumour", "bilateral"): 12,
    ("healthy", "none"): 25,
    ("tumour", "undefined"): 2,
}


def _subjects(order_seed: int | None = None) -> pd.DataFrame:
    rows = [
        {"subject": f"{cohort[0]}{side[0]}-{i:03d}", "cohort": cohort, "laterality": side}
        for (cohort, side), n in STRATA.items()
        for i in range(n)
    ]
    df = pd.DataFrame(rows)
    return df if order_seed is None else df.sample(frac=1.0, random_state=order_seed).reset_index(drop=True)


def test_every_stratum_is_split_in_the_given_proportions_and_every_subject_once():
    subjects = _subjects()
    out = stratified_split(subjects, fractions=FRACTIONS, seed=0)
    assert sorted(out["subject"]) == sorted(subjects["subject"]) and not out["subject"].duplicated().any()
    assert set(out["split"]) == set(SPLITS)
    truth = subjects.set_index("subject")
    assert (out.set_index("subject")[["cohort", "laterality"]] == truth.loc[out["subject"]]).all().all()
    for (cohort, side), n in STRATA.items():
        counts = out[(out.cohort == cohort) & (out.laterality == side)]["split"].value_counts()
        got = [int(counts.get(s, 0)) for s in SPLITS]
        assert sum(got) == n
        if n >= 10:  # each split within one subject of its share of the stratum
            assert all(abs(g - f * n) <= 1 for g, f in zip(got, FRACTIONS)), (cohort, side, got)
        else:  # a stratum of two keeps both for training (no unrepresentative test case)
            assert got == [n, 0, 0], (cohort, side, got)


def test_the_split_depends_on_the_seed_only():
    first = stratified_split(_subjects(), fractions=FRACTIONS, seed=5)
    assert first.equals(stratified_split(_subjects(), fractions=FRACTIONS, seed=5)), "same seed, other split"
    assert first.equals(stratified_split(_subjects(order_seed=1), fractions=FRACTIONS, seed=5)), "row order"
    test_sets = {
        frozenset(
            stratified_split(_subjects(), fractions=FRACTIONS, seed=s).query("split == 'test'")["subject"]
        )
        for s in range(5)
    }
    assert len(test_sets) == 5, "another seed must give other test subjects"


def test_bad_fractions_and_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(_subjects(), fractions=(0.6, 0.2, 0.3), seed=0)
    twice = pd.concat([_subjects().iloc[:3], _subjects().iloc[:1]])
    with pytest.raises(ValueError, match="duplicate subject ids"):
        stratified_split(twice, fractions=FRACTIONS, seed=0)


def test_a_split_left_empty_by_small_strata_is_refused_with_the_strata():
    from brain3d.config import ParamsError

    df = pd.DataFrame(
        {
            "subject": [f"s{i}" for i in range(6)],
            "cohort": ["tumour"] * 4 + ["healthy"] * 2,
            "laterality": ["left", "left", "right", "right", "none", "none"],
        }
    )
    with pytest.raises(ParamsError, match=r"no val or test subjects.*tumour/left 2"):
        stratified_split(df, fractions=(0.5, 0.25, 0.25), seed=0)  # round(0.5) = 0 in every stratum
    assert set(stratified_split(df, fractions=(0.0, 0.5, 0.5), seed=0)["split"]) == {"val", "test"}
