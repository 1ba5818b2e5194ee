"""Fourier-shell helpers of the engine: shell indices, FSC, FSC-weighted low-pass filter."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from faml.align.translate import half_spectrum_multiplicity

__all__ = ["shell_index", "fsc", "fsc_filter", "band_from_fsc"]


@lru_cache(maxsize=8)
def shell_index(box: int) -> np.ndarray:
    """`(N, N, N//2 + 1)` int64 Fourier shell (rounded radius, voxels) of each ``rfftn`` point."""
    kz = np.fft.fftfreq(box, 1.0 / box)[:, None, None]
    ky = np.fft.fftfreq(box, 1.0 / box)[None, :, None]
    kx = np.fft.rfftfreq(box, 1.0 / box)[None, None, :]
    idx = np.rint(np.sqrt(kz**2 + ky**2 + kx**2)).astype(np.int64)
    idx.setflags(write=False)
    return idx


def fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fourier shell correlation of two ``rfftn`` spectra `(N, N, N//2 + 1)`, shells 0..N//2.

    Half-layout columns are weighted by their multiplicity (full-spectrum sums).
    """
    box = a.shape[0]
    idx = shell_index(box)
    mult = half_spectrum_multiplicity(box)
    n = box // 2 + 1
    keep = idx < n
    w = np.broadcast_to(mult, a.shape)[keep]
    i = idx[keep]
    num = np.bincount(i, weights=w * (a[keep] * np.conj(b[keep])).real, minlength=n)
    pa = np.bincount(i, weights=w * np.abs(a[keep]) ** 2, minlength=n)
    pb = np.bincount(i, weights=w * np.abs(b[keep]) ** 2, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / np.sqrt(pa * pb)
    return np.nan_to_num(out, nan=0.0)


def band_from_fsc(curve: np.ndarray, threshold: float = 0.143) -> int:
    """Last shell before the FSC first drops below ``threshold`` (shell 0 excluded)."""
    below = np.flatnonzero(curve[1:] < threshold)
    return int(below[0]) if below.size else len(curve) - 1


def fsc_filter(curve: np.ndarray, band: int) -> np.ndarray:
    """Per-shell weights ``sqrt(2F / (1 + F))`` up to ``band``, 0 beyond (DESIGN.md 3.6)."""
    f = np.clip(curve, 0.0, 1.0)
    w = np.sqrt(2.0 * f / (1.0 + f))
    w[0] = 1.0
    w[band + 1 :] = 0.0
    return w
