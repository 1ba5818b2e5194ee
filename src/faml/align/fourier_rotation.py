"""Rotated copies of an average, made directly in Fourier space, and Fourier cropping.

Rotating a volume in real space and taking its FFT costs two passes over the box per
rotation. Here the average is zero-padded twice (``P = 2N``) about its rotation centre
(voxel ``N // 2`` moved to the origin), pre-divided by the Fourier transform of the trilinear
kernel (``sinc^2``, "gridding correction") and transformed once. A rotated copy is then one
trilinear gather of that spectrum at the rotated frequencies, for the half-grid points
inside the band limit only:

.. code-block:: text

    A_R(k) = exp(-2 pi i k.c / N) * S(2 R^T k)      (k, c in (x, y, z); S on the padded grid)

which is the ``rfftn`` of the average rotated by ``R`` about ``c`` (content is not clipped
at the box faces). Points outside the band are zero. Measured against the FFT of a cubic
real-space rotation of a masked 32^3 map: 0.7% relative difference below 5 voxels radius,
1.4% at 5-10, 9% at 10-15 (where the cubic rotation itself is least accurate).

:func:`gather_half_spectrum` (trilinear samples of real, Friedel-symmetric volumes in ``rfftn``
layout, as :mod:`faml.align.shells` takes them) is the public name of that compiled kernel
for the packages above :mod:`faml.align`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft

from faml.align._kernels import gather_half_spectrum, gather_rotated_spectrum
from faml.align.translate import CrossSpectra, half_spectrum_multiplicity, particle_norm
from faml.geometry.axes import box_center, matrix_xyz_to_zyx, xyz_to_zyx

__all__ = [
    "PaddedSpectrum",
    "padded_spectrum",
    "band_points",
    "rotated_spectra",
    "rotated_points",
    "shift_phases",
    "rotated_cross_spectra",
    "crop_half_spectrum",
    "crop_volume",
    "gather_half_spectrum",
]

PADDING = 2


@dataclass(frozen=True)
class PaddedSpectrum:
    """The gridding-corrected, ``PADDING``-times padded spectrum of an `(N, N, N)` volume.

    Attributes
    ----------
    box
        ``N``.
    real, imag
        `(P, P, P//2 + 1)` float32 parts of the ``rfftn`` (rotation centre at the origin).
    """

    box: int
    real: np.ndarray
    imag: np.ndarray


def padded_spectrum(volume: np.ndarray) -> PaddedSpectrum:
    """Pad, gridding-correct and transform `(N, N, N)` ``volume`` (``(z, y, x)``)."""
    box = volume.shape[0]
    p = PADDING * box
    d = np.arange(box) - box_center(box)  # signed distance to the centre, per axis
    corr = 1.0 / np.sinc(d / p) ** 2  # trilinear interpolation multiplies by sinc^2(d / P)
    corrected = volume * (corr[:, None, None] * corr[None, :, None] * corr[None, None, :])
    padded = np.zeros((p, p, p), dtype=np.float32)
    idx = d % p
    padded[np.ix_(idx, idx, idx)] = corrected
    spec = scipy.fft.rfftn(padded, workers=1)
    real = np.ascontiguousarray(spec.real, dtype=np.float32)
    imag = np.ascontiguousarray(spec.imag, dtype=np.float32)
    real.setflags(write=False)
    imag.setflags(write=False)
    return PaddedSpectrum(box, real, imag)


@lru_cache(maxsize=16)
def band_points(box: int, band_limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``rfftn`` half-grid points of an `N` box with ``|k| <= band_limit + 1/2``.

    Returns
    -------
    kzyx
        `(n, 3)` float32 signed frequency indices ``(kz, ky, kx)``.
    flat
        `(n,)` int64 flat indices into `(N, N, N//2 + 1)`.
    phase
        `(2, n)` float32 real and imaginary parts of ``exp(-2 pi i k.c / N)``, the factor
        that moves origin-centred content to voxel ``c = N // 2``.
    """
    kz = np.fft.fftfreq(box, 1.0 / box)
    kx = np.fft.rfftfreq(box, 1.0 / box)
    zz, yy, xx = np.meshgrid(kz, kz, kx, indexing="ij")
    inside = zz**2 + yy**2 + xx**2 <= (band_limit + 0.5) ** 2
    flat = np.flatnonzero(inside)
    kzyx = np.stack([zz.ravel()[flat], yy.ravel()[flat], xx.ravel()[flat]], axis=-1)
    angle = -2.0 * np.pi * kzyx.sum(axis=-1) * box_center(box) / box
    phase = np.stack([np.cos(angle), np.sin(angle)]).astype(np.float32)
    kzyx = kzyx.astype(np.float32)
    for a in (kzyx, flat, phase):
        a.setflags(write=False)
    return kzyx, flat, phase


