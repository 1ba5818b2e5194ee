"""One executor interface for the map step: in this process, or on dask.distributed.

The engine hands an executor a function, the tasks (batches of particle indices with their
paths: workers read the particles themselves from shared storage) and one ``shared`` object
(the iteration's averages and parameters). ``shared`` goes to the workers once per call (one
task holds it; each worker fetches it once), not once per task. The engine never knows where
the tasks ran:

- :class:`SerialExecutor`: everything in this process.
- :class:`DaskExecutor`: any ``dask.distributed`` cluster, built by
  :func:`faml.parallel.make_executor` (:mod:`faml.parallel.factory`):
  ``workers=N`` a ``LocalCluster`` of N single-threaded worker processes; ``scheduler=``
  the address of a running scheduler (``dask scheduler`` + ``dask worker``); or a SLURM
  cluster through ``dask-jobqueue`` (:mod:`faml.parallel.cluster`).

``map_reduce`` reduces the task results with a binary tree of ``combine`` tasks on the
workers (adjacent results first, in task order), so the client receives one result. With
:class:`~faml.parallel.reduce.TreeSum` inside those results the sums do not depend on the
batches, the workers or the order of completion.

Each worker process uses one BLAS / OpenMP / numba thread (:class:`WorkerSettings`, set
when the worker starts, never at import): N workers on N cores without oversubscription.

A worker that dies has its tasks re-run elsewhere by Dask (the tasks are pure functions of
their inputs, ``shared`` included). A scheduler that goes away ends the call with
:class:`ExecutorLost`; the engine's checkpoints make ``--continue`` resume after the last
complete iteration.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any, Protocol, TypeVar

import dask.config
from distributed import Client, LocalCluster, WorkerPlugin, as_completed
from tqdm import tqdm

from faml.parallel.threads import THREAD_VARIABLES, one_thread

__all__ = [
    "THREAD_VARIABLES",
    "DaskExecutor",
    "Executor",
    "ExecutorLost",
    "WorkerSettings",
    "SerialExecutor",
    "connect",
    "one_thread",
]

logger = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


class ExecutorLost(RuntimeError):
    """The cluster (its scheduler) went away during a call."""


class Executor(Protocol):
    """Runs ``fn(shared, task)`` over tasks; results in task order, or reduced."""

    workers: int

    def map(
        self,
        fn: Callable[[S, T], R],
        tasks: Sequence[T],
        *,
        shared: S = None,
        sizes: Sequence[int] | None = None,
        label: str = "",
    ) -> Iterator[R]:
        """Results of ``fn(shared, task)`` in task order."""
        ...

    def map_reduce(
        self,
        fn: Callable[[S, T], R],
        tasks: Sequence[T],
        combine: Callable[[R, R], R],
        *,
        shared: S = None,
        sizes: Sequence[int] | None = None,
        label: str = "",
    ) -> R:
        """``combine`` over the results of ``fn(shared, task)`` (a tree over task order)."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


ProgressHook = Callable[[str, int, int, float], None]
"""``hook(label, done, total, seconds)``: after each task of a call, the particles (or
tasks, without ``sizes``) done so far, their total and the seconds since the call began."""


class _Progress:
    """A call's tqdm bar (shown or not) and the executor's :data:`ProgressHook`, if any."""

    def __init__(self, progress, label, sizes, n_tasks, hook: ProgressHook | None):
        self.total = sum(sizes) if sizes is not None else n_tasks
        self.label, self.hook, self.done = label, hook, 0
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=self.total,
            desc=label or "faml",
            unit="particle" if sizes is not None else "task",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if self.hook is not None:
            self.hook(self.label, self.done, self.total, time.perf_counter() - self.started)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _bar(progress, label, sizes, n_tasks, hook: ProgressHook | None = None) -> _Progress:
    return _Progress(progress, label, sizes, n_tasks, hook)


class SerialExecutor:
    """Everything in the calling process.

    Parameters
    ----------
    progress
        Show a progress bar per call (the command line turns it on).
    """

    workers = 1
    on_progress: ProgressHook | None = None
    """Called after each task (:data:`ProgressHook`); the command line sets it."""

    def __init__(self, progress: bool = False):
        self.progress = progress

    def map(self, fn, tasks, *, shared=None, sizes=None, label=""):
        """Results of ``fn(shared, task)`` over ``tasks``, in order."""
        with _bar(self.progress, label, sizes, len(tasks), self.on_progress) as bar:
            for i, task in enumerate(tasks):
                yield fn(shared, task)
                bar.update(sizes[i] if sizes is not None else 1)

    def map_reduce(self, fn, tasks, combine, *, shared=None, sizes=None, label=""):
        """``combine`` over the results, along the same tree as :class:`DaskExecutor`.

        Results are combined as soon as a subtree is complete (a binary counter), so at most
        ``log2(len(tasks)) + 1`` of them are held at once.
        """
        if not tasks:
            raise ValueError("map_reduce needs at least one task")
        stack: list[tuple[int, Any]] = []  # (size in tasks, value); sizes are powers of 2
        for result in self.map(fn, tasks, shared=shared, sizes=sizes, label=label):
            size, value = 1, result
            while stack and stack[-1][0] == size:
                _, left = stack.pop()
                size, value = 2 * size, combine(left, value)
            stack.append((size, value))
        # the leftover subtrees, right to left: as the Dask tree carries an odd last one up
        return _tree_of_stack(stack, combine)

    def close(self) -> None:
        """Nothing to release."""


