"""Re-seeding classes that have (nearly) emptied, instead of letting them die."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from faml.io.particles import ParticleTable
from faml.ml.config import RunConfig
from faml.ml.em import ParticleResult
from faml.ml.fourier import fsc
from faml.ml.mstep import compensated_mean, model_band
from faml.ml.state import ModelState
from faml.ml.tasks import Batch, map_assigned, reduce
from faml.parallel import Executor

__all__ = ["RARE_SHARE", "RESEED_SHARE", "placed_means", "rebuilt", "reseed", "reseed_below"]

logger = logging.getLogger(__name__)

RESEED_SHARE = 0.25
"""A class with a prior below ``RESEED_SHARE / K`` (and below :data:`RARE_SHARE`) is
re-seeded (see :func:`reseed`)."""

RARE_SHARE = 0.03
"""Never re-seed a class that holds at least this share of the particles: a rare state of
5-10% is a result, not an emptied class (``RESEED_SHARE / K`` alone re-seeded classes below
12.5% at K = 2 and 8.3% at K = 3)."""


def reseed_below(classes: int) -> float:
    """The prior below which a class of ``classes`` is re-seeded."""
    return min(RESEED_SHARE / classes, RARE_SHARE)


def reseed(
    executor: Executor,
    table: ParticleTable,
    state: ModelState,
    results: list[ParticleResult],
    config: RunConfig,
    halves: np.ndarray,
    batch_size: int,
) -> tuple[ModelState, list[ParticleResult]]:
    """``state`` and ``results`` with every (nearly) empty class re-seeded.

    Rule: while a class ``k`` holds less than :func:`reseed_below` of the particles (by its
    prior ``alpha_k``: 3% up to K = 8), the worse-fitting half (lowest log-likelihood for
    FAML, lowest correlation for FA) of the particles whose best class is the largest class
    is moved to ``k`` with their current poses; ``k``'s average becomes the wedge-compensated
    mean of those particles (its half-set averages and FSC those of their halves) and
    ``alpha`` follows the new counts. Particles that fit the dominant average worst are the
    likeliest to belong to another structure. ``batch_size``: particles per task of the
    executor. Returns the inputs themselves when no class needed it.
    """
    K = config.classes
    if K == 1:
        return state, results
    before = state
    results = list(results)
    changed = False
    for k in range(K):
        if state.alpha[k] >= reseed_below(K) or k >= K - config.junk_classes:
            continue  # not emptied, or a junk class (it may well be empty)
        counts = np.bincount([r.klass for r in results], minlength=K)
        big = int(np.argmax(counts))
        members = [r for r in results if r.klass == big]
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r.fit)
        moved = members[: len(members) // 2]
        for r in moved:
            results[r.index] = replace(r, klass=k)
        state = rebuilt(executor, table, state, results, [k], halves, config, batch_size,
                        f"re-seeding class {k + 1}")  # fmt: skip
        changed = True
        logger.info(
            "class %d held %.1f%% of the particles: re-seeded with the %d worst-fitting "
            "particles of class %d", k + 1, 100 * before.alpha[k], len(moved), big + 1,
        )  # fmt: skip
    if not changed:
        return before, results
    return replace(state, band=model_band(state.fsc, config.tuning.min_band, table.box)), results


def rebuilt(
    executor: Executor,
    table: ParticleTable,
    state: ModelState,
    results: list[ParticleResult],
    classes: list[int],
    halves: np.ndarray,
    config: RunConfig,
    batch_size: int,
    label: str,
) -> ModelState:
    """``state`` with the averages of ``classes`` rebuilt from their particles in ``results``.

    Each particle whose class is one of ``classes`` is placed at its pose with weight 1
    (:func:`placed_means`): those classes' averages, half-set averages and FSC curves are
    replaced; every class's ``alpha`` follows the counts of ``results``; the band is left
    to the caller. ``label``: the progress line.
    """
    placed = [(r.index, r.klass, r.rotation, r.shift) for r in results if r.klass in classes]
    means, by_half, curves, _ = placed_means(executor, table, placed, halves, config,
                                             batch_size, label)  # fmt: skip
    averages, fsc_curves = state.averages.copy(), state.fsc.copy()
    averages[classes] = means[classes].astype(averages.dtype, copy=False)
    fsc_curves[classes] = curves[classes]
    half_averages = state.half_averages
    if half_averages is not None:
        half_averages = half_averages.copy()
        half_averages[:, classes] = by_half[:, classes].astype(half_averages.dtype, copy=False)
    counts = np.bincount([r.klass for r in results], minlength=config.classes)
    return replace(state, averages=averages, half_averages=half_averages, fsc=fsc_curves,
                   alpha=counts / counts.sum())  # fmt: skip


def placed_means(
    executor: Executor,
    table: ParticleTable,
    placed: list[tuple[int, int, np.ndarray, np.ndarray]],
    halves: np.ndarray,
    config: RunConfig,
    batch_size: int,
    label: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class averages of particles placed by hand: ``(index, class, rotation, shift)`` each.

    The sums over the executor (tasks of ``batch_size``, progress ``label``), then per class
    the wedge-compensated mean, joint `(K, ...)` and per half-set `(2, K, ...)`, the FSC
    between the halves `(K, N//2 + 1)` and the particles per half and class `(2, K)`.
    """
    K = config.classes
    items = [(leaf, *p) for leaf, p in enumerate(placed)]
    tasks = [
        Batch.of(table, [it[1] for it in part], halves, len(items), tuple(part))
        for part in (items[s : s + batch_size] for s in range(0, len(items), batch_size))
    ]
    _, total = reduce(executor, map_assigned, (K, config.particle_mask_radius), tasks, label)
    S, W = total.dense()  # (2, K, ...)
    means = np.stack(
        [compensated_mean(S[:, k].sum(0), W[:, k].sum(0), total.level[:, k].sum(0))
         for k in range(K)]
    )  # fmt: skip
    by_half = np.stack(
        [[compensated_mean(S[h, k], W[h, k], total.level[h, k]) for k in range(K)]
         for h in (0, 1)]
    )  # fmt: skip
    curves = np.stack([fsc(by_half[0, k], by_half[1, k]) for k in range(K)])
    return means, by_half, curves, total.n
