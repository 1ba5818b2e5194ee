"""Focused classification: class averages that differ only inside a focus region.

A focus mask ``m`` (`(N, N, N)`, values 0..1, the particles' box; ``faml run --focus-mask``,
the mask of RELION's focused Class3D) names the region whose differences decide the
classes. After every M-step each class average (joint and half-set) becomes

.. code-block:: text

    A_k <- Abar + m (A_k - Abar),      Abar = sum_k alpha_k A_k / sum_k alpha_k

(in real space, on the unfiltered averages), the consensus outside the mask and the class's
own map inside it (:func:`focus_averages`). The classes are then the same outside the mask,
so in the E-step the class responsibilities are decided by the focus region, while the
poses are still fitted against the whole particle (the reference mask, ``--mask``, is left
as it is). Half-set averages are blended with their own half's consensus, so the two halves
stay independent and the FSC of each class is that of the blended map.

With one class, or no mask, nothing changes. ``Abar`` weights the classes by their priors,
so an emptied class does not pull the consensus.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = [
    "AUTO_THRESHOLD",
    "check_focus_mask",
    "focus_averages",
    "focus_from_averages",
    "focus_state",
    "focused_model",
]

AUTO_THRESHOLD = 0.5
""":func:`focus_from_averages` keeps the voxels where the smoothed difference of the class
averages reaches this share of its maximum. Measured on two 50S states (crowded, SNR 0.02,
150 particles; ``benchmarks/workflows/STATES.md``): from the classes of an unfocused run
(F1 0.813), thresholds 0.4 / 0.5 / 0.6 kept 1232 / 454 / 192 voxels, of which 674 / 414 / 191
inside the region drawn from the truths' difference; the focused run on the 0.5 mask reached
F1 0.973 (on the truths' mask: 0.967)."""


def check_focus_mask(mask: np.ndarray, box: int) -> np.ndarray:
    """``mask`` as float64, checked: `(box, box, box)`, finite, in [0, 1], not all zero.

    Raises ``ValueError`` with one line naming what is wrong.
    """
    m = np.asarray(mask)
    if m.shape != (box,) * 3:
        raise ValueError(f"--focus-mask must be a {(box,) * 3} volume (the particles' box), "
                         f"got {m.shape}")  # fmt: skip
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"--focus-mask holds {int(np.sum(~np.isfinite(m)))} NaN or infinite "
                         "voxels")  # fmt: skip
    if m.min() < -1e-3 or m.max() > 1.0 + 1e-3:
        raise ValueError(f"--focus-mask values must lie in 0..1, got {m.min():.3g}..{m.max():.3g}")
    if not np.any(m > 0):
        raise ValueError("--focus-mask is zero everywhere: it must mark the region to classify")
    return np.clip(m, 0.0, 1.0)


def focus_from_averages(maps: np.ndarray, threshold: float = AUTO_THRESHOLD) -> np.ndarray:
    """`(N, N, N)` float32 focus mask where the class maps `(K, N, N, N)` differ most.

    Each map is scaled to unit standard deviation; the largest absolute difference of a class
    from their mean, smoothed (Gaussian, 1 voxel), is thresholded at ``threshold`` of its
    maximum and the edge softened (Gaussian, 1 voxel, doubled, clipped to 1): the region a
    user would draw around the difference of two class maps (``faml run --focus-mask auto``).
    """
    from scipy.ndimage import gaussian_filter

    vols = np.asarray(maps, dtype=np.float64)
    if vols.ndim != 4 or vols.shape[0] < 2:
        raise ValueError(f"a focus from class maps needs (K >= 2, N, N, N) maps, got {vols.shape}")
    vols = vols / np.maximum(vols.std(axis=(1, 2, 3), keepdims=True), 1e-30)
    diff = gaussian_filter(np.abs(vols - vols.mean(axis=0)).max(axis=0), 1.0)
    region = gaussian_filter((diff > threshold * diff.max()).astype(np.float64), 1.0)
    return np.clip(2.0 * region, 0.0, 1.0).astype(np.float32)


def focus_averages(averages: np.ndarray, weights: np.ndarray, focus: np.ndarray) -> np.ndarray:
    """`(K, N, N, N//2 + 1)` averages ``Abar + m (A_k - Abar)`` (module docstring).

    ``averages``: `(K, N, N, N//2 + 1)` class averages (``rfftn``); ``weights``: `(K,)` the
    class priors (``Abar`` is their weighted mean; all zero: the plain mean); ``focus``:
    `(N, N, N)` the mask ``m``. Returns a new array of the same dtype.
    """
    box = focus.shape[0]
    vols = scipy.fft.irfftn(averages, s=(box,) * 3, axes=(-3, -2, -1), workers=1)
    w = np.asarray(weights, dtype=np.float64)
    w = np.full(len(w), 1.0 / len(w)) if w.sum() <= 0 else w / w.sum()
    mean = np.tensordot(w, vols, axes=1)
    blended = mean[None] + focus[None] * (vols - mean[None])
    out = scipy.fft.rfftn(blended, axes=(-3, -2, -1), workers=1)
    return out.astype(averages.dtype, copy=False)


def focus_state(averages, halves, alpha, half_counts, focus):
    """Joint and half-set averages focused (:func:`focus_averages`).

    ``averages`` `(K, ...)`, ``halves`` `(2, K, ...)`, ``alpha`` `(K,)` the class priors,
    ``half_counts`` `(2, K)` each half's particles per class (each half's consensus weights
    its classes by them). Returns ``(averages, halves)``.
    """
    joint = focus_averages(averages, alpha, focus)
    half = np.stack([focus_averages(halves[h], half_counts[h], focus) for h in (0, 1)])
    return joint, half


def focused_model(state, focus: np.ndarray):
    """A :class:`~faml.ml.state.ModelState` with its averages focused (and its halves, if kept).

    For a model changed after the M-step (a re-seeded class): the classes weighted by their
    priors, the FSC curves left as they are.
    """
    from dataclasses import replace

    if state.classes < 2:
        return state
    averages = focus_averages(state.averages, state.alpha, focus)
    halves = state.half_averages
    if halves is not None:
        halves = np.stack([focus_averages(halves[h], state.alpha, focus) for h in (0, 1)])
    return replace(state, averages=averages, half_averages=halves)
