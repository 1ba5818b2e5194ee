"""The executor a run asks for: in this process, on local processes, a scheduler or SLURM.

:func:`make_executor` chooses among :mod:`faml.parallel.executor`'s executors and
:mod:`faml.parallel.cluster`'s batch-system clusters, so it sits above both (neither imports
it); it is re-exported as :func:`faml.parallel.make_executor`.
"""

from __future__ import annotations

import os

from distributed import Client

from faml.parallel.cluster import start_cluster
from faml.parallel.executor import DaskExecutor, SerialExecutor, _local_cluster, connect

__all__ = ["make_executor"]


def make_executor(
    workers: int = 1,
    *,
    scheduler: str | None = None,
    cluster: str | None = None,
    cluster_config: str | os.PathLike[str] | None = None,
    progress: bool = False,
    local_cluster: bool | None = None,
) -> SerialExecutor | DaskExecutor:
    """The executor a run asks for.

    Parameters
    ----------
    workers
        Local worker processes: 1 runs in this process (unless ``local_cluster``), more
        start a Dask ``LocalCluster`` of that many single-threaded processes.
    scheduler
        Address of a running Dask scheduler (``tcp://HOST:PORT`` or a scheduler file
        ``*.json``); ``workers`` is then ignored.
    cluster, cluster_config
        ``"slurm"`` and its configuration file (:mod:`faml.parallel.cluster`).
    progress
        Progress bars per call.
    local_cluster
        Force (``True``) a ``LocalCluster`` even for one worker, or (``False``) none.
    """
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"--workers must be at least 1, got {workers!r}")
    if sum(x is not None for x in (scheduler, cluster)) > 1:
        raise ValueError("give either --scheduler or --cluster, not both")
    if cluster is not None:
        if cluster_config is None:
            raise ValueError(f"--cluster {cluster} needs --cluster-config FILE")
        return start_cluster(cluster, cluster_config, progress=progress)
    if scheduler is not None:
        return connect(scheduler, progress=progress)
    use_cluster = int(workers) > 1 if local_cluster is None else local_cluster
    if not use_cluster:
        return SerialExecutor(progress=progress)
    local = _local_cluster(int(workers))
    try:
        client = Client(local)
    except Exception:
        local.close()
        raise
    return DaskExecutor(client, local, progress=progress)
