"""The map step on Dask: same answer anywhere, faults survived, the cluster configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import mrcfile
import numpy as np
import pytest

from conftest import make_dataset
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.engine import run
from faml.ml.rundir import last_complete_iteration
from faml.ml.tasks import chunks as _chunks
from faml.parallel import (
    DaskExecutor,
    ExecutorLost,
    SerialExecutor,
    TreeSum,
    connect,
    make_executor,
)
from faml.parallel.cluster import build_cluster, read_cluster_config

DASK = Path(sys.executable).parent / "dask"


# -- the fixed-order sum ------------------------------------------------------------------


class Vec:
    """A summable float64 vector (what :class:`TreeSum` needs: a new object from ``+``)."""

    def __init__(self, v):
        self.v = np.asarray(v, dtype=np.float64)

    def __add__(self, other):
        return Vec(self.v + other.v)


def _batched(values, batches, order):
    """Tree sums of the batches, merged in ``order``."""
    n = len(values)
    parts = []
    for a, b in batches:
        parts.append(TreeSum.of(((i, Vec(values[i])) for i in range(a, b)), n))
    merged = parts[order[0]]
    for j in order[1:]:
        merged = merged.merge(parts[j])
    return merged.total().v


@pytest.mark.parametrize("n", [1, 2, 7, 37, 64])
def test_tree_sum_does_not_depend_on_batches_or_order(n):
    rng = np.random.default_rng(n)
    # magnitudes over 12 decades: plain left-to-right sums differ between batchings
    values = rng.standard_normal((n, 50)) * 10.0 ** rng.uniform(-6, 6, (n, 1))
    reference = _batched(values, [(0, n)], [0])
    for size in (1, 3, 5, 8, 13):
        batches = [(a, min(a + size, n)) for a in range(0, n, size)]
        for _ in range(3):
            order = rng.permutation(len(batches))
            np.testing.assert_array_equal(_batched(values, batches, order), reference)
    np.testing.assert_allclose(reference, values.sum(axis=0), rtol=1e-9, atol=1e-6)


def test_plain_chunked_sums_do_depend_on_the_chunks():
    # why TreeSum exists: the same values summed chunk by chunk differ in the last bits
    rng = np.random.default_rng(0)
    values = rng.standard_normal((64, 200)) * 10.0 ** rng.uniform(-6, 6, (64, 1))

    def chunked(size):
        total = np.zeros(200)
        for a in range(0, 64, size):
            total = total + values[a : a + size].sum(axis=0)
        return total

    assert not np.array_equal(chunked(3), chunked(8))


def test_tree_sum_refuses_gaps_and_repeats():
    tree = TreeSum(5)
    tree.add(0, Vec([1.0]))
    tree.add(2, Vec([1.0]))
    with pytest.raises(ValueError, match="incomplete"):
        tree.total()
    with pytest.raises(ValueError, match="twice"):
        tree.add(2, Vec([1.0]))
    with pytest.raises(IndexError):
        tree.add(5, Vec([1.0]))
    with pytest.raises(ValueError, match="merge"):
        tree.merge(TreeSum(4))


def test_tree_sum_leaves_its_inputs_alone():
    a, b = Vec([1.0, 2.0]), Vec([3.0, 4.0])
    total = TreeSum.of([(0, a), (1, b)], 2).total()
    np.testing.assert_array_equal(total.v, [4.0, 6.0])
    np.testing.assert_array_equal(a.v, [1.0, 2.0])
    np.testing.assert_array_equal(b.v, [3.0, 4.0])


def _square(shared, x):
    return shared * x * x


def _concat(a, b):
    return a + b


def test_serial_and_dask_map_reduce_build_the_same_tree():
    # string concatenation is not commutative: it shows the shape of the tree
    tasks = list(range(11))
    serial = SerialExecutor().map_reduce(
        lambda s, x: f"({x})", tasks, lambda a, b: f"[{a}{b}]", shared=None
    )
    executor = make_executor(2)
    try:
        assert isinstance(executor, DaskExecutor)
        dask = executor.map_reduce(_paren, tasks, _bracket, shared=None)
        assert list(executor.map(_square, [1, 2, 3], shared=2)) == [2, 8, 18]
        seen = []
        executor.on_progress = lambda *a: seen.append(a)  # the CLI's time estimate
        assert executor.map_reduce(_square, [1, 2, 3], _concat, shared=1, sizes=[4, 4, 2],
                                   label="iteration 1") == 14  # fmt: skip
    finally:
        executor.close()
    assert dask == serial
    assert [a[:3] for a in seen][-1] == ("iteration 1", 10, 10) and len(seen) == 3
    assert sorted(a[1] for a in seen) == [a[1] for a in seen] and seen[0][3] >= 0
    serial_seen = []
    executor = SerialExecutor()
    executor.on_progress = lambda *a: serial_seen.append(a[:3])
    list(executor.map(_square, [1, 2], shared=1, sizes=[3, 1], label="start"))
    assert serial_seen == [("start", 3, 4), ("start", 4, 4)]


def _paren(shared, x):
    return f"({x})"


def _bracket(a, b):
    return f"[{a}{b}]"


def _thread_state(*_):
    import threadpoolctl

    infos = threadpoolctl.threadpool_info()
    return os.environ.get("OMP_NUM_THREADS"), [i["num_threads"] for i in infos]


def test_workers_run_one_thread_each():
    executor = make_executor(2)
    try:
        states = executor.client.run(_thread_state)
        assert len(states) == 2
        for env, threads in states.values():
            assert env == "1" and all(t == 1 for t in threads), (env, threads)
    finally:
        executor.close()


# -- the engine on every executor -----------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory, ribosome32):
    folder = tmp_path_factory.mktemp("parallel") / "particles"
    make_dataset(folder, [ribosome32], 18, 0.5, seed=5, voxel=21.0)
    return folder


BATCH = 4  # particles per task: several tasks per worker
CONFIG = RunConfig(classes=2, iterations=3, seed=4, tuning=Tuning(starts=1, fa_iterations=1))


def _outputs(out: Path):
    maps = [mrcfile.read(p) for p in sorted(out.glob("class_*.mrc"))]
    with np.load(out / "iterations" / "003" / "model.npz") as z:
        averages = z["averages"].copy()
    star = (out / "particles.star").read_text().splitlines()
    return maps, averages, [line for line in star if not line.startswith("# Created by")]


def _same(a, b):
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


@pytest.fixture(scope="module")
def serial_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    run(from_mrc_files(data), out, CONFIG, batch_size=BATCH)
    return _outputs(out)


@pytest.mark.parametrize("workers", [2, 4])
def test_local_clusters_match_the_serial_run(data, serial_run, tmp_path, workers):
    executor = make_executor(workers, local_cluster=True)
    try:
        assert executor.workers == workers
        run(from_mrc_files(data), tmp_path / "run", CONFIG, executor=executor, batch_size=BATCH)
    finally:
        executor.close()
    _same(_outputs(tmp_path / "run"), serial_run)


@pytest.mark.parametrize("n, size, workers", [(200, 8, 2), (18, 4, 4), (7, 8, 2), (50, 8, 1)])
def test_tasks_shrink_at_the_end_and_cover_every_particle_once(n, size, workers):
    chunks = _chunks(n, size, workers)
    np.testing.assert_array_equal(np.concatenate(chunks), np.arange(n))
    sizes = [len(c) for c in chunks]
    assert max(sizes) <= size and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)
    if workers == 1:
        assert sizes[:-1] == [size] * (len(sizes) - 1)
    else:  # the last task of each worker is one particle
        assert sizes[-workers:] == [1] * workers


@pytest.mark.parametrize("batch", [1, 7])
def test_batch_size_does_not_change_the_result(data, serial_run, tmp_path, batch):
    run(from_mrc_files(data), tmp_path / "run", CONFIG, batch_size=batch)
    _same(_outputs(tmp_path / "run"), serial_run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Cluster:
    """A ``dask scheduler`` and ``dask worker`` processes started by hand on 127.0.0.1."""

    def __init__(self, workers: int, tmp: Path, nanny: bool = False):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.logs = tmp / f"dask-{self.port}.log"
        log = open(self.logs, "w")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.scheduler = subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard"],
            stdout=log, stderr=log,
        )  # fmt: skip
        self.workers = [
            subprocess.Popen(
                [
                    str(DASK),
                    "worker",
                    self.address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--nanny" if nanny else "--no-nanny",
                    "--local-directory",
                    str(tmp / f"w{self.port}-{i}"),
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
            for i in range(workers)
        ]

    def wait(self, workers: int, timeout: float = 60.0) -> None:
        executor = connect(self.address, timeout=timeout)
        try:
            executor.client.wait_for_workers(workers, timeout=timeout)
        finally:
            executor.close()

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        self._log.close()


def test_separate_scheduler_and_workers_match_the_serial_run(data, serial_run, tmp_path):
    cluster = _Cluster(2, tmp_path)
    try:
        cluster.wait(2)
        out = tmp_path / "run"
        from faml.cli import main

        argv = [
            "run", str(data), "--out", str(out), "--scheduler", cluster.address,
            "--classes", "2", "--iterations", "3", "--seed", "4", "--batch-size", "5",
            "--starts", "1", "--fa-iterations", "1",
        ]  # fmt: skip
        assert main(argv) == 0
        # workers faml did not start get its settings from the plugin the run registered
        executor = connect(cluster.address)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
        try:
            for settings in executor.client.run(_worker_settings).values():
                assert settings == (1000, False, False, "1"), settings
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            executor.close()
    finally:
        cluster.stop()
    _same(_outputs(out), serial_run)


def _worker_settings(dask_worker):
    callbacks = dask_worker.periodic_callbacks
    return (
        callbacks["tick"].callback_time,
        "profile" in callbacks and callbacks["profile"].is_running(),
        "profile-cycle" in callbacks and callbacks["profile-cycle"].is_running(),
        os.environ.get("OMP_NUM_THREADS"),
    )


def _worker_pids(executor) -> dict[str, int]:
    return executor.client.run(os.getpid)


def _run_in_thread(table, out, cfg, executor):
    box: dict = {}

    def target():
        try:
            box["result"] = run(table, out, cfg, executor=executor, batch_size=BATCH)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_for(path: Path, thread: threading.Thread, timeout: float = 300.0) -> None:
    start = time.time()
    while not path.exists():
        assert thread.is_alive(), "the run ended before the moment of the fault"
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.01)


def test_a_killed_worker_does_not_change_the_result(data, serial_run, tmp_path):
    executor = make_executor(2)
    out = tmp_path / "run"
    try:
        before = _worker_pids(executor)
        thread, box = _run_in_thread(from_mrc_files(data), out, CONFIG, executor)
        _wait_for(out / "iterations" / "001" / "manifest.json", thread)
        assert thread.is_alive()
        victim = sorted(before.values())[0]
        os.kill(victim, signal.SIGKILL)  # during iteration 2
        thread.join(timeout=600)
        assert not thread.is_alive()
        assert "error" not in box, box.get("error")
        after = _worker_pids(executor)
        assert victim not in after.values()  # the worker really died (the nanny replaced it)
    finally:
        executor.close()
    _same(_outputs(out), serial_run)


def test_a_lost_scheduler_stops_the_run_and_continue_finishes_it(data, serial_run, tmp_path):
    out = tmp_path / "run"
    cluster = _Cluster(2, tmp_path)
    try:
        cluster.wait(2)
        executor = connect(cluster.address, timeout=5)
        thread, box = _run_in_thread(from_mrc_files(data), out, CONFIG, executor)
        _wait_for(out / "iterations" / "001" / "manifest.json", thread)
        cluster.scheduler.kill()
        thread.join(timeout=300)
        assert not thread.is_alive()
        error = box.get("error")
        assert isinstance(error, ExecutorLost), error
        message = str(error)
        assert cluster.address in message and "--continue" in message
        saved = last_complete_iteration(out)  # 1, unless the machine stalled for seconds
        assert f"iteration {int(saved.name)} is saved" in message
        executor.close()
    finally:
        cluster.stop()
    assert not (out / "particles.star").exists()
    again = _Cluster(2, tmp_path)
    try:
        again.wait(2)
        executor = connect(again.address)
        try:
            run(from_mrc_files(data), out, CONFIG, executor=executor, resume=True, batch_size=BATCH)
        finally:
            executor.close()
    finally:
        again.stop()
    _same(_outputs(out), serial_run)


def test_an_unreachable_scheduler_is_one_clear_error():
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ExecutorLost, match=f"could not reach the Dask scheduler at {address}"):
        connect(address, timeout=1)


# -- SLURM through dask-jobqueue, without SLURM -------------------------------------------

SLURM_YAML = """\
jobs: 3
slurm:
  queue: cpu
  account: structbio
  cores: 8
  memory: 32GB
  walltime: "12:00:00"
  job_extra_directives: ["--exclusive"]
  job_script_prologue: ["source /opt/faml/bin/activate"]
