"""A map against its true structure: align globally, then correlation and FSC.

The map is aligned to the truth with :func:`faml.align.fast_align` (no wedge: both are
complete maps), the truth is placed in the map's frame, and the masked Pearson correlation
and the FSC between them are computed. ``global_rotation`` ``G`` maps the truth's
coordinates to the map's: a particle pose ``R`` estimated against the map corresponds to
``R @ G`` against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from faml.align import fast_align
from faml.geometry.masks import soft_sphere
from faml.geometry.transform import transform_volume
from faml.ml.fourier import fsc

__all__ = ["MapScore", "score_map"]


@dataclass(frozen=True)
class MapScore:
    """Correlation and FSC of a map with its aligned truth."""

    correlation: float
    fsc: np.ndarray
    resolution_05: float  # Angstrom at FSC 0.5
    global_rotation: np.ndarray
    global_shift: np.ndarray


def score_map(volume: np.ndarray, truth: np.ndarray, voxel_size: float) -> MapScore:
    """Align ``volume`` to ``truth`` (both `(N, N, N)`) and score it."""
    box = volume.shape[0]
    ones = np.ones((box, box, box // 2 + 1), np.float32)
    best = fast_align(volume, ones, truth, max_candidates=10)[0]
    placed = transform_volume(truth, best.rotation, best.shift, order=3)
    mask = soft_sphere(box, 0.45 * box - 2.0, edge=2.0)
    a = (volume - volume[mask > 0.5].mean()) * mask
    b = (placed - placed[mask > 0.5].mean()) * mask
    corr = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
    curve = fsc(scipy.fft.rfftn(volume), scipy.fft.rfftn(placed))
    below = np.flatnonzero(curve[1:] < 0.5)
    shell = int(below[0]) if below.size else len(curve) - 1
    return MapScore(corr, curve, box * voxel_size / max(shell, 1), best.rotation, best.shift)
