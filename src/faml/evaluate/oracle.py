"""The oracle average: the particles averaged at their true poses and classes.

"The best any method can do with these particles": the same statistics as a run's M-step
(:func:`faml.ml.em.hard_chunk` places each particle in its class's frame with weight 1), the
same wedge-compensated mean (:func:`faml.ml.mstep.compensated_mean`), and the same filtering as
the engine's ``filtered_average``: the particles are split into two random halves, the FSC
between the half averages gives per class the weights ``sqrt(2 F / (1 + F))`` up to the band
where the FSC first drops below 0.143 (the largest band over the classes, at least
``min_band`` shells, as the engine), the combined average is filtered by them, transformed
back and multiplied by the mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft

from faml.evaluate.maps import default_mask
from faml.io.particles import ParticleTable, with_weight_scale
from faml.ml.em import hard_chunk
from faml.ml.fourier import band_from_fsc, fsc, fsc_filter, shell_index
from faml.ml.mstep import compensated_mean
from faml.ml.stats import Stats

__all__ = ["OracleAverage", "oracle_average"]

logger = logging.getLogger(__name__)

_CHUNK = 64
"""Particles per call of ``hard_chunk`` (progress is logged per chunk)."""


@dataclass(frozen=True)
class OracleAverage:
    """Averages of particles at given poses.

    Attributes
    ----------
    maps
        `(K, N, N, N)` float32 FSC-filtered, masked real-space averages (``(z, y, x)``).
    fsc
        `(K, N//2 + 1)` FSC between the two half averages of each class.
    band
        The filter's band (Fourier shells), shared by the classes.
    counts
        `(K,)` particles per class.
    """

    maps: np.ndarray
    fsc: np.ndarray
    band: int
    counts: np.ndarray


def _halves(n: int, seed: int) -> np.ndarray:
    """`(n,)` 0/1: a random split into two halves of (nearly) equal size."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    halves = np.zeros(n, dtype=np.int64)
    halves[perm[1::2]] = 1
    return halves


def oracle_average(
    table: ParticleTable,
    rotations: np.ndarray,
    shifts: np.ndarray,
    classes: np.ndarray,
    n_classes: int | None = None,
    *,
    indices: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    filtered: bool = True,
    min_band: int = 4,
    seed: int = 0,
) -> OracleAverage:
    """Average particles of ``table`` at the given poses and classes, as a run's map is made.

    Parameters
    ----------
    table
        The particles (files and Fourier weights).
    rotations, shifts
        `(n, 3, 3)` and `(n, 3)` (voxels, ``(x, y, z)``) poses ``particle = T_(R, t) class``,
        one per entry of ``indices``.
    classes
        `(n,)` 0-based classes.
    n_classes
        ``K`` (default: the largest class + 1).
    indices
        `(n,)` rows of ``table`` (default ``0..n-1``).
    mask
        `(N, N, N)` real-space mask (default the engine's soft sphere,
        :func:`faml.evaluate.maps.default_mask`).
    filtered
        FSC-filter the averages (else the plain wedge-compensated means, masked).
    min_band
        Smallest band of the filter (the engine's default ``min_band``).
    seed
        Seed of the half split.

    Returns
    -------
    OracleAverage
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    n = classes.shape[0]
    if rotations.shape != (n, 3, 3) or shifts.shape != (n, 3):
        raise ValueError(
            f"expected ({n}, 3, 3) rotations and ({n}, 3) shifts, got {rotations.shape} and "
            f"{shifts.shape}"
        )
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.shape != (n,) or (n and (idx.min() < 0 or idx.max() >= len(table))):
        raise ValueError(f"indices must be ({n},) rows of the {len(table)}-particle table")
    K = int(classes.max()) + 1 if n_classes is None else int(n_classes)
    if n and (classes.min() < 0 or classes.max() >= K):
        raise ValueError(f"classes must lie in 0..{K - 1}")
    box = table.box
    table = with_weight_scale(table)  # as the run scales premultiplied weights
    mask = default_mask(box) if mask is None else np.asarray(mask, dtype=np.float32)
    halves = np.zeros(len(table), dtype=np.int64)
    halves[idx] = _halves(n, seed)
    total = Stats.zeros(K, box)
    for start in range(0, n, _CHUNK):
        part = range(start, min(start + _CHUNK, n))
        items = [(int(idx[i]), int(classes[i]), rotations[i], shifts[i]) for i in part]
        _, stats = hard_chunk(table, items, K, halves)
        total += stats
        logger.debug("oracle average: %d of %d particles", part.stop, n)
    (S, W), counts = total.dense(), total.n
    curves = np.zeros((K, box // 2 + 1))
    for k in range(K):
        a = compensated_mean(S[0, k], W[0, k], total.level[0, k])
        b = compensated_mean(S[1, k], W[1, k], total.level[1, k])
        curves[k] = fsc(a, b)
    band = int(np.clip(max(band_from_fsc(c) for c in curves), min_band, box // 2 - 1))
    shells = np.minimum(shell_index(box), box // 2)
    maps = np.zeros((K, box, box, box), dtype=np.float32)
    for k in range(K):
        spec = compensated_mean(S[0, k] + S[1, k], W[0, k] + W[1, k], total.level[:, k].sum(0))
        if filtered:
            spec = spec * fsc_filter(curves[k], band)[shells]
        maps[k] = scipy.fft.irfftn(spec, s=(box,) * 3) * mask
    return OracleAverage(maps, curves, band, counts.sum(axis=0).astype(np.int64))
