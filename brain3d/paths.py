"""The pipeline's file layout (relative to the repository root; dvc.yaml declares the same paths), and where
that root is (`repo_root`)."""

import os
import subprocess
from pathlib import Path

RAW = Path("data/raw")
MANIFEST_RAW = RAW / "manifest.csv"
PREPROCESSED = Path("data/preprocessed")
MANIFEST = PREPROCESSED / "manifest.csv"
VOLUMES = PREPROCESSED / "volumes"
SEGS = PREPROCESSED / "seg"
SPLITS = Path("data/splits.csv")
CORPUS = Path("data/corpus")  # the stand-in SigLIP's extra pretraining subjects (brain3d/data/corpus.py)
MODELS = Path("models")
FOUNDATION = MODELS / "foundation"
BACKBONES = FOUNDATION / "backbones.json"
REPORTS = Path("reports")
PREDICTIONS = REPORTS / "predictions"
CURVES = REPORTS / "curves"
TRAINING = REPORTS / "training"


def model_dir(phase: str) -> Path:
    return MODELS / phase


def repo_root(start: str | Path | None = None) -> Path:
    """The project root that owns mlflow.db. Inside a queued DVC experiment's temporary workspace
    (`<root>/.dvc/tmp/exps/...`) this is the main repository, so no run is lost with the workspace."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i, part in enumerate(parts):
        if part == ".dvc" and parts[i + 1 : i + 3] == ("tmp", "exps"):
            return Path(*parts[:i])
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True
        )
        if out.returncode == 0:
            return Path(out.stdout.strip())
    except OSError:
        pass
    return here
