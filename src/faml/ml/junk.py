"""Junk classes: where picks that are not the target gather (``faml run --junk J``).

Template matching and manual picking bring other proteins, membrane patches, ice and empty
boxes with the target. The last ``RunConfig.junk_classes`` classes of a run are junk
classes, filled once, after the last iteration, by :func:`screen_junk`:

1. The iterations compare the target classes only (the junk classes have no candidates,
   :func:`faml.ml.em.process_particle`), so the target averages are refined as without
   ``--junk``. At 30% junk the K = 1 map of all picks equals the one of the target's
   particles alone (``benchmarks/heterogeneity``: masked correlation 0.925 / 0.924 and
   0.923 / 0.929 on two simulations). Junk classes refined alongside instead (opened after
   the FA warm-up with the worst-fitting third) became mixtures: 91% of the junk out of
   the target class on one simulation, but on the second they took half of the target's
   particles and left 62% of the junk in (its map 0.823 against 0.929).
2. Every particle's best correlation with a target class in the last iteration
   (:attr:`faml.ml.em.ParticleResult.target_fit`) is tested for two populations: a
   two-component Gaussian mixture (scikit-learn), accepted when it fits better than one
   Gaussian beyond chance (parametric bootstrap of the likelihood ratio, p <
   :data:`SCREEN_P`) and its components are separated by Ashman's D >=
   :data:`SCREEN_SEPARATION` (BIC reported beside them). The
   particles that the lower component claims with posterior >= :data:`SCREEN_POSTERIOR`
   go to the junk classes (split among them along the main components of their residuals
   when there are several, :func:`faml.ml.split.split_classes`), at their target poses;
   the target classes' and the junk classes' averages are rebuilt from the particles they
   then hold (:func:`faml.ml.reseed.rebuilt`).
3. The run's band comes from the target classes only (:func:`target_band`), and a junk
   class is never re-seeded (:func:`faml.ml.reseed.reseed`): empty is a result.

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
    "SCREEN_BOOTSTRAP",
    "SCREEN_MIN_PARTICLES",
    "SCREEN_P",
    "SCREEN_POSTERIOR",
    "SCREEN_SEPARATION",
    "JunkScreen",
    "junk_indices",
    "screen_junk",
    "target_band",
]

logger = logging.getLogger(__name__)

SCREEN_POSTERIOR = 0.8
"""The lower population's posterior from which :func:`screen_junk` moves a particle to the
junk. Chosen on the crowded junk set of ``benchmarks/heterogeneity`` (seed 1, the
correlations of a target-only refinement of all picks): 0.5 / 0.8 took 100 / 100% of the
junk and 21 / 14% of the target's particles; on seed 2 (E-step correlations) 98 / 96% and
22 / 9%."""

SCREEN_SEPARATION = 2.0
"""Ashman's D, ``sqrt(2) |mu_1 - mu_2| / sqrt(s_1^2 + s_2^2)``, from which two Gaussian
components are taken for two populations (D > 2: a clean separation, Ashman et al. 1994).
Measured: 2.8-3.7 on the junk sets (30% junk), 1.2 on a set of the target alone."""

SCREEN_P = 0.1
"""The bootstrap p-value of two components against one below which (with Ashman's D >=
:data:`SCREEN_SEPARATION`) they are taken for two populations. Measured: 0.01-0.02 on the
crowded junk sets (150 picks), 0.08 on the planted set of ``tests/test_junk.py`` (36, D
3.1); 0.42 on the target alone (100 particles, D 1.0) and 0.09 / 0.62 / 0.87 on three draws
of 36 from one Gaussian (D 1.8 / 1.9 / 2.25): neither test alone separates these."""

SCREEN_BOOTSTRAP = 99
"""Data sets drawn from the one-Gaussian fit for the null distribution of the likelihood
ratio (McLachlan's bootstrap test of the number of components)."""

SCREEN_MIN_PARTICLES = 30
"""Fewer particles with a measured target fit: no screen (a mixture of two populations is
not fitted to fewer)."""


@dataclass(frozen=True)
class JunkScreen:
    """What :func:`screen_junk` found (``run.json`` ``junk_screen``).

    Attributes
    ----------
    applied
        Whether particles were moved to the junk classes.
    reason
        One sentence: what was decided and on what evidence.
    separation
        Ashman's D of the two components (NaN: not fitted).
    p_value
        Bootstrap p-value of two components against one (NaN: not fitted).
    bic
        `(2,)` BIC of one and of two Gaussian populations of the correlations (lower is
        better); empty when not fitted.
    means, sds, weights
        The two components' means, standard deviations and shares, the lower first.
    moved
        Particles moved from the target classes to the junk classes.
    """

    applied: bool
    reason: str
    separation: float = float("nan")
    p_value: float = float("nan")
    bic: tuple[float, ...] = ()
    means: tuple[float, ...] = ()
    sds: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    moved: int = 0

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (a figure not fitted: ``None``)."""
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v
                for k, v in asdict(self).items()}  # fmt: skip


def screen_junk(
    executor, table, state: ModelState, results: list, config: RunConfig, halves: np.ndarray,
    batch_size: int, mask: np.ndarray,
) -> tuple[ModelState, list, JunkScreen]:  # fmt: skip
    """The junk screen after the last iteration (module docstring, item 2).

    Returns the state with the target and junk classes' averages (half averages, FSC)
    rebuilt and ``alpha`` from the counts, the results with the moved particles in the
    junk classes, and what was found. Without junk classes, with fewer than
    :data:`SCREEN_MIN_PARTICLES` measured correlations or without two separated
    populations, the inputs come back unchanged. ``executor``, ``halves``,
    ``batch_size``: where and how the averages are rebuilt; ``mask``: the run's reference
    mask (where several junk classes split their particles); the mixture is seeded with
    ``config.seed``.
    """
    from faml.ml.reseed import rebuilt

    junk = list(junk_indices(config))
    if not junk:
        return state, results, JunkScreen(False, "no junk classes")
    fits = np.array([r.target_fit for r in results], dtype=np.float64)
    measured = np.isfinite(fits)
    if measured.sum() < SCREEN_MIN_PARTICLES:
        reason = (f"not screened: {int(measured.sum())} particles have a measured correlation "
                  f"with the targets (at least {SCREEN_MIN_PARTICLES} needed)")  # fmt: skip
        logger.info("junk screen: %s", reason)
        return state, results, JunkScreen(False, reason)
    x = fits[measured]
    seed = int(config.seed) % (2**32)
    ratio, one, two = _mixtures(x, seed)
    p_value = _bootstrap_p(ratio, one, len(x), seed)
    order = np.argsort(two.means_.ravel())
    mu = two.means_.ravel()[order]
    sd = np.sqrt(two.covariances_.ravel()[order])
    separation = float(np.sqrt(2.0) * (mu[1] - mu[0]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2))
    found = dict(separation=separation, p_value=p_value,
                 bic=(float(one.bic(x[:, None])), float(two.bic(x[:, None]))),
                 means=tuple(map(float, mu)), sds=tuple(map(float, sd)),
                 weights=tuple(map(float, two.weights_[order])))  # fmt: skip
    head = (f"correlations with the targets: two components at {mu[0]:.3f} and {mu[1]:.3f} "
            f"(shares {found['weights'][0]:.2f} / {found['weights'][1]:.2f}, Ashman's D "
            f"{separation:.2f}, bootstrap p {p_value:.3f}; BIC {found['bic'][1]:.1f} against "
            f"{found['bic'][0]:.1f} for one)")  # fmt: skip
    if separation < SCREEN_SEPARATION or p_value >= SCREEN_P:
        reason = (f"{head}: one population (needs D >= {SCREEN_SEPARATION} and p < "
                  f"{SCREEN_P}), no particle moved")  # fmt: skip
        logger.info("junk screen: %s", reason)
        return state, results, JunkScreen(False, reason, **found)
    low = np.zeros(len(results))
    low[measured] = two.predict_proba(x[:, None])[:, order[0]]
    targets = list(range(config.classes - len(junk)))
    out = [r for r in results if r.klass in targets and low[r.index] >= SCREEN_POSTERIOR]
    counts = np.bincount([r.klass for r in results], minlength=config.classes)
    left = counts - np.bincount([r.klass for r in out], minlength=config.classes)
    if not out or any(left[k] < 2 for k in targets):
        why = ("no particle in the lower one" if not out
               else "moving them would empty a target class")  # fmt: skip
        reason = f"{head}, but {why}: no particle moved"
        logger.info("junk screen: %s", reason)
        return state, results, JunkScreen(False, reason, **found)
    labels = _junk_labels(table, out, len(junk), config, halves, mask)
    results = list(results)
    for r, label in zip(out, labels, strict=True):  # at its target pose
        results[r.index] = replace(r, klass=junk[label])
    state = rebuilt(executor, table, state, results, targets + junk, halves, config,
                    batch_size, "rebuilding the classes after the junk screen")  # fmt: skip
    reason = (f"{head}: the {len(out)} target-class particles in the lower one (posterior >= "
              f"{SCREEN_POSTERIOR}) moved to junk class(es) "
              f"{', '.join(str(k + 1) for k in junk)}")  # fmt: skip
    logger.info("junk screen: %s", reason)
    screened = JunkScreen(True, reason, moved=len(out), **found)
    return target_band(state, config, table.box), results, screened


def _mixtures(x: np.ndarray, seed: int):
    """``(ratio, one, two)``: one- and two-component Gaussian mixtures of `(n,)` values.

    ``ratio``: the likelihood ratio statistic ``2 (log L2 - log L1)``.
    """
    from sklearn.mixture import GaussianMixture

    data = np.asarray(x, dtype=np.float64)[:, None]
    one = GaussianMixture(1, random_state=seed).fit(data)
    two = GaussianMixture(2, n_init=3, random_state=seed).fit(data)
    return 2.0 * len(data) * (two.score(data) - one.score(data)), one, two


def _bootstrap_p(ratio: float, one, n: int, seed: int) -> float:
    """The p-value of ``ratio`` under one Gaussian.

    :data:`SCREEN_BOOTSTRAP` draws of ``n`` values from ``one``, each fitted as the data.
    """
    rng = np.random.default_rng([seed, 31])
    mean, sd = float(one.means_[0, 0]), float(np.sqrt(one.covariances_.ravel()[0]))
    null = [_mixtures(rng.normal(mean, sd, n), seed)[0] for _ in range(SCREEN_BOOTSTRAP)]
    return float((1 + np.sum(np.asarray(null) >= ratio)) / (SCREEN_BOOTSTRAP + 1))


def _junk_labels(table, out: list, count: int, config: RunConfig, halves, mask) -> np.ndarray:
    """`(len(out),)` which of the ``count`` junk classes each screened particle goes to.

    One junk class: all to it. More: the split of their residuals at their target poses
    (:func:`faml.ml.split.split_classes`, inside the run's reference ``mask``), when there
    are at least two per class; else dealt in turn.
    """
    from faml.ml.split import split_classes

    n = len(out)
    if count == 1:
        return np.zeros(n, dtype=np.int64)
    if n < 2 * count:
        return np.arange(n) % count
    rows = np.array([r.index for r in out])
    split = split_classes(table.subset(rows), np.stack([r.rotation for r in out]),
                          np.stack([r.shift for r in out]), count, mask, None,
                          np.asarray(halves)[rows], config.particle_mask_radius)  # fmt: skip
    return split.labels


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
