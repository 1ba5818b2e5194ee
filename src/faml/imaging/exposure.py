"""Radiation damage of a tilt series: the critical exposure of the dose (exposure) filter.

A frame recorded after a cumulative exposure ``D`` (e/Å²) keeps, at spatial frequency ``s``
(1/Å), the amplitude ``exp(-D / (2 N_e(s)))`` with ``N_e`` the critical exposure of Grant &
Grigorieff (2015), the dose weighting RELION 5 applies to tomography frames.
"""

from __future__ import annotations

import numpy as np

__all__ = ["critical_exposure"]


def critical_exposure(s: np.ndarray) -> np.ndarray:
    """Grant & Grigorieff (2015) critical exposure ``0.245 s^-1.665 + 2.81`` (e/Å², s in 1/Å)."""
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, 0.245 * np.power(np.maximum(s, 1e-12), -1.665) + 2.81, np.inf)
