"""The map step of an iteration as tasks of an executor, and its reduction.

The particles are split once into tasks (:func:`chunks`); each task returns its particles'
results and the sum of their statistics along one binary tree over the particle indices
(:class:`faml.parallel.TreeSum`), so the split and the number of workers never change a
result. Three kinds of task:

- :func:`map_particles`: an iteration's E-step and sums (:func:`faml.ml.em.process_particle`);
- :func:`map_initial`: random start ``s``, each particle at a random class and pose (at its
  prior pose in a local search);
- :func:`map_assigned`: particles placed by hand (re-seeding a class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faml.io.particles import ParticleTable, TableRows
from faml.ml.config import RunConfig
from faml.ml.em import (
    ParticleResult,
    StepContext,
    hard_particle,
    initial_assignment,
    process_particle,
)
from faml.ml.stats import Stats
from faml.parallel import Executor, TreeSum

__all__ = [
    "Batch",
    "chunks",
    "map_assigned",
    "map_initial",
    "map_particles",
    "reduce",
    "split_halves",
]


def split_halves(n: int, seed: int) -> np.ndarray:
    """`(n,)` 0/1: the two random half-sets of a run (``rlnRandomSubset`` - 1)."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    halves = np.zeros(n, dtype=np.int64)
    halves[perm[1::2]] = 1
    return halves


def chunks(n: int, size: int, workers: int = 1) -> list[np.ndarray]:
    """Consecutive particle indices, ``size`` per task, the last tasks smaller.

    With several workers the last ``2 * workers * size`` particles go in ever smaller tasks
    (down to one particle), so that the workers run out of work together rather than one
    task apart.

    The split never changes a result (the sums are a fixed tree over particle indices).
    """
    out, start = [], 0
    while start < n:
        rest = n - start
        step = size
        if workers > 1 and rest <= 2 * workers * size:
            step = max(1, min(size, -(-rest // (2 * workers))))
        out.append(np.arange(start, min(start + step, n)))
        start += step
    return out


@dataclass(frozen=True)
class _Part:
    """What a task returns: its particles' results (in task order) and their partial sums."""

    results: list[ParticleResult]
    tree: TreeSum


def _combine(left: _Part, right: _Part) -> _Part:
    """Two adjacent tasks' parts as one (``left``'s particles first)."""
    return _Part(left.results + right.results, left.tree.merge(right.tree))


@dataclass(frozen=True)
class Batch:
    """A task: particles by their index, with their rows of the table and their half-sets.

    ``leaves`` is the size of the whole sum (the table's length, or the number of placed
    particles). ``items`` are per particle ``(leaf, index, class, rotation, shift)`` when
    the particles are placed by hand, else ``None``. The half-sets travel with the tasks:
    a worker never holds a per-particle array of the whole data set.
    """

    indices: np.ndarray
    rows: TableRows
    halves: dict[int, int]
    leaves: int
    items: tuple | None = None
    priors: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def prior(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Particle ``i``'s prior pose ``(R0, t0)``, or ``None``."""
        return None if self.priors is None else self.priors[int(i)]

    @classmethod
    def of(cls, table: ParticleTable, indices, halves: np.ndarray, leaves: int, items=None):
        """The task of particles ``indices`` of ``table`` (with their prior poses, if any)."""
        idx = np.asarray(indices, dtype=np.int64)
        priors = None
        if table.prior_rotations is not None:
            priors = {int(i): (table.prior_rotations[i], table.prior_shifts[i]) for i in idx}
        halves_of = {int(i): int(halves[i]) for i in idx}
        return cls(idx, TableRows(table, idx), halves_of, leaves, items, priors)


def _part(pairs, leaves: int) -> _Part:
    """A task's part from ``(leaf, (result, stats))`` pairs, in task order."""
    results, tree = [], TreeSum(leaves)
    for leaf, (result, stats) in pairs:
        results.append(result)
        tree.add(leaf, stats)
    return _Part(results, tree)


def map_particles(ctx: StepContext, batch: Batch) -> _Part:
    """Task of an EM / FA iteration: the map step of the batch's particles."""
    return _part(
        (
            (
                int(i),
                process_particle(
                    ctx, batch.rows, int(i), batch.halves[int(i)], prior=batch.prior(i)
                ),
            )
            for i in batch.indices
        ),
        batch.leaves,
    )


def map_initial(shared: tuple[RunConfig, int], batch: Batch) -> _Part:
    """Task of random start ``start``: the batch's particles at random classes and poses."""
    config, start = shared

    def placed(i: int):
        _, klass, rotation, shift = initial_assignment(config, i, start)
        if batch.priors is not None and config.local_search_deg is not None:
            rotation, shift = batch.prior(i)  # the average at the prior poses
        return hard_particle(batch.rows, i, klass, rotation, shift, config.classes,
                             batch.halves[i], config.particle_mask_radius)  # fmt: skip

    return _part(((int(i), placed(int(i))) for i in batch.indices), batch.leaves)


def map_assigned(shared: tuple[int, float | None], batch: Batch) -> _Part:
    """Task of particles placed by hand (``batch.items``); ``shared``: classes, mask radius."""
    classes, radius = shared
    return _part(
        (
            (leaf, hard_particle(batch.rows, i, k, r, t, classes, batch.halves[i], radius))
            for leaf, i, k, r, t in batch.items
        ),
        batch.leaves,
    )


def reduce(
    executor: Executor, fn, shared, tasks: list[Batch], label: str
) -> tuple[list[ParticleResult], Stats]:
    """Run ``fn`` over the tasks; the results in order and the statistics summed."""
    part = executor.map_reduce(
        fn, tasks, _combine, shared=shared, sizes=[len(t) for t in tasks], label=label
    )
    return part.results, part.tree.total()
