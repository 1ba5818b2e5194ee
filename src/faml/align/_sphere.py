"""Spherical grids and the spherical harmonic analysis of shells.

Harmonics are orthonormal with the Condon-Shortley phase (scipy's ``sph_harm_y``):
``Y_lm(theta, phi) = Lambda_lm(cos theta) exp(i m phi)``. A real function ``f`` on the sphere
has ``f_{l,-m} = (-1)^m conj(f_lm)``, so only ``m >= 0`` is stored.

The sampling grid is Gauss-Legendre in ``cos(theta)`` (``L + 1`` nodes) times ``n_phi``
equispaced longitudes (``n_phi >= 2L + 1``): the analysis is exact for band-limited functions
of degree ``<= L``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.special import roots_legendre, sph_harm_y, sph_legendre_p

__all__ = ["SphereGrid", "sphere_grid", "analyse", "synthesise"]


@dataclass(frozen=True)
class SphereGrid:
    """A Gauss-Legendre x equispaced grid on the unit sphere for degree ``L``.

    Attributes
    ----------
    degree
        The band limit ``L``.
    theta
        `(n_theta,)` colatitudes (radians), ``n_theta = L + 1``.
    phi
        `(n_phi,)` longitudes (radians), ``n_phi`` even and ``>= 2L + 2``.
    weights
        `(n_theta,)` quadrature weights of the nodes times ``2 pi / n_phi``.
    directions
        `(n_theta, n_phi, 3)` unit vectors ``(x, y, z)``.
    legendre
        `(L + 1, L + 1, n_theta)` table ``Lambda_lm(theta_j)`` for ``l, m >= 0`` (zero for
        ``m > l``), float64.
    """

    degree: int
    theta: np.ndarray
    phi: np.ndarray
    weights: np.ndarray
    directions: np.ndarray
    legendre: np.ndarray

    @property
    def n_theta(self) -> int:
        return self.theta.size

    @property
    def n_phi(self) -> int:
        return self.phi.size


@lru_cache(maxsize=16)
def sphere_grid(degree: int) -> SphereGrid:
    """The cached :class:`SphereGrid` for band limit ``degree`` (``L >= 1``)."""
    degree = int(degree)
    if degree < 1:
        raise ValueError(f"spherical harmonic degree must be >= 1, got {degree}")
    x, w = roots_legendre(degree + 1)
    theta = np.arccos(x)
    n_phi = int(scipy.fft.next_fast_len(2 * degree + 2, real=True))
    n_phi += n_phi % 2
    phi = 2.0 * np.pi * np.arange(n_phi) / n_phi
    st = np.sin(theta)[:, None]
    directions = np.stack(
        [
            st * np.cos(phi)[None, :],
            st * np.sin(phi)[None, :],
            np.broadcast_to(x[:, None], (x.size, n_phi)),
        ],
        axis=-1,
    )
    ls = np.arange(degree + 1)
    table = np.zeros((degree + 1, degree + 1, theta.size))
    for m in range(degree + 1):
        table[m:, m, :] = sph_legendre_p(ls[m:, None], m, theta[None, :])
    for arr in (theta, phi, directions, table):
        arr.setflags(write=False)
    weights = w * (2.0 * np.pi / n_phi)
    weights.setflags(write=False)
    return SphereGrid(degree, theta, phi, weights, directions, table)


def analyse(values: np.ndarray, grid: SphereGrid, degrees: np.ndarray | None = None) -> np.ndarray:
    """Spherical harmonic coefficients of real functions sampled on ``grid``.

    Parameters
    ----------
    values
        `(..., n_theta, n_phi)` real samples.
    grid
        The grid the samples were taken on.
    degrees
        Optional `(n_l,)` subset of degrees ``l`` to return (e.g. even ``l`` only).

    Returns
    -------
    np.ndarray
        `(..., n_l, L + 1)` complex128 ``f_lm`` for ``m = 0..L`` (zero for ``m > l``).
    """
    values = np.asarray(values)
    if values.shape[-2:] != (grid.n_theta, grid.n_phi):
        raise ValueError(
            f"samples must have shape (..., {grid.n_theta}, {grid.n_phi}), got {values.shape}"
        )
    L = grid.degree
    # Integral over phi: sum_k f(phi_k) exp(-i m phi_k), m = 0..L.
    fm = scipy.fft.rfft(values, axis=-1)[..., : L + 1]  # (..., n_theta, L+1)
    fm = fm * grid.weights[:, None]
    table = grid.legendre if degrees is None else grid.legendre[np.asarray(degrees)]
    # f_lm = sum_j Lambda_lm(theta_j) * fm[j, m]
    return np.einsum("lmj,...jm->...lm", table, fm)


def synthesise(coeffs: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Evaluate the real function ``sum_lm f_lm Y_lm`` at arbitrary directions.

    The inverse of :func:`analyse` for band-limited functions, at any points (not only a
    grid's nodes): used to evaluate rotated functions directly, e.g. to check the SO(3)
    correlation against quadrature.

    Parameters
    ----------
    coeffs
        `(L + 1, L + 1)` coefficients ``f_lm`` for ``m >= 0`` (rows ``l``; zero for ``m > l``).
    directions
        `(..., 3)` unit vectors ``(x, y, z)``.

    Returns
    -------
    np.ndarray
        `(...)` float64 values.
    """
    coeffs = np.asarray(coeffs)
    directions = np.asarray(directions, dtype=np.float64)
    if coeffs.ndim != 2 or coeffs.shape[0] != coeffs.shape[1]:
        raise ValueError(f"coeffs must be (L+1, L+1), got {coeffs.shape}")
    if directions.shape[-1:] != (3,):
        raise ValueError(f"directions must be (..., 3), got {directions.shape}")
    theta = np.arccos(np.clip(directions[..., 2], -1.0, 1.0))
    phi = np.arctan2(directions[..., 1], directions[..., 0])
    out = np.zeros(theta.shape)
    for l in range(coeffs.shape[0]):  # noqa: E741
        for m in range(l + 1):
            if coeffs[l, m] == 0:
                continue
            term = (coeffs[l, m] * sph_harm_y(l, m, theta, phi)).real
            out += term if m == 0 else 2.0 * term
    return out
