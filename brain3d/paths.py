"""The pipeline's file layout (relative to the repository root); dvc.yaml declares the same paths."""

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
