"""Starting classes from the particles' own variance: split along the main components.

With one consensus and particles aligned to it (their prior poses), ``K`` classes started
from random subsets of the particles differ by noise only, and EM from such a symmetric
start tends to keep them alike (measured in ``benchmarks/workflows/STATES.md``). Here the
classes start from where the particles differ most:

1. each particle ``i`` is moved into the consensus frame at its pose (:func:`class_frame`:
   ``Y_i`` and its weights ``w_i``, ``w_i²`` at the Fourier points up to ``band``);
2. the consensus is their wedge-compensated mean ``A = sum w Y / max(sum w², 0.1 n)``,
   FSC-weighted by the two random halves (DESIGN.md 3.6);
3. each particle's residual is ``r_i = w_i Y_i - s_i w_i² A``: the data minus the consensus
   as the particle saw it (its own missing wedge and CTF weight), with the amplitude
   ``s_i >= 0`` that fits it best (as the scaled likelihood); the residuals are whitened by
   their mean power per shell, so each shell counts by its signal-to-noise ratio;
4. in real space, multiplied by the focus mask (the region whose differences decide the
   classes; default the reference mask), the residuals' principal components
   (:func:`principal_scores`) and ``K``-means on the first ``K - 1`` scores give the
   classes (:func:`cluster_scores`; for ``K = 2`` the best split of the first score).

Everything is deterministic (no random draw for ``K <= 2``; ``K``-means from a fixed start
along the first component), unless the components come from a random share of the
particles (:func:`split_sample`, the stability replicates). Memory: the residuals at the
band's points, `(n, P)` complex64 (``P`` about ``2.1 band^3``), and the masked residuals,
`(n, V)` float32 with ``V`` the focus mask's voxels; for very large sets a subset of
particles would do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.cluster.vq import kmeans2

from faml.align.fourier_rotation import padded_spectrum
from faml.ml.em import load_particle
from faml.ml.fourier import band_from_fsc, fsc, fsc_filter
from faml.ml.stats import class_frame, frame_points

__all__ = [
    "SplitResult",
    "cluster_scores",
    "principal_scores",
    "split_classes",
    "split_model",
    "split_sample",
]

logger = logging.getLogger(__name__)

MIN_BAND = 4
"""Fewest Fourier shells the residuals of a split keep."""


@dataclass(frozen=True)
class SplitResult:
    """Classes of a split and what decided them.

    Attributes
    ----------
    labels
        `(n,)` 0-based class of each particle, classes ordered by size (largest first).
    scores
        `(n, K - 1)` the particles' principal component scores (whitened units).
    explained
        `(K - 1,)` share of the residuals' variance (in the focus) each component holds.
    band
        Fourier shell limit of the residuals.
    """

    labels: np.ndarray
    scores: np.ndarray
    explained: np.ndarray
    band: int


def principal_scores(
    vectors: np.ndarray, count: int, sample: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(n, count)` scores on the first principal components of `(n, V)` ``vectors``.

    The components are those of the rows ``sample`` (indices; ``None``: all), centred over
    them; computed from the smaller of the Gram matrix and the `(V, V)` covariance. Every
    row is scored (minus the sample's mean). Returns the scores and each component's share
    of the sample's variance. The sign of each component is fixed (its largest-magnitude
    score positive).
    """
    v = np.asarray(vectors, dtype=np.float64)
    n = v.shape[0]
    fit = v if sample is None else v[np.asarray(sample)]
    mean = fit.mean(axis=0, keepdims=True)
    fit = fit - mean
    m, dim = fit.shape
    count = int(min(count, m - 1, dim)) if m > 1 else 0
    if count < 1:
        return np.zeros((n, 0)), np.zeros(0)
    if m <= dim:
        values, vecs = np.linalg.eigh(fit @ fit.T)
        order = np.argsort(values)[::-1][:count]
        axes = fit.T @ vecs[:, order] / np.sqrt(np.maximum(values[order], 1e-300))[None]
    else:
        values, vecs = np.linalg.eigh(fit.T @ fit)
        order = np.argsort(values)[::-1][:count]
        axes = vecs[:, order]
    scores = (v - mean) @ axes
    total = max(float(np.sum(fit * fit)), 1e-300)
    explained = np.maximum(values[order], 0.0) / total
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(count)])
    return scores * np.where(signs == 0, 1.0, signs)[None], explained


