"""Fourier-shell helpers of the engine: shell indices, FSC, FSC-weighted low-pass filter."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from faml.align.translate import half_spectrum_multiplicity

__all__ = [
    "shell_index",
    "fsc",
    "shell_power",
    "fsc_filter",
    "band_from_fsc",
    "fsc_resolution",
    "mask_corrected_fsc",
]


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


def shell_power(a: np.ndarray) -> np.ndarray:
    """`(N//2 + 1,)` full-spectrum ``sum |a|^2`` per shell of an ``rfftn`` spectrum."""
    box = a.shape[0]
    idx = shell_index(box)
    n = box // 2 + 1
    keep = idx < n
    w = np.broadcast_to(half_spectrum_multiplicity(box), a.shape)[keep]
    return np.bincount(idx[keep], weights=w * np.abs(a[keep]) ** 2, minlength=n)


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


def fsc_resolution(curve: np.ndarray, box: int, voxel_size: float, threshold: float) -> float:
    """Ångström where an FSC curve (shells ``0..N//2``) first drops below ``threshold``.

    The crossing is interpolated linearly between the last shell at or above the threshold
    and the first below it (shell 0 counts as 1). A curve that never drops gives the Nyquist
    resolution of its last shell; one below the threshold at shell 1 gives the box size.
    """
    c = np.asarray(curve, dtype=np.float64).copy()
    c[0] = 1.0
    below = np.flatnonzero(c[1:] < threshold)
    if below.size == 0:
        return box * voxel_size / (len(c) - 1)
    r = int(below[0]) + 1
    hi, lo = c[r - 1], c[r]
    radius = (r - 1) + (hi - threshold) / (hi - lo) if hi > lo else float(r)
    return box * voxel_size / max(radius, 1.0)


def mask_corrected_fsc(
    half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """FSC of masked half maps corrected for the mask by phase randomisation.

    The correlation a mask itself adds is measured on copies of the half maps whose phases
    are randomised beyond the shell where their unmasked FSC first drops below 0.8 (Chen et
    al. 2013, as RELION's post-processing):
    ``FSC_true = (FSC_masked - FSC_random) / (1 - FSC_random)`` beyond that shell,
    ``FSC_masked`` before it.

    Parameters
    ----------
    half1, half2
        `(N, N, N//2 + 1)` ``rfftn`` spectra of the two half maps.
    mask
        `(N, N, N)` real-space mask (soft edges).
    seed
        Of the random phases.

    Returns
    -------
    dict
        `(N//2 + 1,)` curves: ``"unmasked"``, ``"masked"``, ``"random"`` (phase-randomised,
        masked) and ``"corrected"``; and ``"randomised_from"`` (the shell, as a 0-d array).
    """
    box = mask.shape[0]
    shape = (box,) * 3
    unmasked = fsc(half1, half2)
    below = np.flatnonzero(unmasked[1:] < 0.8)
    start = int(below[0]) + 1 if below.size else box // 2
    idx = shell_index(box)
    rng = np.random.default_rng([seed, 1013])
    outer = idx >= start

    def masked(spec, randomise):
        if randomise:  # independent phases per half map
            phases = np.exp(2j * np.pi * rng.random(idx.shape))
            spec = np.where(outer, np.abs(spec) * phases, spec)
        vol = scipy.fft.irfftn(spec, s=shape, workers=1) * mask
        return scipy.fft.rfftn(vol, workers=1)

    fsc_masked = fsc(masked(half1, False), masked(half2, False))
    fsc_random = fsc(masked(half1, True), masked(half2, True))
    corrected = fsc_masked.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        fixed = (fsc_masked - fsc_random) / (1.0 - fsc_random)
    corrected[start:] = np.nan_to_num(fixed[start:], nan=0.0)
    return {
        "unmasked": unmasked,
        "masked": fsc_masked,
        "random": fsc_random,
        "corrected": corrected,
        "randomised_from": np.array(start),
    }
