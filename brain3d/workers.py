"""Work on many items in worker processes that survives a worker killed by the OS (the out-of-memory killer,
kill -9): the items that were in flight are retried one at a time in a fresh process, so that only the item
that kills its process fails, and the others go on. Results come back in the order of the items."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


def imap(fn: Callable, items: Iterable, workers: int) -> Iterator[tuple[object, object, str]]:
    """(item, fn(item), "") for each item, in order, computed in `workers` processes (spawned: nothing of
    this process's state, threads or GPU context is forked); (item, None, reason) for an item whose process
    died. `fn` must be a module-level function; an exception it raises is raised here."""
    items = list(items)
    context = multiprocessing.get_context("spawn")
    threads = max(1, (int(os.environ.get("BRAIN3D_THREADS", "0")) or os.cpu_count() or 1) // max(1, workers))
    pool = _pool(workers, context, threads)
    futures: dict[int, Future] = {}
    done: dict[int, tuple[object, str]] = {}  # index -> (result, reason), ready in turn
    submitted, finished = 0, False
    try:
        for i, item in enumerate(items):
            if i not in done:
                try:
                    while submitted < len(items) and len(futures) + len(done) < 2 * workers:  # look-ahead
                        futures[submitted] = pool.submit(fn, items[submitted])
                        submitted += 1
                    done[i] = (futures.pop(i).result(), "")
                except BrokenProcessPool:  # a worker died: the items in flight are retried one at a time
                    pool.shutdown(wait=True)
                    broken = [j for j, f in futures.items() if isinstance(f.exception(), BrokenProcessPool)]
                    for j in sorted({i, *broken}):
                        futures.pop(j, None)
                        done[j] = _alone(fn, items[j], context, threads)
                    submitted = max(submitted, i + 1)  # item i may have broken the pool being submitted
                    pool = _pool(workers, context, threads)
            yield (item, *done.pop(i))
        finished = True
    finally:
        if not finished:  # stopped early (Ctrl-C, an error, the caller gave up): running items are abandoned
            for process in list((pool._processes or {}).values()):  # Python < 3.14: no terminate_workers()
                process.terminate()
        # joined, never left to the interpreter's exit (where waking the pool's manager thread can fail with
        # a traceback on stderr: "OSError: [Errno 9] Bad file descriptor")
        pool.shutdown(wait=True, cancel_futures=True)


def _pool(workers: int, context, threads: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start, initargs=(threads, os.getpid())
    )


def _start(threads: int, parent: int) -> None:
    """Worker start: its share of the cores for OpenMP, BLAS and ITK (ANTs), unless the user set them; Ctrl-C
    left to the parent (which stops the pool); and an exit when the parent is gone (kill -9), instead of
    waiting for work forever."""
    for name in THREAD_ENV:
        os.environ.setdefault(name, str(threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _alone(fn: Callable, item, context, threads: int) -> tuple[object, str]:
    """(fn(item), "") computed in a process of its own, or (None, why) if that process died."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_run_alone, args=(fn, item, threads, os.getpid(), send))
    process.start()
    send.close()
    try:
        result, error = receive.recv()
        answered = True
    except EOFError:  # the process died before it could answer
        answered = False
    process.join()
    if answered and error is not None:
        raise error
    if answered:
        return result, ""
    code = process.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return None, f"the worker process died ({how}; out of memory?)"


def _run_alone(fn: Callable, item, threads: int, parent: int, send) -> None:
    _start(threads, parent)
    try:
        send.send((fn(item), None))
    except Exception as exc:
        send.send((None, exc))
