"""The thread caps of a worker process: one BLAS / OpenMP / numba thread each.

The lowest module of :mod:`faml.parallel`: the executors (:mod:`faml.parallel.executor`)
and the batch-system clusters (:mod:`faml.parallel.cluster`) both set these.
"""

from __future__ import annotations

import os

__all__ = ["THREAD_VARIABLES", "one_thread"]

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
"""Environment variables that cap the threads of BLAS, OpenMP and numba in a worker."""


def one_thread() -> None:
    """Cap BLAS, OpenMP and numba at one thread in this process (a worker)."""
    for var in THREAD_VARIABLES:
        os.environ[var] = "1"
    import threadpoolctl  # only worker processes cap their threads: imported when one does

    threadpoolctl.threadpool_limits(limits=1)
