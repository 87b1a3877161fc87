"""Downloading the paper cohort's public datasets: OpenNeuro ds000221 (openneuro-py), the TextBraTS FLAIR
reports (Hugging Face hub) and the Kaggle mirror of BraTS 2020, with the dataset ids and patterns they use.

Stages run with HF_HUB_OFFLINE=1 (brain3d.runtime) so no model is ever pulled by accident; `hub_online` lifts
it for the one TextBraTS call and restores it afterwards. Clients are imported only when a fetch needs them.
What to fetch, and when, is decided by brain3d.data.sources (`download.fetch`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

KAGGLE_DATASET = "awsaf49/brats20-dataset-training-validation"
TEXTBRATS_REPO = "Jupitern52/TextBraTS"
TEXTBRATS_PATTERN = "*_flair_text.txt"
DS000221 = "ds000221"


def flair_pattern(acq: str) -> str:
    """Glob of one ds000221 FLAIR acquisition, relative to the BIDS root (openneuro-py include syntax)."""
    return f"sub-*/ses-01/anat/sub-*_ses-01_acq-{acq}_FLAIR.nii.gz"


@contextlib.contextmanager
def hub_online() -> Iterator[None]:
    """Allow the Hugging Face hub inside the block, whatever HF_HUB_OFFLINE says, then restore it.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, into `constants.HF_HUB_OFFLINE`; both that and the
    environment variable (for subprocesses) are switched.
    """
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "0"
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def fetch_ds000221(target: Path, acq: str, tag: str | None = None) -> None:
    """Download one FLAIR acquisition of ds000221 and participants.tsv into `target` (openneuro-py skips
    files already there)."""
    try:
        import openneuro
    except ImportError as exc:
        raise RuntimeError("openneuro-py is not installed: `pip install openneuro-py`") from exc
    target.mkdir(parents=True, exist_ok=True)
    openneuro.download(
        dataset=DS000221, tag=tag, include=[flair_pattern(acq), "participants.tsv"], target_dir=str(target)
    )


def fetch_textbrats(target: Path) -> None:
    """Download the TextBraTS FLAIR reports (text only, not the feature arrays) into `target`."""
    import huggingface_hub

    target.mkdir(parents=True, exist_ok=True)
    with hub_online():
        huggingface_hub.snapshot_download(
            repo_id=TEXTBRATS_REPO,
            repo_type="dataset",
            local_dir=str(target),
            allow_patterns=[TEXTBRATS_PATTERN],
        )


def kaggle_credentials() -> bool:
    """Whether the Kaggle client would find credentials: environment variables or a token file."""
    if (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or os.environ.get(
        "KAGGLE_API_TOKEN"
    ):
        return True
    home = Path.home()
    dirs = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    dirs += [home / ".kaggle", Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    return any((d / name).is_file() for d in dirs for name in ("kaggle.json", "access_token"))


def fetch_brats_kaggle(target: Path, dataset: str = KAGGLE_DATASET) -> None:
    """Download and unzip the Kaggle mirror of BraTS 2020 (all modalities, ~4 GB) into `target`."""
    if not kaggle_credentials():
        raise RuntimeError("no Kaggle credentials (KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json)")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise RuntimeError("the Kaggle client is not installed: `pip install kaggle`") from exc
    api = KaggleApi()
    api.authenticate()
    target.mkdir(parents=True, exist_ok=True)
    api.dataset_download_files(dataset, path=str(target), unzip=True, quiet=False)
