"""Where the map step runs, and sums that do not depend on it.

One executor interface (serial; Dask local, remote or SLURM) and :class:`TreeSum`.
Inside, one way down: ``factory`` (:func:`make_executor`) -> ``cluster`` -> ``executor`` ->
``threads``; ``reduce`` stands alone. Nothing here imports the rest of faml (layer 1).
"""

from faml.parallel.executor import (
    DaskExecutor,
    Executor,
    ExecutorLost,
    SerialExecutor,
    WorkerSettings,
    connect,
)
from faml.parallel.factory import make_executor
from faml.parallel.reduce import TreeSum
from faml.parallel.threads import one_thread

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
