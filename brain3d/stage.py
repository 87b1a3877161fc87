"""What every DVC stage does around its work: offline env, threads, params, one MLflow run, and a clean
one-paragraph error (no traceback) for bad input."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from brain3d import config, runtime
from brain3d.data.manifest import CohortError, InputError
from brain3d.tracking import Tracker, mlflow_run


@contextlib.contextmanager
def run(name: str, sections: tuple[str, ...], params_file: str = "params.yaml"
        ) -> Iterator[tuple[dict, Tracker]]:
    """`with stage.run("split", ("split",)) as (cfg, tracker): ...` -> effective params and the tracker.

    The MLflow run logs the sections the stage reads, the profile, and the stage's wall time.
    """
    runtime.setup()
    cfg = config.load(params_file)
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
    except (InputError, CohortError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