"""


def test_slurm_config_builds_the_job_script(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text(SLURM_YAML)
    config = read_cluster_config("slurm", path)
    assert config.jobs == 3 and config.options["processes"] == 8
    cluster = build_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert "#SBATCH -p cpu" in lines and "#SBATCH -A structbio" in lines
    assert "#SBATCH -t 12:00:00" in lines and "#SBATCH --exclusive" in lines
    assert "#SBATCH -n 1" in lines and "#SBATCH --cpus-per-task=8" in lines
    assert "source /opt/faml/bin/activate" in lines
    assert "export OMP_NUM_THREADS=1" in lines and "export NUMBA_NUM_THREADS=1" in lines
    assert "--nworkers 8" in script and "--nthreads 1" in script
    assert lines.index("source /opt/faml/bin/activate") < lines.index("export OMP_NUM_THREADS=1")


@pytest.mark.parametrize(
    "text, message",
    [
        ("jobs: 2\n", "needs 'cores'"),
        ("jobs: 0\nslurm: {cores: 4, memory: 8GB}\n", "positive integer"),
        ("jobs: 2\nslurm: {cores: 4, processes: 2, memory: 8GB}\n", "single-threaded"),
        ("jobs: 2\nslurm: {cores: 4}\n", "needs 'memory'"),
        ("jobs: 2\nsgeq: {}\n", "unknown keys"),
        ("- a\n- b\n", "must be a mapping"),
        ("jobs: [\n", "not valid YAML"),
    ],
)
def test_bad_cluster_configs_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_cluster_config("slurm", path)


def test_unknown_cluster_option_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("slurm: {cores: 2, memory: 4GB, queue_name_typo: cpu}\n")
    with pytest.raises(ValueError, match="queue_name_typo"):
        build_cluster(read_cluster_config("slurm", path))