def cluster_scores(scores: np.ndarray, classes: int, iterations: int = 50) -> np.ndarray:
    """`(n,)` labels of ``classes`` clusters of `(n, d)` ``scores`` (sum of squares least).

    ``classes == 2``: the exact best split of the first score at a threshold (1D 2-means).
    More: Lloyd's ``K``-means started at quantiles of the first score. Labels are ordered
    by cluster size (0 the largest).
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    if classes < 2 or n < classes:
        return np.zeros(n, dtype=np.int64)
    if classes == 2:
        order = np.argsort(s[:, 0], kind="stable")
        x = s[order, 0]
        csum, csq = np.cumsum(x), np.cumsum(x * x)
        left = np.arange(1, n)
        sse_left = csq[:-1] - csum[:-1] ** 2 / left
        right = n - left
        sse_right = (csq[-1] - csq[:-1]) - (csum[-1] - csum[:-1]) ** 2 / right
        cut = int(np.argmin(sse_left + sse_right)) + 1
        labels = np.zeros(n, dtype=np.int64)
        labels[order[cut:]] = 1
    else:
        quantiles = (np.arange(classes) + 0.5) / classes
        order = np.argsort(s[:, 0], kind="stable")
        centres = s[order[(quantiles * n).astype(int)]]
        # scipy's Lloyd iterations from those centres (an emptied cluster keeps its centre)
        _, labels = kmeans2(s, centres, iter=iterations, minit="matrix", missing="warn")
    sizes = np.bincount(labels, minlength=classes)
    rank = np.argsort(-sizes, kind="stable")
    relabel = np.empty(classes, dtype=np.int64)
    relabel[rank] = np.arange(classes)
    return relabel[labels]


def _frame_data(table, rotations, shifts, band, mask_radius):
    """Per particle ``Y`` `(n, P)` complex64 and ``w``, ``w²`` `(n, 2, P)` float32 at its pose."""
    n = len(rotations)
    points = frame_points(table.box, band)[1].size
    ys = np.empty((n, points), dtype=np.complex64)
    ws = np.empty((n, 2, points), dtype=np.float32)
    for i in range(n):
        vol, wedge = load_particle(table, i, mask_radius)
        y, w = class_frame(padded_spectrum(vol), wedge, rotations[i][None],
                           np.asarray(shifts[i], dtype=np.float64)[None], band)  # fmt: skip
        ys[i], ws[i] = y[0], w[0]
    return ys, ws


def _dense(values: np.ndarray, box: int, band: int) -> np.ndarray:
    """`(..., P)` values at ``frame_points(box, band)`` on the `(..., N, N, N//2 + 1)` grid."""
    flat = frame_points(box, band)[1]
    out = np.zeros((*values.shape[:-1], box * box * (box // 2 + 1)), dtype=np.complex128)
    out[..., flat] = values
    return out.reshape(*values.shape[:-1], box, box, box // 2 + 1)


def split_classes(
    table,
    rotations: np.ndarray,
    shifts: np.ndarray,
    classes: int,
    focus: np.ndarray,
    band: int | None,
    halves: np.ndarray,
    mask_radius: float | None = None,
    sample: np.ndarray | None = None,
) -> SplitResult:
    """``classes`` starting classes of the particles at their poses (module docstring).

    Parameters
    ----------
    table
        The particles (:class:`~faml.io.particles.ParticleTable`).
    rotations, shifts
        `(n, 3, 3)`, `(n, 3)` each particle's pose (particle = ``T_(R, t)`` consensus).
    classes
        ``K``.
    focus
        `(N, N, N)` values 0..1: where the residuals are compared (the focus mask, or the
        reference mask without one).
    band
        Outermost Fourier shell of the residuals; ``None``: where the FSC between the
        consensus's two halves first drops below 0.143 (at least :data:`MIN_BAND`).
    halves
        `(n,)` 0/1 the run's random halves (the consensus's FSC weighting).
    mask_radius
        :attr:`RunConfig.particle_mask_radius`.
    sample
        Indices of the particles whose residuals define the components (``None``: all);
        every particle is placed by its scores (:attr:`Tuning.split_share`).
    """
    box = table.box
    top = box // 2 - 1 if band is None else int(np.clip(band, 2, box // 2 - 1))
    _, _, shell, mult = frame_points(box, top)
    ys, ws = _frame_data(table, rotations, shifts, top, mask_radius)
    n = len(ys)
    # the consensus: wedge-compensated mean, weighted by the FSC of the two halves
    wy = ws[:, 0] * ys
    sums = [wy[halves == h].sum(axis=0) for h in (0, 1)]
    weights = [ws[halves == h, 1].sum(axis=0) for h in (0, 1)]
    counts = [max(int(np.sum(halves == h)), 1) for h in (0, 1)]
    half_means = [s / np.maximum(w, 0.1 * c) for s, w, c in zip(sums, weights, counts, strict=True)]
    curve = fsc(_dense(half_means[0], box, top), _dense(half_means[1], box, top))
    band = top if band is not None else int(np.clip(band_from_fsc(curve), MIN_BAND, top))
    filt = fsc_filter(curve, max(band_from_fsc(curve), 2))
    consensus = (sums[0] + sums[1]) / np.maximum(weights[0] + weights[1], 0.1 * n)
    consensus = consensus * filt[np.minimum(shell, box // 2)]
    # residuals: the data minus the consensus as each particle saw it, amplitude fitted
    model = ws[:, 1] * consensus[None]
    num = np.sum(mult * (np.conj(model) * wy).real, axis=1)
    den = np.maximum(np.sum(mult * (model.real**2 + model.imag**2), axis=1), 1e-300)
    scale = np.maximum(num / den, 0.0)
    resid = wy - scale[:, None] * model
    power = np.bincount(shell, weights=(mult * (resid.real**2 + resid.imag**2)).sum(axis=0),
                        minlength=box // 2 + 2)  # fmt: skip
    seen = np.bincount(shell, weights=(mult * ws[:, 1]).sum(axis=0), minlength=box // 2 + 2)
    noise = np.where(seen > 0, power / np.maximum(seen, 1e-300), 1.0)
    resid = resid / np.sqrt(np.maximum(noise[shell], 1e-300))[None]
    resid[:, shell > band] = 0.0  # the discarded bin (shell 0, beyond the band) included
    support = np.flatnonzero(focus.reshape(-1) > 1e-3)
    m = focus.reshape(-1)[support]
    vectors = np.empty((n, support.size), dtype=np.float32)
    for start in range(0, n, 256):
        part = _dense(resid[start : start + 256], box, top)
        vols = scipy.fft.irfftn(part, s=(box,) * 3, axes=(-3, -2, -1), workers=1)
        vectors[start : start + 256] = vols.reshape(len(part), -1)[:, support] * m[None]
    scores, explained = principal_scores(vectors, classes - 1, sample)
    labels = cluster_scores(scores, classes)
    logger.info(
        "split into %d classes along the residuals' main components (band %d, %d focus "
        "voxels): %s particles, the components hold %s of the variance",
        classes, band, support.size, np.bincount(labels, minlength=classes).tolist(),
        np.round(explained, 3).tolist(),
    )  # fmt: skip
    return SplitResult(labels, scores, explained, band)


def split_model(state, table, labels: np.ndarray, halves: np.ndarray, executor, batch_size: int,
                config, min_band: int):  # fmt: skip
    """The model of a run's start with its classes from a split (``labels``, 0-based).

    Each particle placed in its class at its prior pose (``table.prior_rotations``,
    ``prior_shifts``); class ``k``'s average (and half averages, FSC) is the
    wedge-compensated mean of its particles, ``alpha`` their shares, the noise and ``xi``
    those of ``state``; the band the classes' FSC gives (at least ``min_band``).
    """
    from faml.ml.mstep import model_band
    from faml.ml.reseed import placed_means
    from faml.ml.state import ModelState

    K, n = config.classes, len(table)
    placed = [(i, int(labels[i]), table.prior_rotations[i], table.prior_shifts[i])
              for i in range(n)]  # fmt: skip
    averages, half_averages, curves, counts = placed_means(
        executor, table, placed, halves, config, batch_size, "split classes"
    )
    averages = averages.astype(state.averages.dtype, copy=False)
    half_averages = half_averages.astype(state.averages.dtype, copy=False)
    alpha = np.bincount(labels, minlength=K) / n
    band = model_band(curves, min_band, table.box)
    kept = half_averages if config.gold_standard else None
    return ModelState(0, averages, curves, band, alpha, state.sigma2, state.xi, kept), counts


def split_sample(n: int, config) -> np.ndarray | None:
    """The particles whose residuals define the split; ``None``: all of them.

    :attr:`~faml.ml.config.Tuning.split_share` of the ``n``, drawn with ``config.seed``.
    """
    share = config.tuning.split_share
    if share >= 1.0:
        return None
    rng = np.random.default_rng([int(config.seed), 23])
    size = min(n, max(2, int(round(share * n))))
    return np.sort(rng.choice(n, size=size, replace=False))