def _tree_of_stack(stack: list[tuple[int, Any]], combine: Callable) -> Any:
    """Finish :meth:`DaskExecutor.map_reduce`'s tree from the subtrees of a binary counter.

    The counter holds complete subtrees of sizes ``2^a > 2^b > ...``; in that tree an
    odd last value is carried up unchanged until it meets a subtree of its own size, so the
    remaining ones combine from the right: ``s1 + (s2 + (s3 + ...))``.
    """
    value = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        value = combine(left, value)
    return value


def adaptive_malloc() -> None:
    """Give glibc's malloc in this process thresholds that keep large temporaries in the heap.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; any such setting turns
    off glibc's adaptive mmap threshold, so every array above 128 KiB is fresh pages from
    the kernel and freed back at once. faml's map step allocates large temporaries per
    particle: measured, 40% of a worker's CPU time was then system time and the map step
    ran at half the speed of plain processes. Fixed thresholds as large as the adaptive
    ones would grow to (32 MiB mmap, 64 MiB trim) restore the speed. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or no libc to talk to
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 64 * 2**20)


class WorkerSettings(WorkerPlugin):
    """Worker plugin: faml's settings in every worker process.

    - one BLAS / OpenMP / numba thread (:func:`one_thread`);
    - glibc's malloc keeps its adaptive thresholds (:func:`adaptive_malloc`);
    - the worker's own background work is kept off the task thread's back: the statistical
      profiler (a stack walk every 10 ms, holding the GIL) is off and the event loop's
      "tick" watchdog wakes every second instead of every 20 ms.

    Registered by :class:`DaskExecutor` on any cluster, so workers started by hand or by
    SLURM get it too (also those that join later). Measured on 2 cores, 200 particles 32^3:
    the profiler and tick cost 5-10% of the map step's time on 2 workers.
    """

    name = "faml-worker-settings"

    def setup(self, worker) -> None:
        """Called in the worker process when it starts (or when registered)."""
        one_thread()
        adaptive_malloc()
        callbacks = getattr(worker, "periodic_callbacks", {})
        for name in ("profile", "profile-cycle"):
            if name in callbacks:
                callbacks[name].stop()
        tick = callbacks.get("tick")
        if tick is not None and tick.callback_time < 1000:
            tick.stop()
            tick.callback_time = 1000
            worker._tick_interval = 1.0
            tick.start()


def _key(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", label or "faml").strip("-") + "-" + uuid.uuid4().hex


class DaskExecutor:
    """Runs the tasks on a ``dask.distributed`` cluster.

    Parameters
    ----------
    client
        A connected ``distributed.Client``.
    cluster
        The cluster object this executor started (closed with it), or ``None`` for a
        scheduler that someone else runs.
    progress
        Show a progress bar per call.
    """

    on_progress: ProgressHook | None = None
    """Called after each task (:data:`ProgressHook`); the command line sets it."""

    def __init__(self, client, cluster=None, *, progress: bool = False):
        self.client = client
        self._cluster = cluster
        self.progress = progress
        self.address = client.scheduler.address
        client.register_plugin(WorkerSettings())
        dashboard = client.dashboard_link if _has_dashboard(client) else None
        if dashboard:
            logger.info("Dask dashboard: %s", dashboard)
        self.dashboard = dashboard

    @property
    def workers(self) -> int:
        """Worker processes connected now."""
        return len(self.client.scheduler_info().get("workers", {}))

    def _submit_all(self, fn, tasks, shared, label):
        key = _key(label)
        # A task that returns ``shared`` rather than ``scatter``: the scheduler keeps it in the
        # graph, so a worker that dies holding it costs a recomputation, not the run; each
        # worker fetches it once (from a peer) and keeps it while the call runs.
        shared_future = self.client.submit(_identity, shared, key=f"{key}-shared", pure=False)
        # Copy it to every worker now: left on one, the scheduler's data locality sends every
        # task to that worker (measured: 2 workers no faster than 1).
        try:
            self.client.replicate([shared_future])
        except Exception as exc:  # noqa: BLE001 - an optimisation; tasks fetch it otherwise
            logger.debug("could not replicate the shared data (%s); tasks will fetch it", exc)
        futures = [
            self.client.submit(fn, shared_future, task, key=f"{key}-{i}", pure=False)
            for i, task in enumerate(tasks)
        ]
        return shared_future, futures

    def _lost(self, exc: BaseException) -> bool:
        return self.client.status != "running" or isinstance(exc, CancelledError)

    def map(self, fn, tasks, *, shared=None, sizes=None, label=""):
        """Results of ``fn(shared, task)`` in task order (computed on the cluster)."""
        tasks = list(tasks)
        if not tasks:
            return
        try:
            shared_future, futures = self._submit_all(fn, tasks, shared, label)
            index = {f.key: i for i, f in enumerate(futures)}
            pending = as_completed(futures)
            del futures  # a result leaves the cluster's memory once it is here
            done: dict[int, Any] = {}
            following = 0
            with _bar(self.progress, label, sizes, len(tasks), self.on_progress) as bar:
                for future in pending:
                    i = index[future.key]
                    done[i] = future.result()
                    del future
                    bar.update(sizes[i] if sizes is not None else 1)
                    while following in done:
                        yield done.pop(following)
                        following += 1
            del shared_future
        except Exception as exc:
            if self._lost(exc):
                raise ExecutorLost(_lost_message(self.address, exc)) from exc
            raise

    def map_reduce(self, fn, tasks, combine, *, shared=None, sizes=None, label=""):
        """``combine`` over the results: a tree of tasks on the workers, one result back."""
        tasks = list(tasks)
        if not tasks:
            raise ValueError("map_reduce needs at least one task")
        try:
            shared_future, futures = self._submit_all(fn, tasks, shared, label)
            key = _key(label + "-combine")
            level, depth = list(futures), 0
            while len(level) > 1:
                # Combines outrank the remaining map tasks: a pair's results are summed as
                # soon as both exist, so a worker holds O(log N) of them, not O(N).
                nxt = [
                    self.client.submit(
                        combine,
                        level[i],
                        level[i + 1],
                        key=f"{key}-{depth}-{i}",
                        pure=False,
                        priority=1 + depth,
                    )  # fmt: skip
                    for i in range(0, len(level) - 1, 2)
                ]
                if len(level) % 2:
                    nxt.append(level[-1])
                level, depth = nxt, depth + 1
            index = {f.key: i for i, f in enumerate(futures)}
            # Hold no map future longer than needed: a future the client holds keeps its
            # result in a worker's memory after the combine has used it (O(N) per worker).
            pending = as_completed(futures)
            del futures
            with _bar(self.progress, label, sizes, len(tasks), self.on_progress) as bar:
                for future in pending:
                    if future.status == "error":
                        future.result()  # raises the task's own error
                    i = index[future.key]
                    bar.update(sizes[i] if sizes is not None else 1)
                    del future
            result = level[0].result()
            del shared_future, level
            return result
        except Exception as exc:
            if self._lost(exc):
                raise ExecutorLost(_lost_message(self.address, exc)) from exc
            raise

    def close(self) -> None:
        """Disconnect; shut down the cluster if this executor started it."""
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


def _has_dashboard(client) -> bool:
    try:
        return "dashboard" in client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - a missing dashboard is not an error
        return False


def _identity(value):
    return value


def _lost_message(address: str, exc: BaseException) -> str:
    return (
        f"lost the Dask scheduler at {address} ({type(exc).__name__}: {exc}); the "
        "iterations completed so far are kept in the output folder"
    )


QUIET_DASK = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
}
"""Dask settings of a local cluster: its scheduler, nannies and client share the cores with
the workers, and their timers (20 ms tick, 100 ms memory polls, 10 ms profiler) cost the
map step a few percent on 2 cores (measured: 200 particles 32^3, one iteration on 2
workers, 5.5-5.8 s with Dask's defaults and the :class:`WorkerSettings` plugin, 5.1-5.3 s
with these)."""


def _local_cluster(workers: int):
    env = {var: "1" for var in THREAD_VARIABLES}
    with dask.config.set(QUIET_DASK):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            env=env,
        )


def connect(address: str, *, progress: bool = False, timeout: float = 30.0) -> DaskExecutor:
    """An executor on the running scheduler at ``address`` (or a scheduler ``.json`` file)."""
    kwargs = {"scheduler_file": address} if str(address).endswith(".json") else {"address": address}
    try:
        client = Client(**kwargs, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ExecutorLost(
            f"could not reach the Dask scheduler at {address} within {timeout:g} s ({exc})"
        ) from exc
    return DaskExecutor(client, progress=progress)