def shift_phases(kzyx: np.ndarray, shifts: np.ndarray, box: int) -> np.ndarray:
    """`(B, n)` complex128 ``exp(-2 pi i k.t / N)``: shifts by `(B, 3)` ``(x, y, z)`` voxels.

    Evaluated at `(n, 3)` frequency indices ``kzyx`` (e.g. those of :func:`band_points`).
    """
    angle = (-2.0 * np.pi / box) * (xyz_to_zyx(np.asarray(shifts, dtype=np.float64)) @ kzyx.T)
    return np.cos(angle) + 1j * np.sin(angle)


def _gather(padded, rotations, kzyx, flat, phase, px_re, px_im, w2m):
    """Run the gather kernel for `(B, 3, 3)` rotations: `(B, M)` output and `(B,)` norms."""
    box = padded.box
    # Source index u = PADDING * R^T k, written for (z, y, x) vectors.
    mats = PADDING * matrix_xyz_to_zyx(rotations.transpose(0, 2, 1))
    mats = np.ascontiguousarray(mats, dtype=np.float32)
    out = np.zeros((rotations.shape[0], box * box * (box // 2 + 1)), dtype=np.complex64)
    norm_sq = np.zeros(rotations.shape[0])
    gather_rotated_spectrum(
        padded.real, padded.imag, mats, kzyx, flat, phase[0], phase[1], px_re, px_im, w2m,
        out, norm_sq,
    )  # fmt: skip
    return out, norm_sq


def rotated_spectra(padded: PaddedSpectrum, rotations: np.ndarray, band_limit: int) -> np.ndarray:
    """``rfftn`` of the volume rotated by each of `(B, 3, 3)` ``rotations`` about ``N // 2``.

    Rotations are in RELION's sense (they map the volume's ``(x, y, z)`` coordinates to the
    rotated copy's). Returns `(B, N, N, N//2 + 1)` complex64, zero beyond ``band_limit``.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (B, 3, 3), got {rotations.shape}")
    box = padded.box
    kzyx, flat, phase = band_points(box, int(band_limit))
    none = np.zeros(0, dtype=np.float32)
    out, _ = _gather(padded, rotations, kzyx, flat, phase, none, none, none)
    return out.reshape(rotations.shape[0], box, box, box // 2 + 1)


def rotated_points(padded: PaddedSpectrum, rotations: np.ndarray, band_limit: int) -> np.ndarray:
    """:func:`rotated_spectra` at the band's points only: `(B, n)` complex64.

    The points are those of :func:`band_points` ``(N, band_limit)``, in its order.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (B, 3, 3), got {rotations.shape}")
    kzyx, _, phase = band_points(padded.box, int(band_limit))
    mats = PADDING * matrix_xyz_to_zyx(rotations.transpose(0, 2, 1))
    mats = np.ascontiguousarray(mats, dtype=np.float32)
    out = np.zeros((rotations.shape[0], kzyx.shape[0]), dtype=np.complex64)
    none = np.zeros(0, dtype=np.float32)
    gather_rotated_spectrum(
        padded.real, padded.imag, mats, kzyx, np.arange(kzyx.shape[0]), phase[0], phase[1],
        none, none, none, out, np.zeros(rotations.shape[0]),
    )  # fmt: skip
    return out


def rotated_cross_spectra(
    padded: PaddedSpectrum,
    rotations: np.ndarray,
    band_limit: int,
    data_ft: np.ndarray,
    weight: np.ndarray,
) -> CrossSpectra:
    """:class:`~faml.align.translate.CrossSpectra` of a particle and rotated copies, in one pass.

    The same as ``cross_spectra(data_ft, weight, rotated_spectra(...))`` with ``weight``
    zero beyond ``band_limit``, without writing the rotated spectra.

    Parameters
    ----------
    padded
        The average's padded spectrum (box ``N``).
    rotations
        `(B, 3, 3)` rotations (RELION's sense).
    band_limit
        Frequencies beyond it (Fourier voxels) are left out.
    data_ft
        `(N, N, N//2 + 1)` the particle's premultiplied spectrum ``D``
        (:mod:`faml.align.translate`).
    weight
        `(N, N, N//2 + 1)` its weight ``C >= 0``.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (B, 3, 3), got {rotations.shape}")
    box = padded.box
    half = (box, box, box // 2 + 1)
    if data_ft.shape != half or weight.shape != half:
        raise ValueError(
            f"particle spectrum and weight must be {half}, got {data_ft.shape} and {weight.shape}"
        )
    kzyx, flat, phase = band_points(box, int(band_limit))
    w2 = weight.reshape(-1)[flat]
    # Only points the particle observed contribute (and not DC): a +-60 degree wedge
    # leaves a third of the band out of the gather.
    seen = (w2 > 0) & (flat != 0)
    kzyx, flat, w2 = kzyx[seen], flat[seen], w2[seen]
    phase = np.ascontiguousarray(phase[:, seen])
    px = data_ft.reshape(-1)[flat].astype(np.complex64)
    w2m = (w2 * half_spectrum_multiplicity(box)[flat % (box // 2 + 1)]).astype(np.float32)
    out, norm_sq = _gather(
        padded, rotations, kzyx, flat, phase, px.real.copy(), px.imag.copy(), w2m
    )
    band_w2 = np.zeros(box * box * (box // 2 + 1), dtype=np.float32)
    band_w2[flat] = w2
    norm_x = particle_norm(data_ft, band_w2.reshape(half))
    return CrossSpectra(out.reshape((-1,) + half), np.sqrt(norm_sq), norm_x)


def crop_half_spectrum(spectrum: np.ndarray, size: int) -> np.ndarray:
    """Keep the frequencies of an ``rfftn``-layout array that a smaller box holds.

    `(..., N, N, N//2 + 1)` -> `(..., size, size, size//2 + 1)`; ``size`` even, ``<= N``.

    The values are not rescaled (a correlation of cropped spectra is what a correlation of
    the low-passed volumes would be, up to one constant factor).
    """
    box = spectrum.shape[-3]
    if size == box:
        return spectrum
    if size % 2 or size > box:
        raise ValueError(f"crop size must be even and at most {box}, got {size}")
    h = size // 2
    rows = np.concatenate([np.arange(h), np.arange(box - h, box)])
    return spectrum[..., rows[:, None], rows[None, :], : h + 1]


def crop_volume(volume: np.ndarray, size: int) -> np.ndarray:
    """Fourier-crop (band-limit and resample) an `(N, N, N)` volume to `(size,)*3`.

    Voxel ``N // 2`` maps to voxel ``size // 2`` (both even). Values keep their scale.
    """
    box = volume.shape[0]
    if size == box:
        return volume
    spec = crop_half_spectrum(scipy.fft.rfftn(volume, workers=1), size)
    out = scipy.fft.irfftn(spec, s=(size,) * 3, workers=1) * (size / box) ** 3
    return out.astype(np.float32)
