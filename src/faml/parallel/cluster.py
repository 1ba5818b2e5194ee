"""Batch-system clusters (SLURM) through ``dask-jobqueue`` (the optional extra ``faml[cluster]``).

``faml run --cluster slurm --cluster-config FILE`` reads a YAML file:

.. code-block:: yaml

    jobs: 4                  # SLURM jobs to submit; each runs `processes` workers
    slurm:                   # keyword arguments of dask_jobqueue.SLURMCluster
      queue: cpu
      account: my-project
      cores: 32              # cores per job ...
      processes: 32          # ... and as many single-threaded worker processes
      memory: 120GB
      walltime: "24:00:00"
      job_extra_directives: ["--exclusive"]
      job_script_prologue: ["source /path/to/faml-venv/bin/activate"]

faml's workers are single-threaded (one BLAS / FFT thread each), so ``processes`` must equal
``cores`` (it defaults to it). Every other key under ``slurm`` is passed to
``SLURMCluster`` unchanged (see dask-jobqueue's documentation: ``interface``,
``local_directory``, ``log_directory``, ``worker_extra_args``, ...). The scheduler runs in
the ``faml run`` process (on the login or head node); the jobs connect to it.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # PyYAML comes with dask
from distributed import Client

from faml.parallel.executor import DaskExecutor
from faml.parallel.threads import THREAD_VARIABLES

__all__ = ["ClusterConfig", "read_cluster_config", "build_cluster", "start_cluster", "KINDS"]

logger = logging.getLogger(__name__)

KINDS = ("slurm",)
"""Batch systems faml can start workers on."""


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster configuration file, checked.

    Attributes
    ----------
    kind
        ``"slurm"``.
    jobs
        Batch jobs to submit.
    options
        Keyword arguments of the dask-jobqueue cluster class.
    source
        The file it came from.
    """

    kind: str
    jobs: int
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def read_cluster_config(kind: str, path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and check a cluster configuration file (YAML; see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"--cluster must be one of {', '.join(KINDS)}, got {kind!r}")
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the cluster configuration {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"the cluster configuration {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the cluster configuration {p} must be a mapping (jobs:, {kind}:)")
    unknown = sorted(set(data) - {"jobs", kind})
    if unknown:
        raise ValueError(
            f"the cluster configuration {p} has unknown keys {unknown}: expected 'jobs' and "
            f"'{kind}'"
        )
    jobs = data.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"'jobs' in {p} must be a positive integer, got {jobs!r}")
    options = data.get(kind) or {}
    if not isinstance(options, dict):
        raise ValueError(f"'{kind}' in {p} must be a mapping of {kind} cluster options")
    options = dict(options)
    if "cores" not in options:
        raise ValueError(f"'{kind}' in {p} needs 'cores' (cores per job)")
    cores = options["cores"]
    processes = options.setdefault("processes", cores)
    if processes != cores:
        raise ValueError(
            f"'{kind}' in {p}: processes ({processes}) must equal cores ({cores}); faml's "
            "workers are single-threaded"
        )
    if "memory" not in options:
        raise ValueError(f"'{kind}' in {p} needs 'memory' (per job, e.g. 120GB)")
    return ClusterConfig(kind=kind, jobs=jobs, options=options, source=str(p))


def build_cluster(config: ClusterConfig):
    """The dask-jobqueue cluster object (its scheduler started here, no job submitted yet)."""
    try:  # the optional extra faml[cluster]: imported when a cluster is built
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ValueError(
            "--cluster slurm needs dask-jobqueue: pip install 'faml[cluster]'"
        ) from exc
    options = dict(config.options)
    unknown = sorted(set(options) - _accepted_options())
    if unknown:
        raise ValueError(
            f"{config.source}: unknown {config.kind} option(s) {unknown} (see dask-jobqueue's "
            "SLURMCluster)"
        )
    # faml's thread limits travel with the job's environment as well as the worker plugin
    prologue = list(options.pop("job_script_prologue", []) or [])
    limits = [f"export {v}=1" for v in THREAD_VARIABLES]
    return SLURMCluster(job_script_prologue=prologue + limits, **options)


def _accepted_options() -> set[str]:
    """Keyword arguments SLURMCluster takes (its own, its job's and their base classes')."""
    # the optional extra faml[cluster] (build_cluster checked that it is there)
    from dask_jobqueue.core import Job, JobQueueCluster
    from dask_jobqueue.slurm import SLURMJob

    names: set[str] = set()
    for fn in (JobQueueCluster.__init__, SLURMJob.__init__, Job.__init__):
        names.update(
            name
            for name, par in inspect.signature(fn).parameters.items()
            if par.kind is par.POSITIONAL_OR_KEYWORD or par.kind is par.KEYWORD_ONLY
        )
    return names - {"self", "scheduler", "job_cls", "loop", "asynchronous", "job_kwargs"}


def start_cluster(kind: str, path: str | os.PathLike[str], *, progress: bool = False):
    """An executor on a new batch-system cluster: submits ``jobs`` jobs."""
    config = read_cluster_config(kind, path)
    cluster = build_cluster(config)
    try:
        cluster.scale(jobs=config.jobs)
        logger.info(
            "submitted %d %s job(s) of %s worker processes; waiting for them to start",
            config.jobs, kind, config.options["processes"],
        )  # fmt: skip
        client = Client(cluster)
    except Exception:
        cluster.close()
        raise
    return DaskExecutor(client, cluster, progress=progress)
