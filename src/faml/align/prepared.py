"""What the fast alignment needs of an average, computed once and reused per particle.

:func:`prepare_average` gives a :class:`PreparedAverage`: the average's shell harmonics for
the rotational search, its padded spectrum at the translation box for rotated copies, and
(on first use, also kept in a small per-process cache) the scan's rotated reference. The
checks of the volumes and weights the alignment takes in live here too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from faml.align._sphere import analyse, sphere_grid
from faml.align.fourier_rotation import PaddedSpectrum, crop_volume, padded_spectrum
from faml.align.scan import ScanReference, scan_reference
from faml.align.settings import AlignSettings
from faml.align.shells import sample_shells, shell_degree_caps

__all__ = ["PreparedAverage", "prepare_average"]


@dataclass(frozen=True)
class PreparedAverage:
    """What the fast alignment needs of an average, computed once and reused per particle.

    Attributes
    ----------
    settings
        The settings it was prepared for.
    volume
        `(N, N, N)` float32 real-space average, ``(z, y, x)``.
    coeffs
        `(2, S, n_l, L + 1)` harmonic coefficients of ``q0`` and ``q1`` on the shells.
    padded
        The padded spectrum of the average cropped to ``settings.resolved_translation_box``,
        from which rotated copies are drawn (:mod:`faml.align.fourier_rotation`).
    """

    settings: AlignSettings
    volume: np.ndarray
    coeffs: np.ndarray
    padded: PaddedSpectrum
    _scan: list = field(default_factory=list, repr=False, compare=False)

    def scan_reference(self) -> ScanReference:
        """The average rotated to the scan's grid (computed on first use, then kept).

        Kept twice: on this object, and in a small per-process cache keyed by the content of
        the spectrum, so that a worker process that receives the same average with every task
        of an iteration (pickled afresh each time) computes it once per iteration, not once
        per task.
        """
        if not self._scan:
            st = self.settings
            key = (
                hashlib.blake2b(self.padded.real.tobytes(), digest_size=16).digest(),
                hashlib.blake2b(self.padded.imag.tobytes(), digest_size=16).digest(),
                st.resolved_scan_band,
                st.scan_step_deg,
            )
            ref = _SCAN_CACHE.pop(key, None)
            if ref is None:
                ref = scan_reference(self.padded, st.resolved_scan_band, st.scan_step_deg)
            _SCAN_CACHE[key] = ref  # newest last
            while len(_SCAN_CACHE) > _SCAN_CACHE_SIZE:
                _SCAN_CACHE.popitem(last=False)
            self._scan.append(ref)
        return self._scan[0]


_SCAN_CACHE_SIZE = 4
"""Scan references kept per process (one per class average of the current iteration)."""


_SCAN_CACHE: OrderedDict = OrderedDict()


def _check_volume(name: str, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"{name} must be a cubic (N, N, N) volume, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(v, dtype=np.float32)


def _shell_setup(settings: AlignSettings):
    L = settings.resolved_degree
    grid = sphere_grid(L)
    radii = np.arange(1, settings.resolved_band_limit + 1)
    degrees = np.arange(0, L + 1, 2)
    caps = shell_degree_caps(radii, L)
    keep = degrees[None, :] <= caps[:, None]  # (S, n_l)
    return grid, radii, degrees, keep


def prepare_average(average: np.ndarray, settings: AlignSettings) -> PreparedAverage:
    """Precompute the average's shell harmonics (``q0``, ``q1``) for :func:`align_to`.

    Parameters
    ----------
    average
        `(N, N, N)` real-space average, ``(z, y, x)``.
    settings
        Alignment settings for this box.
    """
    average = _check_volume("average", average)
    if average.shape[0] != settings.box:
        raise ValueError(
            f"average is {average.shape[0]}^3 but the settings are for {settings.box}^3"
        )
    grid, radii, degrees, keep = _shell_setup(settings)
    mag = np.abs(scipy.fft.rfftn(average, workers=1)).astype(np.float32)
    q0 = sample_shells(mag[None], radii, grid)[0].astype(np.float64)  # (S, nt, np)
    q0 -= np.einsum("j,sjk->s", grid.weights, q0)[:, None, None] / (4 * np.pi)
    coeffs = analyse(np.stack([q0, q0 * q0]), grid, degrees) * keep[None, :, :, None]
    coarse = crop_volume(average, settings.resolved_translation_box)
    return PreparedAverage(settings, average, coeffs, padded_spectrum(coarse))


def _check_weight(weight: np.ndarray, box: int) -> np.ndarray:
    """``weight`` (``w``, signed allowed) as float32, its layout and values checked."""
    half = (box, box, box // 2 + 1)
    weight = np.asarray(weight, dtype=np.float32)
    if weight.shape != half:
        raise ValueError(
            f"wedge must be the particle's Fourier weight in rfftn layout {half}, "
            f"got {weight.shape}"
        )
    if not np.all(np.isfinite(weight)) or not np.abs(weight).max() > 0:
        raise ValueError("the wedge (Fourier weight) must be finite and not all zero")
    return weight


def checked_particle(
    particle: np.ndarray, wedge: np.ndarray, settings: AlignSettings
) -> tuple[np.ndarray, np.ndarray]:
    """A particle `(N, N, N)` and its weight ``w`` checked against ``settings`` (float32)."""
    particle = _check_volume("particle", particle)
    box = particle.shape[0]
    if box != settings.box:
        raise ValueError(f"particle is {box}^3 but the average is {settings.box}^3")
    return particle, _check_weight(wedge, box)
