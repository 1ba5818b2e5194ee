"""Candidate rotations: local maxima of a score on the Euler grid, refined below the grid step.

The grid of :mod:`faml.align.so3` is periodic in ``alpha`` and ``gamma``; in ``beta`` it stops
half a step short of each pole. Beyond a pole the neighbours are the same grid rotated by
``pi`` in ``alpha`` and ``gamma``: ``Rz(a) Ry(-b) Rz(g) = Rz(a + pi) Ry(b) Rz(g + pi)``. The
score is padded with those rolled slices so maxima at or across the poles and across the
``alpha``/``gamma`` wrap-around are found like any other. Near the poles only ``alpha + gamma``
is well defined, so candidates are compared by geodesic angle, never angle by angle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from faml.align._kernels import grid_local_maxima
from faml.align.so3 import EulerGrid
from faml.geometry.rotations import rotation_distance

__all__ = ["GridPeak", "find_peaks", "pad_poles"]


@dataclass(frozen=True)
class GridPeak:
    """A local maximum of a score on an Euler grid.

    Attributes
    ----------
    index
        `(3,)` fractional grid index ``(b, a, g)`` after sub-grid refinement (``b`` may fall
        outside ``[0, n_beta)`` across a pole: the angles stay valid).
    rotation
        `(3, 3)` the rotation of ``index``.
    value
        The score at the grid maximum (before refinement).
    """

    index: np.ndarray
    rotation: np.ndarray
    value: float


def pad_poles(score: np.ndarray) -> np.ndarray:
    """Pad a `(n_beta, n_alpha, n_gamma)` grid with one ``beta`` slice beyond each pole.

    Returns `(n_beta + 2, n_alpha, n_gamma)`; index ``b + 1`` of the result is ``b`` of the input.
    ``n_alpha`` and ``n_gamma`` must be even.
    """
    n_beta, n_alpha, n_gamma = score.shape
    if n_alpha % 2 or n_gamma % 2:
        raise ValueError(f"alpha and gamma sample counts must be even, got {score.shape}")
    half = (n_alpha // 2, n_gamma // 2)
    before = np.roll(score[0], half, axis=(0, 1))
    after = np.roll(score[-1], half, axis=(0, 1))
    return np.concatenate([before[None], score, after[None]], axis=0)


@lru_cache(maxsize=1)
def _quadratic_pinv() -> tuple[np.ndarray, np.ndarray]:
    off = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1)
    off = off.reshape(-1, 3).astype(np.float64)
    b, a, g = off.T
    design = np.stack([np.ones_like(b), b, a, g, b * b, a * a, g * g, b * a, b * g, a * g], 1)
    return np.linalg.pinv(design), off


def _local_maxima(padded: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    capacity = padded[1:-1].size // 2 + 1
    index = np.empty((capacity, 3), dtype=np.int64)
    value = np.empty(capacity, dtype=padded.dtype)
    n = grid_local_maxima(padded, threshold, index, value)
    return index[:n], value[:n]


def _refine_offsets(cubes: np.ndarray) -> np.ndarray:
    """Sub-grid offsets `(K, 3)` of the maxima of quadratics fitted to `(K, 3, 3, 3)` cubes.

    Offsets are clipped to +-1 step per axis. Directions of zero or positive curvature are
    left alone (near the poles only ``alpha + gamma`` is determined, and the fit says so).
    """
    pinv, _ = _quadratic_pinv()
    c = cubes.reshape(cubes.shape[0], -1) @ pinv.T  # (K, 10)
    grad = c[:, 1:4]
    hess = np.empty((c.shape[0], 3, 3))
    hess[:, 0, 0], hess[:, 1, 1], hess[:, 2, 2] = 2 * c[:, 4], 2 * c[:, 5], 2 * c[:, 6]
    hess[:, 0, 1] = hess[:, 1, 0] = c[:, 7]
    hess[:, 0, 2] = hess[:, 2, 0] = c[:, 8]
    hess[:, 1, 2] = hess[:, 2, 1] = c[:, 9]
    lam, vec = np.linalg.eigh(hess)  # (K, 3), (K, 3, 3)
    scale = np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-30)
    use = lam < -1e-6 * scale
    proj = np.einsum("kji,kj->ki", vec, grad)  # components of grad along eigenvectors
    coef = np.where(use, -proj / np.where(use, lam, 1.0), 0.0)
    delta = np.einsum("kij,kj->ki", vec, coef)
    return np.clip(delta, -1.0, 1.0)


def find_peaks(
    score: np.ndarray,
    grid: EulerGrid,
    max_peaks: int,
    *,
    min_separation_deg: float | None = None,
    refine: bool = True,
) -> list[GridPeak]:
    """Local maxima of ``score`` on ``grid``, best first, at least ``min_separation_deg`` apart.

    Parameters
    ----------
    score
        `(n_beta, n_alpha, n_gamma)` values on ``grid``.
    grid
        The Euler grid.
    max_peaks
        Return at most this many.
    min_separation_deg
        Minimum geodesic angle between two returned peaks; default: one ``beta`` step, which
        removes the copies of one maximum that the grid's crowding near the poles produces.
    refine
        Fit a quadratic to each maximum's 3x3x3 neighbourhood and move it there.

    Returns
    -------
    list[GridPeak]
    """
    if score.shape != grid.shape:
        raise ValueError(f"score must have the grid's shape {grid.shape}, got {score.shape}")
    if min_separation_deg is None:
        min_separation_deg = 180.0 / grid.betas.size
    padded = pad_poles(score)
    wanted = 2 * max_peaks + 8
    # Scan only the top of the distribution first (a 99th percentile estimated on a subsample);
    # fall back to every point when that leaves too few maxima.
    threshold = float(np.quantile(score.ravel()[::7], 0.99))
    idx, values = _local_maxima(padded, threshold)
    if values.size < wanted:
        idx, values = _local_maxima(padded, -np.inf)
    order = np.argsort(values, kind="stable")[::-1][:wanted]
    idx, values = idx[order], values[order]
    rots = grid.matrices(grid.angles(idx))
    kept: list[int] = []
    for i in range(idx.shape[0]):
        if len(kept) >= max_peaks:
            break
        if kept and np.min(rotation_distance(rots[kept], rots[i])) < min_separation_deg:
            continue
        kept.append(i)
    n_alpha, n_gamma = grid.alphas.size, grid.gammas.size
    kept_idx = idx[kept]
    index = kept_idx.astype(np.float64)
    if refine and kept:
        rows = kept_idx[:, 0, None] + np.arange(3)[None, :]  # padded rows b-1..b+1
        cols_a = (kept_idx[:, 1, None] + np.arange(-1, 2)[None, :]) % n_alpha
        cols_g = (kept_idx[:, 2, None] + np.arange(-1, 2)[None, :]) % n_gamma
        cubes = padded[rows[:, :, None, None], cols_a[:, None, :, None], cols_g[:, None, None, :]]
        index = index + _refine_offsets(cubes.astype(np.float64))
    rotations = grid.matrices(grid.angles(index))
    return [GridPeak(index[i], rotations[i], float(values[k])) for i, k in enumerate(kept)]
