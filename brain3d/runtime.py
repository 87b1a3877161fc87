"""Process set-up shared by stages, the CLI and tests: offline hubs, thread counts, seeds."""

from __future__ import annotations

import os
import random

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_offline_env() -> None:
    """No model/dataset hub is contacted, and no telemetry is sent (values already set are kept)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def set_threads(n: int | None = None) -> int:
    """Cap intra-op threads (default: BRAIN3D_THREADS or all cores) and return the count used."""
    import torch

    n = n or int(os.environ.get("BRAIN3D_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a stage re-run gives the same numbers."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(threads: int | None = None) -> int:
    """Offline env and thread cap; returns the thread count."""
    set_offline_env()
    return set_threads(threads)


FALLBACKS: list[str] = []  # what this process runs at a lower precision than its params ask, in words


def precision_fallback(message: str, allow: bool) -> None:
    """A precision the params ask for and this machine cannot give: refuse with `message` (PrecisionError)
    unless `allow` (`foundation.allow_cpu_fallback`); allowed, say it in one line on stderr and keep it in
    FALLBACKS, which `entrypoint.run` records in the stage's MLflow run (tag `precision_fallback`)."""
    import sys

    from brain3d.config import PrecisionError

    if not allow:
        raise PrecisionError(
            f"{message}; set foundation.allow_cpu_fallback: true to run at full precision instead"
        )
    print(f"precision fallback: {message}", file=sys.stderr)
    FALLBACKS.append(message)


def device() -> str:
    """Where inference and training run: "cuda" when a GPU is visible, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_main_process() -> bool:
    """False in the non-zero ranks of an `accelerate launch` / torchrun job (they must not write outputs)."""
    return int(os.environ.get("RANK", "0")) == 0


def quiet_logs_and_warnings() -> None:
    """Other libraries' log records below ERROR and their warnings dropped, brain3d's own kept: what the
    `brain3d` command and its worker processes show a user (brain3d.cli._quiet_libraries)."""
    import logging
    import warnings

    logging.getLogger().setLevel(logging.ERROR)  # every logger that keeps the default level inherits it
    for name, logger in list(logging.Logger.manager.loggerDict.items()):  # those already set a level
        if isinstance(logger, logging.Logger) and name.split(".")[0] != "brain3d":
            logger.setLevel(max(logger.level, logging.ERROR))
    own = logging.getLogger("brain3d")
    if own.level == logging.NOTSET:
        own.setLevel(logging.WARNING)  # Python's default, not the root's ERROR
    warnings.simplefilter("ignore")
    # ours, unless it is a library's deprecation notice that names our call
    warnings.filterwarnings("default", module=r"brain3d(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"brain3d(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"brain3d(\.|$)")
