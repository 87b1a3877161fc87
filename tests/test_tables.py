"""End-to-end `evaluate_systems` on fake systems: files, not-run rows, subject coverage, reference checks."""

import json
import os

import pandas as pd
import pytest
import torch

from brain3d import fileio
from brain3d.metrics.evaluation import System, best_baseline, evaluate_systems

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TUMOUR = "Large mass in the {side} frontal lobe with surrounding edema and central necrosis."
HEALTHY = "No acute intracranial abnormality. No mass, edema or midline shift."
FAST = {
    "bertscore_model": None,
    "bertscore_layers": None,
    "n_resamples": 10,
    "seed": 42,
}  # for the error tests


def make_subjects(n: int = 9) -> pd.DataFrame:
    rows = []
    for i in range(n):
        healthy = i % 3 == 0
        side = "left" if i % 2 else "right"
        rows.append(
            {
                "subject": f"sub-{i:02d}",
                "cohort": "healthy" if healthy else "tumour",
                "laterality": "none" if healthy else side,
                "reference": HEALTHY if healthy else TUMOUR.format(side=side),
            }
        )
    return pd.DataFrame(rows)


def write_system(pred_dir, name, subjects, predict, *, status="ok", reason="", baseline=False):
    fileio.write_json(
        pred_dir / f"{name}.json",
        {
            "system": name,
            "status": status,
            "reason": reason,
            "description": f"fake {name}",
            "baseline": baseline,
        },
    )
    if status == "ok":
        fileio.write_jsonl(
            pred_dir / f"{name}.jsonl",
            [
                {"subject": r.subject, "split": "test", "reference": r.reference, "prediction": predict(r)}
                for r in subjects.itertuples()
            ],
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pred_dir, out_dir = root / "predictions", root / "reports"
    subjects = make_subjects()
    write_system(pred_dir, "phase2b", subjects, lambda r: r.reference)  # perfect copy of the reference
    write_system(
        pred_dir, "medgemma_slices", subjects, lambda r: "Lesion in the right parietal lobe.", baseline=True
    )
    write_system(
        pred_dir, "med3dvlm", subjects, None, status="not_run", reason="needs a CUDA GPU", baseline=True
    )
    write_system(
        pred_dir, "phase2b_shuffled", subjects, lambda r: "Lesion in the left frontal lobe."
    )  # a control
    summary = evaluate_systems(
        pred_dir,
        subjects[["subject", "cohort", "laterality"]],
        out_dir,
        bertscore_model=None,
        bertscore_layers=None,
        n_resamples=200,
        seed=42,
    )
    return summary, out_dir


def test_all_outputs_are_written(run):
    _, out = run
    for rel in (
        "tables/main.md",
        "tables/main.csv",
        "tables/main.tex",
        "tables/clinical_negation.md",
        "tables/clinical_negation.csv",
        "tables/paired_differences.md",
        "tables/paired_differences.csv",
        "per_sample/phase2b.csv",
        "per_sample/medgemma_slices.csv",
        "metrics.json",
        "figures/forest.png",
        "plots/ci.csv",
    ):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert not (out / "per_sample/med3dvlm.csv").exists()
    assert (out / "figures/forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_not_run_row_has_no_numbers(run):
    _, out = run
    main = pd.read_csv(out / "tables/main.csv").set_index("system")
    row = main.loc["med3dvlm"]
    assert row["status"] == "not_run" and row["note"] == "not run: needs a CUDA GPU"
    numeric = [c for c in main.columns if c not in ("status", "baseline", "note", "description")]
    assert row[numeric].isna().all()
    assert main.loc["phase2b", numeric].notna().all()
    md_row = next(line for line in (out / "tables/main.md").read_text().splitlines() if "med3dvlm |" in line)
    cells = [c.strip() for c in md_row.split("|")[1:-1]]
    assert cells[1] == "not run: needs a CUDA GPU" and cells[2:] == [""] * 12
    assert r"\multicolumn{13}{l}{not run: needs a CUDA GPU}" in (out / "tables/main.tex").read_text()
    assert "med3dvlm" not in json.loads((out / "metrics.json").read_text())


def test_main_table_states_n_bootstrap_and_bertscore_model_and_marks_the_best(run):
    _, out = run
    md = (out / "tables/main.md").read_text()
    assert "n = 9 test subjects (tumour 6, healthy 3)" in md
    assert "1000" not in md and "200 resamples, seed 42" in md
    assert "all-MiniLM-L6-v2" in md and "layer 6" in md
    phase2b = next(line for line in md.splitlines() if line.startswith("| phase2b"))
    assert phase2b.count("**1.000 [1.000, 1.000]**") >= 5  # a perfect copy wins BLEU, ROUGE, clinical F1
    tex = (out / "tables/main.tex").read_text()
    assert r"\textbf{1.000 [1.000, 1.000]}" in tex and "medgemma\\_slices" in tex


def test_metrics_json_and_cohort_metrics(run):
    summary, out = run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"phase2b", "medgemma_slices", "phase2b_shuffled"}
    p = metrics["phase2b"]
    assert p["bleu1"] == pytest.approx(1.0) and p["bleu1_low"] <= p["bleu1"] <= p["bleu1_high"]
    # The reference copies assert no pathology for healthy subjects and assert it for tumours.
    assert p["healthy_specificity"] == 1.0 and p["tumour_sensitivity"] == 1.0
    base = metrics["medgemma_slices"]
    assert base["healthy_specificity"] == 0.0 and base["tumour_sensitivity"] == 1.0
    assert summary["best_baseline"] == "medgemma_slices"
    assert summary["reference"]["bleu1"] == pytest.approx(1.0)
    assert summary["systems"] == {
        "med3dvlm": "not_run",
        "medgemma_slices": "ok",
        "phase2b": "ok",
        "phase2b_shuffled": "ok",
    }


def test_per_sample_and_paired_differences(run):
    _, out = run
    per = pd.read_csv(out / "per_sample/phase2b.csv")
    assert len(per) == 9 and per["subject"].is_monotonic_increasing
    assert per.loc[per["cohort"] == "tumour", "healthy_specificity"].isna().all()
    diffs = pd.read_csv(out / "tables/paired_differences.csv")
    # phase 2B minus every other system that ran (baselines and controls alike), not the not-run one
    assert set(diffs["system"]) == {"phase2b"} and set(diffs["versus"]) == {
        "medgemma_slices",
        "phase2b_shuffled",
    }
    for versus, d in diffs.groupby("versus"):
        bleu = d.set_index("metric").loc["bleu1"]
        assert 0 < bleu["low"] <= bleu["mean"] <= bleu["high"], versus  # the perfect copy is better than both
    md = (out / "tables/paired_differences.md").read_text()
    assert "| phase2b − medgemma_slices (best baseline) |" in md and "| phase2b − phase2b_shuffled |" in md
    ci = pd.read_csv(out / "plots/ci.csv")
    assert {"system", "metric", "mean", "low", "high"} <= set(ci.columns) and len(ci) == 3 * 13
    assert ci["mean"].notna().all()


def test_system_must_cover_exactly_the_test_subjects(tmp_path):
    subjects = make_subjects(4)
    write_system(tmp_path, "partial", subjects.iloc[:3], lambda r: r.reference)
    with pytest.raises(ValueError, match=r"partial does not cover.*missing \[sub-03\]"):
        evaluate_systems(tmp_path, subjects, tmp_path / "out", metrics=["bleu1"], **FAST)


def test_systems_must_share_reference_texts(tmp_path):
    subjects = make_subjects(3)
    write_system(tmp_path, "a", subjects, lambda r: r.reference)
    write_system(tmp_path, "b", subjects.assign(reference="another reference"), lambda r: r.reference)
    with pytest.raises(ValueError, match="different reference texts"):
        evaluate_systems(tmp_path, subjects, tmp_path / "out", metrics=["bleu1"], **FAST)


def test_ok_system_without_predictions_is_an_error(tmp_path):
    fileio.write_json(tmp_path / "empty.json", {"system": "empty", "status": "ok"})
    with pytest.raises(ValueError, match="marked ok but"):
        evaluate_systems(tmp_path, make_subjects(3), tmp_path / "out", metrics=["bleu1"], **FAST)


def test_best_baseline_is_the_highest_mean_over_metrics_except_cider():
    def ci(bleu, cider):
        return pd.DataFrame(
            {"mean": [bleu, cider], "low": [0.0, 0.0], "high": [1.0, 9.0]},
            index=pd.Index(["bleu1", "cider"], name="metric"),
        )

    ran = [System("a", "ok", baseline=True), System("b", "ok", baseline=True), System("ours", "ok")]
    cis = {"a": ci(0.2, 9.0), "b": ci(0.3, 0.1), "ours": ci(0.9, 9.9)}
    best, sentence = best_baseline(ran, cis, ["bleu1", "cider"])
    assert best == "b" and "B-1" in sentence and "CIDEr" not in sentence
    assert best_baseline(ran[2:], cis, ["bleu1"])[0] is None
