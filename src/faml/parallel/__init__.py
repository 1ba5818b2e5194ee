"""Where the map step runs, and sums that do not depend on it.

One executor interface (serial; Dask local, remote or SLURM) and :class:`TreeSum`.
"""

from faml.parallel.executor import (
    DaskExecutor,
    Executor,
    ExecutorLost,
    SerialExecutor,
    WorkerSettings,
    connect,
    make_executor,
    one_thread,
)
from faml.parallel.reduce import TreeSum

__all__ = [
    "DaskExecutor",
    "Executor",
    "ExecutorLost",
    "WorkerSettings",
    "SerialExecutor",
    "TreeSum",
    "connect",
    "make_executor",
    "one_thread",
]
