"""Junk classes: where picks that are not the target gather (``faml run --junk J``).

Template matching and manual picking bring other proteins, membrane patches, ice and empty
boxes with the target. The last ``RunConfig.junk_classes`` classes of a run are junk
classes: ordinary classes (averages refined like the targets') with three differences.

1. They wait for the end of the FA warm-up (:attr:`faml.ml.phase.Phase.junk_open`). A
   junk class open from the start takes random picks, and the warm-up's hard assignment
   by the best correlation empties it for good (prior 0, average 0) when the target
   average is the sharper one: measured on the crowded junk set of
   ``benchmarks/heterogeneity``, all 150 picks ended in the target class.
2. After the warm-up's last M-step :func:`open_junk` seeds them with the picks that fit
   the target classes worst (the lowest best correlation); from then on the likelihood
   decides pick by pick. Junk classes held at a few shells (blobs of the particles' size)
   lost every pick to the target even at SNR 0.5 (``tests/test_junk.py``): a blob explains
   another protein's low-resolution shape worse than the target at its best-fitting pose
   does, so the junk classes keep their own detail.
3. The run's band comes from the target classes only (:func:`target_band`), and a junk
   class is never re-seeded (:func:`faml.ml.reseed.reseed`): empty is a result.

The user drops the junk classes with ``--select-classes`` (:mod:`faml.cli`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from faml.ml.config import RunConfig
from faml.ml.mstep import model_band
from faml.ml.state import ModelState

__all__ = ["JUNK_SEED_SHARE", "junk_indices", "open_junk", "target_band"]

logger = logging.getLogger(__name__)

JUNK_SEED_SHARE = 1 / 3
"""The share of the particles (the worst-fitting) that seeds the junk classes when they
open; the likelihood moves them on from there."""


def junk_indices(config: RunConfig) -> range:
    """The 0-based indices of the junk classes (the last ``config.junk_classes``)."""
    return range(config.classes - config.junk_classes, config.classes)


def target_band(state: ModelState, config: RunConfig, box: int) -> ModelState:
    """``state`` with its band from the target classes' FSC curves alone.

    (:func:`faml.ml.mstep.model_band`); ``state`` itself when the run has no junk classes.
    """
    if not config.junk_classes:
        return state
    targets = state.fsc[: config.classes - config.junk_classes]
    return replace(state, band=model_band(targets, config.tuning.min_band, box))


def open_junk(executor, table, state: ModelState, results: list, config: RunConfig,
              halves: np.ndarray, batch_size: int) -> tuple[ModelState, list]:  # fmt: skip
    """``state`` and ``results`` with the junk classes seeded, after the FA warm-up.

    The :data:`JUNK_SEED_SHARE` of the particles with the lowest fit (FA: the best
    correlation with their target class) are dealt to the junk classes in turn, worst first,
    at their current poses; each junk class's average is the wedge-compensated mean of its
    particles (:func:`faml.ml.reseed.placed_means`); ``alpha`` follows the new counts, the
    band the targets' (:func:`target_band`). ``executor``, ``batch_size``: where and in what
    tasks the means are summed.
    """
    from faml.ml.reseed import placed_means

    junk = list(junk_indices(config))
    if not junk:
        return state, results
    n = len(results)
    fits = np.array([r.fit for r in results])
    count = max(len(junk), int(round(JUNK_SEED_SHARE * n)))
    worst = np.argsort(fits, kind="stable")[:count]
    to_class = {int(i): junk[rank % len(junk)] for rank, i in enumerate(worst)}
    results = [replace(r, klass=to_class[r.index]) if r.index in to_class else r for r in results]
    placed = [(r.index, r.klass, r.rotation, r.shift) for r in results if r.klass in junk]
    means, by_half, curves, _ = placed_means(executor, table, placed, halves, config,
                                             batch_size, "opening the junk classes")  # fmt: skip
    averages, fsc_curves = state.averages.copy(), state.fsc.copy()
    averages[junk], fsc_curves[junk] = means[junk], curves[junk]
    half_averages = state.half_averages
    if half_averages is not None:
        half_averages = half_averages.copy()
        half_averages[:, junk] = by_half[:, junk]
    counts = np.bincount([r.klass for r in results], minlength=config.classes)
    logger.info(
        "junk classes %s opened after the warm-up with the %d worst-fitting particles",
        ", ".join(str(k + 1) for k in junk), len(worst),
    )  # fmt: skip
    opened = replace(state, averages=averages, half_averages=half_averages, fsc=fsc_curves,
                     alpha=counts / counts.sum())  # fmt: skip
    return target_band(opened, config, table.box), results
