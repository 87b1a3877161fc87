"""What every DVC stage does around its work: offline env, threads, params, one MLflow run, and a clean
one-paragraph error (no traceback) for bad input or bad params."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import NoReturn

from brain3d import cache, config, runtime
from brain3d.data.manifest import CohortError, InputError
from brain3d.tracking import Tracker, mlflow_run


@contextlib.contextmanager
def run(name: str, sections: tuple[str, ...], params_file: str = "params.yaml"
        ) -> Iterator[tuple[dict, Tracker]]:
    """`with stage.run("split", ("split",)) as (cfg, tracker): ...` -> effective params and the tracker.

    The MLflow run logs the sections the stage reads, the profile, and the stage's wall time.
    """
    runtime.setup()
    cache.bind_stage(f"stages.{name.split('@')[0]}")  # resume state follows this stage's code
    try:
        cfg = config.load(params_file)  # before any work: a typo in params fails here, in one line
    except config.ParamsError as exc:
        _fail(name, exc)
    logged = {s: cfg.get(s) for s in sections if s in cfg}
    t0 = time.perf_counter()
    try:
        if not runtime.is_main_process():  # other DDP ranks compute, rank 0 logs and writes
            yield cfg, Tracker()
            return
        with mlflow_run(name, params={"profile": cfg.get("profile"), **logged},
                        tags={"profile": str(cfg.get("profile"))}) as tracker:
            yield cfg, tracker
            tracker.log_metrics({"stage_seconds": time.perf_counter() - t0})
    except (InputError, CohortError, config.ParamsError) as exc:
        _fail(name, exc)
    print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _fail(name: str, exc: Exception) -> NoReturn:
    """`<stage>: error: <message>` on stderr, exit status 1, no traceback."""
    print(f"{name}: error: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
