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
4. After the last iteration, :func:`screen_junk` tests the particles' best correlations
   with the target classes (:attr:`faml.ml.em.ParticleResult.target_fit`) for two
   populations. The junk classes refine into mixtures of whatever was picked, a weaker
   model of each protein than the target is of itself at its best-fitting pose, so some
   junk stays in the target classes by likelihood (16% on the crowded junk set); its
   correlation with the target is still low. When a two-component Gaussian mixture of the
   correlations beats one by BIC, target-class particles that the low component claims
   with posterior >= :data:`SCREEN_POSTERIOR` move to the last junk class, junk-class
   particles that the high one claims so move back to their best target class, and the
   target averages are rebuilt from the particles they then hold.

The user drops the junk classes with ``--select-classes`` (:mod:`faml.cli`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np

from faml.ml.config import RunConfig
from faml.ml.mstep import model_band
from faml.ml.state import ModelState

__all__ = [
    "JUNK_SEED_SHARE",
    "SCREEN_MIN_PARTICLES",
    "SCREEN_POSTERIOR",
    "JunkScreen",
    "junk_indices",
    "open_junk",
    "screen_junk",
    "target_band",
]

logger = logging.getLogger(__name__)

JUNK_SEED_SHARE = 1 / 3
"""The share of the particles (the worst-fitting) that seeds the junk classes when they
open; the likelihood moves them on from there."""


SCREEN_POSTERIOR = 0.8
"""The posterior from which :func:`screen_junk` moves a particle: a target-class particle
that the low population claims with at least this out to the junk, a junk-class particle
that the high one claims so back to its best target class. Chosen on the crowded junk set
of ``benchmarks/heterogeneity`` (``--junk 2``, seed 1; the last iteration's correlations):
0.5 / 0.8 / 0.95 took 93 / 91 / 89% of the junk out of the target class and kept 88 / 88
/ 86% of the target's particles in it."""

SCREEN_MIN_PARTICLES = 30
"""Fewer particles with a measured target fit: no screen (a mixture of two populations is
not fitted to fewer)."""


@dataclass(frozen=True)
class JunkScreen:
    """What :func:`screen_junk` found (``run.json`` ``junk_screen``).

    Attributes
    ----------
    applied
        Whether particles were moved (two populations supported and some claimed).
    reason
        One sentence: what was decided and on what evidence.
    bic
        `(2,)` BIC of one and of two Gaussian populations of the correlations (lower is
        better); empty when not fitted.
    means, sds, weights
        The two populations' means, standard deviations and shares, the lower first.
    moved
        Particles moved from the target classes to the junk class.
    returned
        Particles moved from the junk classes back to a target class.
    """

    applied: bool
    reason: str
    bic: tuple[float, ...] = ()
    means: tuple[float, ...] = ()
    sds: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    moved: int = 0
    returned: int = 0

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def screen_junk(
    executor,
    table,
    state: ModelState,
    results: list,
    config: RunConfig,
    halves: np.ndarray,
    batch_size: int,
) -> tuple[ModelState, list, JunkScreen]:
    """The junk screen after the last iteration (module docstring, item 4).

    The correlations are every particle's best with a target class in the last iteration
    (junk-class particles included: they are the low population's clearest members). A
    Gaussian mixture of one and of two components is fitted (scikit-learn, seeded with
    ``config.seed``); with two preferred by BIC, the target-class particles that the lower
    component claims with posterior >= :data:`SCREEN_POSTERIOR` move to the last junk class
    (keeping their target pose; the junk averages are not rebuilt), the junk-class
    particles that the upper one claims so move to their best target class at that fit's
    pose, and the target classes' averages (their half averages and FSC) are rebuilt from
    their particles (:func:`faml.ml.reseed.rebuilt`), ``alpha`` from the counts. Without
    junk classes, or with fewer than :data:`SCREEN_MIN_PARTICLES` measured correlations,
    nothing changes.
    """
    from sklearn.mixture import GaussianMixture

    from faml.ml.reseed import rebuilt

    junk = list(junk_indices(config))
    if not junk:
        return state, results, JunkScreen(False, "no junk classes")
    fits = np.array([r.target_fit for r in results], dtype=np.float64)
    measured = np.isfinite(fits)
    if measured.sum() < SCREEN_MIN_PARTICLES:
        reason = (f"not screened: {int(measured.sum())} particles have a measured correlation "
                  f"with the targets (at least {SCREEN_MIN_PARTICLES} needed)")  # fmt: skip
        logger.info("junk screen %s", reason)
        return state, results, JunkScreen(False, reason)
    x = fits[measured][:, None]
    seed = int(config.seed) % (2**32)
    one = GaussianMixture(1, random_state=seed).fit(x)
    two = GaussianMixture(2, n_init=5, random_state=seed).fit(x)
    bic = (float(one.bic(x)), float(two.bic(x)))
    order = np.argsort(two.means_.ravel())
    means = tuple(float(m) for m in two.means_.ravel()[order])
    sds = tuple(float(s) for s in np.sqrt(two.covariances_.ravel()[order]))
    weights = tuple(float(w) for w in two.weights_[order])
    found = dict(bic=bic, means=means, sds=sds, weights=weights)
    if bic[1] >= bic[0]:
        reason = (f"one population of correlations with the targets (BIC {bic[0]:.1f} for one, "
                  f"{bic[1]:.1f} for two): no particle moved")  # fmt: skip
        logger.info("junk screen: %s", reason)
        return state, results, JunkScreen(False, reason, **found)
    low = np.full(len(results), np.nan)
    low[measured] = two.predict_proba(x)[:, order[0]]
    targets = set(range(config.classes - len(junk)))
    out = [r for r in results if r.klass in targets and low[r.index] >= SCREEN_POSTERIOR]
    back = [r for r in results if r.klass not in targets and r.target_class >= 0
            and low[r.index] <= 1.0 - SCREEN_POSTERIOR]  # fmt: skip
    counts = np.bincount([r.klass for r in results], minlength=config.classes)
    left = counts - np.bincount([r.klass for r in out], minlength=config.classes)
    head = (f"two populations of correlations with the targets (means {means[0]:.3f} and "
            f"{means[1]:.3f}, shares {weights[0]:.2f} and {weights[1]:.2f}; BIC {bic[1]:.1f} "
            f"against {bic[0]:.1f} for one)")  # fmt: skip
    if not (out or back) or any(left[k] < 2 for k in targets):
        why = ("every particle is already where the screen puts it" if not (out or back)
               else "moving them would empty a target class")  # fmt: skip
        reason = f"{head}, but {why}: no particle moved"
        logger.info("junk screen: %s", reason)
        return state, results, JunkScreen(False, reason, **found)
    results = list(results)
    for r in out:  # its pose stays the target's: the junk average is not rebuilt
        results[r.index] = replace(r, klass=junk[-1])
    for r in back:
        results[r.index] = replace(r, klass=r.target_class, rotation=r.target_rotation,
                                   shift=r.target_shift)  # fmt: skip
    state = rebuilt(executor, table, state, results, sorted(targets), halves, config,
                    batch_size, "rebuilding the target classes after the junk screen")  # fmt: skip
    reason = (f"{head}: {len(out)} target-class particles in the lower one (posterior >= "
              f"{SCREEN_POSTERIOR}) moved to junk class {junk[-1] + 1}, {len(back)} junk-class "
              f"particles in the upper one (posterior >= {SCREEN_POSTERIOR}) back to their best "
              f"target class")  # fmt: skip
    logger.info("junk screen: %s", reason)
    screened = JunkScreen(True, reason, moved=len(out), returned=len(back), **found)
    return target_band(state, config, table.box), results, screened


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
    from faml.ml.reseed import rebuilt

    junk = list(junk_indices(config))
    if not junk:
        return state, results
    n = len(results)
    fits = np.array([r.fit for r in results])
    count = max(len(junk), int(round(JUNK_SEED_SHARE * n)))
    worst = np.argsort(fits, kind="stable")[:count]
    to_class = {int(i): junk[rank % len(junk)] for rank, i in enumerate(worst)}
    results = [replace(r, klass=to_class[r.index]) if r.index in to_class else r for r in results]
    opened = rebuilt(executor, table, state, results, junk, halves, config, batch_size,
                     "opening the junk classes")  # fmt: skip
    logger.info(
        "junk classes %s opened after the warm-up with the %d worst-fitting particles",
        ", ".join(str(k + 1) for k in junk), len(worst),
    )  # fmt: skip
    return target_band(opened, config, table.box), results
