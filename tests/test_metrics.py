"""Each metric of `brain3d.metrics.score` against an independent computation, edge cases, offline loading."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brain3d.metrics import DEFAULT_BERTSCORE_LAYERS, DEFAULT_BERTSCORE_MODEL, METRICS, score
from brain3d.metrics.scoring import MODULES_DIR, load_module
from brain3d.metrics.text import resolve_bertscore

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PREDICTIONS = [
    "A large mass in the left frontal lobe with surrounding edema and central necrosis.",
    "Heterogeneous lesion in the right temporal lobe; mild compression of the right lateral ventricle.",
    "No acute intracranial abnormality. The ventricles are normal in size.",
    "Bilateral periventricular hyperintensities without enhancement.",
    "Tumor in the LEFT parietal lobe with edema.",
]
REFERENCES = [
    "Large left frontal mass with surrounding vasogenic edema and central necrosis.",
    "A lesion is seen in the right temporal lobe with compression of the lateral ventricle.",
    "Normal study. No mass, edema or midline shift.",
    "Bilateral periventricular white matter hyperintensities, no enhancement.",
    "Left occipital tumor with edema and ring enhancement.",
]
TEXT_METRICS = ["bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "meteor", "cider", "bertscore"]


@pytest.fixture(scope="module")
def scored():
    return score(PREDICTIONS, REFERENCES)


def test_columns_follow_the_paper_order(scored):
    assert list(scored.columns) == list(METRICS)
    assert len(scored) == len(PREDICTIONS)
    subset = score(PREDICTIONS[:2], REFERENCES[:2], ["path_f1", "bleu1"])
    assert list(subset.columns) == ["bleu1", "path_f1"]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown metric"):
        score(["a"], ["a"], ["bleu7"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score(["a", "b"], ["a"], ["bleu1"])
    with pytest.raises(TypeError):
        score([None], ["a"], ["bleu1"])


def test_bleu_matches_nltk(scored):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    for i, (pred, ref) in enumerate(zip(PREDICTIONS, REFERENCES)):
        hyp, refs = pred.lower().split(), [ref.lower().split()]
        assert scored.loc[i, "bleu1"] == pytest.approx(sentence_bleu(refs, hyp, (1, 0, 0, 0), smooth))
        assert scored.loc[i, "bleu4"] == pytest.approx(sentence_bleu(refs, hyp, (0.25,) * 4, smooth))


def test_bleu_is_case_insensitive():
    df = score(["Left FRONTAL mass"], ["left frontal mass"], ["bleu1", "bleu4"])
    assert df.loc[0, "bleu1"] == pytest.approx(1.0)


def test_rouge_matches_rouge_score(scored):
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, (pred, ref) in enumerate(zip(PREDICTIONS, REFERENCES)):
        direct = scorer.score(ref, pred)
        for name in ("rouge1", "rouge2", "rougeL"):
            assert scored.loc[i, name] == pytest.approx(direct[name].fmeasure)


def test_meteor_matches_nltk_with_standard_wordnet_loader(scored):
    import nltk
    from nltk.translate.meteor_score import meteor_score

    # NLTK's own lazy loader must find the installed corpus on nltk.data.path (layout corpora/wordnet).
    from brain3d.metrics.wordnet import ensure_wordnet

    ensure_wordnet()
    for i, (pred, ref) in enumerate(zip(PREDICTIONS, REFERENCES)):
        direct = meteor_score([ref.lower().split()], pred.lower().split(), wordnet=nltk.corpus.wordnet)
        assert scored.loc[i, "meteor"] == pytest.approx(direct)


def test_meteor_hand_computed_and_uses_wordnet_synonyms():
    # Identical 3-token texts: one chunk, P = R = 1, penalty 0.5 * (1/3)**3.
    df = score(
        ["the cat sat", "large neoplasm", "large banana"],
        ["the cat sat", "large tumor", "large tumor"],
        ["meteor"],
    )
    assert df.loc[0, "meteor"] == pytest.approx(1 - 0.5 / 27)
    # "neoplasm" matches "tumor" only through a WordNet synset (a corrupt corpus silently loses this).
    assert df.loc[1, "meteor"] == pytest.approx(1 - 0.5 / 8)
    assert df.loc[2, "meteor"] < 0.6


def test_wordnet_falls_back_to_a_writable_root_and_fixes_line_endings(tmp_path, monkeypatch):
    import nltk

    from brain3d.metrics import wordnet

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where a data root should be")
    monkeypatch.setattr(wordnet, "candidate_roots", lambda: [blocked, tmp_path / "cache"])
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    corpus = wordnet.ensure_wordnet()
    assert corpus == tmp_path / "cache" / "corpora" / "wordnet"
    assert str(tmp_path / "cache") in nltk.data.path
    data = (corpus / "data.noun").read_bytes()
    assert b"\r\n" not in data and len(data) == 15300280  # the byte size NLTK's offsets assume
    assert wordnet.ensure_wordnet() == corpus  # a complete copy is reused


def test_cider_matches_pycocoevalcap_per_sample(scored):
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(r.lower().split())] for i, r in enumerate(REFERENCES)}
    res = {i: [" ".join(p.lower().split())] for i, p in enumerate(PREDICTIONS)}
    _, direct = Cider().compute_score(gts, res)
    assert scored["cider"].tolist() == pytest.approx(list(direct))


def test_cider_document_frequencies_come_from_the_call():
    alone = score(PREDICTIONS[:1], REFERENCES[:1], ["cider"]).loc[0, "cider"]
    with_corpus = score(PREDICTIONS, REFERENCES, ["cider"]).loc[0, "cider"]
    assert alone == 0.0  # one document: every n-gram has idf log(1/1) = 0
    assert with_corpus > 1.0


def test_bertscore_matches_bert_score(scored):
    import bert_score

    _, _, f1 = bert_score.score(
        PREDICTIONS, REFERENCES, model_type=DEFAULT_BERTSCORE_MODEL, num_layers=DEFAULT_BERTSCORE_LAYERS
    )
    assert scored["bertscore"].tolist() == pytest.approx(f1.tolist(), abs=1e-5)


def test_bertscore_default_layer_separates_related_from_unrelated(scored):
    unrelated = score(["The weather is sunny and the cat sleeps on the sofa."], REFERENCES[:1], ["bertscore"])
    assert scored.loc[0, "bertscore"] > 0.85 > 0.3 > unrelated.loc[0, "bertscore"]


def test_bertscore_layer_resolution(tmp_path):
    assert resolve_bertscore() == (DEFAULT_BERTSCORE_MODEL, 6)
    assert resolve_bertscore(str(tmp_path / "roberta-base")) == (str(tmp_path / "roberta-base"), 10)
    assert resolve_bertscore(str(tmp_path / "roberta-base"), 8)[1] == 8
    with pytest.raises(ValueError, match="num_layers"):
        resolve_bertscore(str(tmp_path / "my-encoder"))


def test_empty_texts_follow_the_rule():
    df = score(["", "   ", "a mass", ""], ["a mass", "", "\n", ""])
    assert df.loc[0, TEXT_METRICS].tolist() == [0.0] * 8  # empty prediction
    assert df.loc[1, TEXT_METRICS].tolist() == [1.0] * 8  # both empty (after strip)
    assert df.loc[2, TEXT_METRICS].tolist() == [0.0] * 8  # empty reference
    assert df.loc[3, TEXT_METRICS].tolist() == [1.0] * 8
    # Clinical F1 keeps its own rule: no keyword on either side is agreement.
    assert df.loc[1, ["lat_f1", "anat_f1", "path_f1"]].tolist() == [1.0, 1.0, 1.0]
    assert df.loc[0, "path_f1"] == 0.0


def test_identical_strings_score_at_the_top():
    text = "Large mass in the left frontal lobe with surrounding edema and central necrosis."
    df = score([text, PREDICTIONS[1]], [text, REFERENCES[1]])
    row = df.loc[0]
    assert row[
        ["bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "lat_f1", "anat_f1", "path_f1"]
    ].tolist() == pytest.approx([1.0] * 8)
    assert row["meteor"] > 0.99
    assert row["bertscore"] == pytest.approx(1.0, abs=1e-4)
    assert row["cider"] > df.loc[1, "cider"]


def test_unicode_text():
    pred = "Ödem im linken Frontallappen — 左额叶肿块, lésion gauche ✓"
    df = score([pred, pred], [pred, "Right occipital lesion"])
    assert df.notna().all().all()
    assert df.loc[0, ["bleu1", "bleu4"]].tolist() == pytest.approx([1.0, 1.0])
    assert df.loc[0, "bertscore"] == pytest.approx(1.0, abs=1e-4)
    assert df.loc[1, "bleu1"] < 0.2


def test_very_long_text():
    words = "the mass in the left frontal lobe shows edema necrosis and enhancement".split()
    long_pred = " ".join(words[i % len(words)] for i in range(1500))
    long_ref = " ".join(words[(i * 7) % len(words)] for i in range(1400))
    df = score([long_pred], [long_ref])
    assert df.notna().all().all()
    assert ((df.drop(columns="cider") >= 0) & (df.drop(columns="cider") <= 1)).all().all()
    assert math.isfinite(df.loc[0, "cider"])


def test_modules_are_evaluate_metrics():
    import evaluate

    names = sorted(p.name for p in MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())
    assert names == ["bertscore", "bleu", "cider", "clinical_f1", "meteor", "rouge"]
    module = load_module("clinical_f1")
    assert isinstance(module, evaluate.Metric)
    assert module.compute(predictions=["left mass"], references=["right mass"]) == {
        "lat_f1": [0.0],
        "anat_f1": [1.0],
        "path_f1": [1.0],
    }


def test_modules_load_offline_without_network():
    """Every module loads by absolute path and computes with the hub disabled and sockets refused."""
    code = f"""
import socket
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
import evaluate
mods = [evaluate.load({str(MODULES_DIR)!r} + "/" + n, keep_in_memory=True)
        for n in ("bleu", "rouge", "meteor", "cider", "bertscore", "clinical_f1")]
out = evaluate.combine(mods).compute(predictions=["left frontal mass"], references=["left frontal mass"])
assert sorted(out) == sorted({list(METRICS)!r}), out
print("ok")
"""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("ok")
