"""Phase-aware coarse scan: the constrained correlation on a whole rotation x shift grid.

The magnitude score of :mod:`faml.align.fast` throws the phases away, and at low SNR that
is most of the information (DESIGN.md 3.1 step 5). This stage scores every rotation of a
quasi-uniform grid (:func:`rotation_grid`) and every shift of a coarse grid at once, on the
low-frequency band where the average is trusted:

.. code-block:: text

    c(R, t) = Re sum_k v_k X_k conj(A_R,k) exp(+2 pi i k.t / N) / sqrt(sum_k v_k |A_R,k|^2)
    v_k = mult_k w_k^2 s_|k|                           (s: per-shell weight, e.g. 1 / sigma^2)

The average's rotated spectra at the band's points are computed once per average
(:class:`ScanReference`, `(n_rot, n_points)`); per particle the numerator for all rotations
and shifts is one real matrix product `(n_rot, 2 n_points) x (2 n_points, n_shifts)`
(BLAS), the denominator one matrix-vector product. The best shift of each rotation scores
the rotation; the best rotations, no two within ``suppress_deg``, are the scan's proposals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from faml.align.fourier_rotation import (
    PaddedSpectrum,
    band_points,
    rotated_points,
    shift_phases,
)
from faml.align.translate import half_spectrum_multiplicity
from faml.geometry.rotations import distinct

__all__ = ["ScanReference", "rotation_grid", "scan_reference", "scan", "shift_grid"]


@lru_cache(maxsize=8)
def rotation_grid(step_deg: float) -> np.ndarray:
    """`(n, 3, 3)` quasi-uniform rotations on SO(3) with about ``step_deg`` spacing.

    Super-Fibonacci spiral quaternions (Alexa, CVPR 2022), ``n = round(4608 (15 / step)^3)``:
    the count of RELION's HEALPix grid at the same step (4608 rotations at 15 degrees,
    576 at 30). Deterministic.
    """
    if not 1.0 <= step_deg <= 90.0:
        raise ValueError(f"the scan's rotation step must lie in [1, 90] degrees, got {step_deg}")
    n = max(24, int(round(4608 * (15.0 / step_deg) ** 3)))
    s = np.arange(n) + 0.5
    r = np.sqrt(s / n)
    big_r = np.sqrt(1.0 - s / n)
    alpha = 2.0 * np.pi * s / np.sqrt(2.0)
    beta = 2.0 * np.pi * s / 1.533751168755204288118041
    x, y = r * np.sin(alpha), r * np.cos(alpha)
    z, w = big_r * np.sin(beta), big_r * np.cos(beta)
    # quaternion (w, x, y, z) -> matrix
    mats = np.empty((n, 3, 3))
    mats[:, 0, 0] = 1 - 2 * (y * y + z * z)
    mats[:, 0, 1] = 2 * (x * y - z * w)
    mats[:, 0, 2] = 2 * (x * z + y * w)
    mats[:, 1, 0] = 2 * (x * y + z * w)
    mats[:, 1, 1] = 1 - 2 * (x * x + z * z)
    mats[:, 1, 2] = 2 * (y * z - x * w)
    mats[:, 2, 0] = 2 * (x * z - y * w)
    mats[:, 2, 1] = 2 * (y * z + x * w)
    mats[:, 2, 2] = 1 - 2 * (x * x + y * y)
    mats.setflags(write=False)
    return mats


@lru_cache(maxsize=8)
def shift_grid(radius: float, step: float) -> np.ndarray:
    """`(n, 3)` shifts ``(x, y, z)`` on a cubic grid of ``step`` voxels within ``radius``."""
    if step <= 0:
        raise ValueError(f"the scan's shift step must be positive, got {step}")
    m = int(np.floor(radius / step + 1e-9))
    axis = np.arange(-m, m + 1) * step
    g = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    g = g[np.sum(g**2, axis=1) <= radius**2 + 1e-9]
    g.setflags(write=False)
    return g


@dataclass(frozen=True)
class ScanReference:
    """An average's rotated spectra on a rotation grid, at the points of one band.

    Attributes
    ----------
    rotations
        `(n_rot, 3, 3)` the grid.
    real, imag
        `(n_rot, n_points)` float32 parts of the rotated spectra at ``band_points(box, band)``.
    power
        `(n_rot, n_points)` float32 ``real^2 + imag^2`` (the denominator's part, kept so that
        it is not recomputed per particle).
    box, band
        Box of the spectra (the translation box of the alignment) and band limit.
    """

    rotations: np.ndarray
    real: np.ndarray
    imag: np.ndarray
    power: np.ndarray
    box: int
    band: int


def scan_reference(
    padded: PaddedSpectrum, band: int, step_deg: float, chunk: int = 512
) -> ScanReference:
    """Rotate the average (its padded spectrum) to every rotation of the grid."""
    rotations = rotation_grid(step_deg)
    n_points = band_points(padded.box, band)[0].shape[0]
    real = np.empty((rotations.shape[0], n_points), dtype=np.float32)
    imag = np.empty_like(real)
    for s in range(0, rotations.shape[0], chunk):
        a = rotated_points(padded, rotations[s : s + chunk], band)
        real[s : s + chunk] = a.real
        imag[s : s + chunk] = a.imag
    return ScanReference(rotations, real, imag, real * real + imag * imag, padded.box, band)


def scan(
    reference: ScanReference,
    particle_ft: np.ndarray,
    weight_sq: np.ndarray,
    shifts: np.ndarray,
    shell_weights: np.ndarray | None,
    count: int,
    suppress_deg: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` best rotations of the grid, no two within ``suppress_deg``.

    Parameters
    ----------
    reference
        The rotated average.
    particle_ft, weight_sq
        `(N, N, N//2 + 1)` the particle's ``rfftn`` and squared Fourier weight, at the
        reference's box.
    shifts
        `(n_shifts, 3)` shifts ``(x, y, z)`` (voxels of that box) to try.
    shell_weights
        `(band + 1,)` weight per shell (index = shell), or ``None`` for equal weights.

    Returns
    -------
    tuple of np.ndarray
        `(m, 3, 3)` rotations, `(m, 3)` their best grid shifts and `(m,)` scores, best first.
    """
    box, band = reference.box, reference.band
    kzyx, flat, _ = band_points(box, band)
    mult = half_spectrum_multiplicity(box)[flat % (box // 2 + 1)]
    v = mult * weight_sq.reshape(-1)[flat]
    if shell_weights is not None:
        radius = np.rint(np.sqrt(np.sum(kzyx.astype(np.float64) ** 2, axis=1))).astype(int)
        v = v * np.asarray(shell_weights, dtype=np.float64)[np.minimum(radius, band)]
    v = np.where(flat == 0, 0.0, v).astype(np.float32)  # DC carries no pose
    x = v * particle_ft.reshape(-1)[flat]
    # exp(+2 pi i k.t): the conjugate of the shift's phase ramp, (n_points, n_shifts)
    z = x[:, None] * np.conj(shift_phases(kzyx.astype(np.float64), shifts, box)).T
    num = reference.real @ z.real.astype(np.float32) + reference.imag @ z.imag.astype(np.float32)
    den = np.sqrt(np.maximum(reference.power @ v, 1e-30))
    best_shift = np.argmax(num, axis=1)
    score = num[np.arange(num.shape[0]), best_shift] / den
    rotations = reference.rotations
    sel = distinct(rotations, suppress_deg, count, order=np.argsort(-score, kind="stable"))
    norm_x = np.sqrt(max(float(np.sum(v * np.abs(particle_ft.reshape(-1)[flat]) ** 2)), 1e-30))
    return rotations[sel].copy(), np.asarray(shifts)[best_shift[sel]], score[sel] / norm_x
