"""What every DVC stage does around its work: offline env, threads, params, one MLflow run, and a clean
one-paragraph error (no traceback) for bad input, bad params or a model whose files changed."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import NoReturn

from brain3d import cache, config, fileio, runtime
from brain3d.data.manifest import CohortError, InputError
from brain3d.tracking import Tracker, mlflow_run


@contextlib.contextmanager
def run(
    name: str, sections: tuple[str, ...], params_file: str = "params.yaml"
) -> Iterator[tuple[dict, Tracker]]:
    """`with entrypoint.run("split", ("split",)) as (cfg, tracker): ...` -> effective params and the tracker.

    The MLflow run logs the sections the stage reads, the profile, and what the stage cost: its wall time,
    the process's start-up before it (imports), peak memory (RSS, worker processes included) and threads.
    """
    t0, startup = time.perf_counter(), _process_age()
    threads = runtime.setup()
    cache.bind_stage(f"stages.{name.split('@')[0]}")  # resume state follows this stage's deps
    try:
        cfg = config.load(params_file)  # before any work: a typo in params fails here, in one line
    except config.ParamsError as exc:
        _fail(name, exc)
    logged = {s: cfg.get(s) for s in sections if s in cfg}
    try:
        if not runtime.is_main_process():  # other DDP ranks compute, rank 0 logs and writes
            yield cfg, Tracker()
            return
        with mlflow_run(
            name, params={"profile": cfg.get("profile"), **logged}, tags={"profile": str(cfg.get("profile"))}
        ) as tracker:
            yield cfg, tracker
            if runtime.FALLBACKS:  # said on stderr when it happened; kept with the run
                tracker.log_params({"precision_fallback": "; ".join(runtime.FALLBACKS)})
            cost = {
                "stage_seconds": time.perf_counter() - t0,
                "startup_seconds": startup,
                "peak_rss_mb": _peak_rss_mb(),
                "threads": threads,
            }
            tracker.log_metrics(cost)
    except (InputError, CohortError, config.ParamsError, fileio.IntegrityError) as exc:
        _fail(name, exc)
    print(
        f"{name}: done in {time.perf_counter() - t0:.1f} s (start-up {startup:.1f} s, peak RSS "
        f"{_peak_rss_mb():.0f} MB, {threads} threads)",
        file=sys.stderr,
    )


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; NaN elsewhere): the imports before the stage's work."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])  # starttime, field 22
        uptime = float(open("/proc/uptime").read().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process or of its largest finished child (workers), in MB."""
    import resource

    kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return kib / 1024  # Linux reports KiB


def _fail(name: str, exc: Exception) -> NoReturn:
    """`<stage>: error: <message>` on stderr, exit status 1, no traceback."""
    print(f"{name}: error: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
