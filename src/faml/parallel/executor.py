"""One executor interface for the map step.

The engine hands an executor a function and a list of tasks and gets the results back *in
task order*; it never knows where they ran. Tasks are fixed-size chunks of particle indices,
so the reduction (summed in task order) is the same for any number of workers.

- :class:`SerialExecutor`: in this process.
- :class:`ProcessExecutor`: ``N`` local worker processes (``spawn``: no state inherited from
  the parent), each limited to one BLAS/OpenMP thread so that ``N`` workers use ``N``
  cores without oversubscription. The limits are set in the worker, not at import: through
  the environment for libraries not loaded yet, and through ``threadpoolctl`` for those
  already loaded (``spawn`` imports the parent's main module, and with it numpy, before the
  initializer runs; without the runtime limit each worker's OpenBLAS ran one thread per
  core, and two workers on two cores were no faster than one).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

__all__ = ["Executor", "SerialExecutor", "ProcessExecutor", "make_executor"]

T = TypeVar("T")
R = TypeVar("R")

_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


class Executor(Protocol):
    """Runs ``fn`` over tasks and yields the results in task order."""

    workers: int

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Results of ``fn`` over ``tasks``, in task order."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


class SerialExecutor:
    """Everything in the calling process."""

    workers = 1

    def map(self, fn, tasks):
        """Results of ``fn`` over ``tasks``, in order."""
        return map(fn, tasks)

    def close(self) -> None:
        """Nothing to release."""


def _limit_threads() -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=1)


class ProcessExecutor:
    """``workers`` local processes, one thread each."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_limit_threads,
        )

    def map(self, fn, tasks):
        """Results of ``fn`` over ``tasks``, in task order (computed in parallel)."""
        return self._pool.map(fn, tasks)

    def close(self) -> None:
        """Shut the worker processes down."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(workers: int) -> SerialExecutor | ProcessExecutor:
    """Serial for one worker, local processes for more."""
    return SerialExecutor() if workers <= 1 else ProcessExecutor(workers)
