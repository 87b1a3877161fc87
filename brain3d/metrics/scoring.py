"""`score`: every paper metric per sample, computed through the package's own offline `evaluate` modules.

`evaluate.load("bleu")` and friends fetch scripts from the hub, which this project never contacts; each
metric is therefore a local module under `modules/<name>/<name>.py`, loaded by absolute path and
combined with `evaluate.combine`. The modules return per-sample lists, not corpus means, because the
confidence intervals are bootstrapped from per-sample scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from brain3d.runtime import set_offline_env

if TYPE_CHECKING:
    import evaluate

MODULES_DIR = Path(__file__).resolve().parent / "modules"
#: Per-sample column -> the evaluate module that computes it (in the paper's column order).
METRIC_MODULES: dict[str, str] = {
    "bleu1": "bleu",
    "bleu4": "bleu",
    "rouge1": "rouge",
    "rouge2": "rouge",
    "rougeL": "rouge",
    "meteor": "meteor",
    "cider": "cider",
    "bertscore": "bertscore",
    "lat_f1": "clinical_f1",
    "anat_f1": "clinical_f1",
    "path_f1": "clinical_f1",
}
METRICS: tuple[str, ...] = tuple(METRIC_MODULES)


def module_info(description: str, citation: str) -> evaluate.MetricInfo:
    """Shared `MetricInfo` of the modules: string predictions and references, per-sample outputs."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description.strip(),
        citation=citation,
        inputs_description="predictions: list of generated reports; references: list of reference reports "
        "(same length). Returns one score per pair for each output column.",
        features=datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
        ),
        homepage="https://arxiv.org/abs/2602.22098",
    )


def module_path(name: str) -> Path:
    """Absolute directory of a metric module (what `evaluate.load` takes)."""
    path = MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"no evaluate module {name!r} in {MODULES_DIR}")
    return path


def load_module(name: str, **init_kwargs) -> evaluate.EvaluationModule:
    """Load one local metric module offline (kept in memory: no cache files, no locks)."""
    set_offline_env()
    import evaluate

    return evaluate.load(str(module_path(name)), keep_in_memory=True, **init_kwargs)


def check_metrics(metrics: Sequence[str] | None) -> list[str]:
    """The requested metric names in the paper's column order (all when None); unknown names raise."""
    if metrics is None:
        return list(METRICS)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    return [m for m in METRICS if m in metrics]


def score(
    predictions: list[str],
    references: list[str],
    metrics: list[str] | None = None,
    *,
    bertscore_model: str | None = None,
    bertscore_layers: int | None = None,
) -> pd.DataFrame:
    """Per-sample scores, one row per pair, one column per metric (SPEC §7 definitions).

    CIDEr takes its document frequencies from `references`, so pass the whole test set in one call.
    BERTScore uses `bertscore_model` (a local directory; default all-MiniLM-L6-v2, see
    `text.DEFAULT_BERTSCORE_MODEL`) at `bertscore_layers`. Empty texts follow `text.empty_rule`.
    """
    columns = check_metrics(metrics)
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    bad = [i for i, t in enumerate(predictions + references) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"predictions and references must be strings (item {bad[0]} is not)")
    if not predictions:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})

    names = list(dict.fromkeys(METRIC_MODULES[c] for c in columns))
    if "meteor" in names:  # WordNet loads (pure Python) while BERTScore's encoder runs: meteor goes last
        from brain3d.metrics.wordnet import prefetch_wordnet

        prefetch_wordnet()
        names = [n for n in names if n != "meteor"] + ["meteor"]
    import evaluate

    modules = [
        load_module(n, model=bertscore_model, num_layers=bertscore_layers)
        if n == "bertscore"
        else load_module(n)
        for n in names
    ]
    results = evaluate.combine(modules).compute(predictions=predictions, references=references)
    return pd.DataFrame({c: results[c] for c in columns}, dtype=float)
