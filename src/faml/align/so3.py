"""Rotational correlation of functions on spherical shells over a whole SO(3) grid at once.

For real functions ``f_s`` and ``g_s`` on shells ``s`` with harmonic coefficients ``f_slm``,
``g_slm`` (orthonormal, Condon-Shortley), the correlation

.. code-block:: text

    C(R) = sum_s  integral  f_s(u) g_s(R^-1 u) du ,      R = Rz(alpha) Ry(beta) Rz(gamma)

(the rotation active, scipy's intrinsic ``"ZYZ"``; ``g o R^-1`` is ``g`` rotated by ``R``) is

.. code-block:: text

    C(alpha, beta, gamma) = sum_{m', m} exp(i (m' alpha + m gamma)) S_{m'm}(beta)
    S_{m'm}(beta) = sum_l d^l_{m'm}(beta) P^l_{m'm},   P^l_{m'm} = sum_s f_slm' conj(g_slm)

so one inverse 2D real FFT over ``(m', m)`` per ``beta`` gives ``C`` on the whole grid
(Kovacs & Wriggers 2002). The grid is ``beta_k = pi (2k + 1) / (4L + 4)``, ``k = 0..2L+1``
(no poles) and ``n`` equispaced ``alpha`` and ``gamma`` with ``n >= 2L + 2`` even, so that
the ``m = +-L`` terms do not alias and a rotation by ``pi`` is a whole number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.spatial.transform import Rotation

from faml.align._kernels import wigner_sum
from faml.align._wigner import wigner_d_table

__all__ = ["EulerGrid", "euler_grid", "so3_correlate", "full_orders"]


@dataclass(frozen=True)
class EulerGrid:
    """The SO(3) sampling of :func:`so3_correlate` for band limit ``degree``.

    Arrays produced on this grid are indexed ``[beta, alpha, gamma]``. Grid point
    ``(b, a, g)`` is the rotation ``Rz(alphas[a]) Ry(betas[b]) Rz(gammas[g])``.
    """

    degree: int
    alphas: np.ndarray
    betas: np.ndarray
    gammas: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(n_beta, n_alpha, n_gamma)`."""
        return (self.betas.size, self.alphas.size, self.gammas.size)

    @property
    def step_deg(self) -> float:
        """The coarsest grid step in degrees (the ``alpha``/``gamma`` step)."""
        return 360.0 / self.alphas.size

    def matrices(self, euler: np.ndarray) -> np.ndarray:
        """Rotation matrices `(..., 3, 3)` for `(..., 3)` ``(alpha, beta, gamma)`` in radians."""
        euler = np.asarray(euler, dtype=np.float64)
        flat = Rotation.from_euler("ZYZ", euler.reshape(-1, 3)).as_matrix()
        return flat.reshape(euler.shape[:-1] + (3, 3))

    def angles(self, index: np.ndarray) -> np.ndarray:
        """``(alpha, beta, gamma)`` in radians of grid indices.

        ``index`` is `(..., 3)` ``(b, a, g)``, possibly fractional; returns `(..., 3)`.
        """
        index = np.asarray(index, dtype=np.float64)
        da = 2 * np.pi / self.alphas.size
        dg = 2 * np.pi / self.gammas.size
        db = np.pi / self.betas.size
        return np.stack(
            [index[..., 1] * da, (index[..., 0] + 0.5) * db, index[..., 2] * dg], axis=-1
        )


@lru_cache(maxsize=16)
def euler_grid(degree: int) -> EulerGrid:
    """The cached :class:`EulerGrid` for band limit ``degree``."""
    L = int(degree)
    n = 2 * int(scipy.fft.next_fast_len(L + 1, real=True))
    n_beta = 2 * L + 2
    alphas = 2 * np.pi * np.arange(n) / n
    betas = np.pi * (2 * np.arange(n_beta) + 1) / (2 * n_beta)
    for a in (alphas, betas):
        a.setflags(write=False)
    return EulerGrid(L, alphas, betas, alphas)


def full_orders(coeffs: np.ndarray) -> np.ndarray:
    """Extend `(..., n_l, L + 1)` coefficients of real functions (``m >= 0``) to all orders.

    Returns `(..., n_l, 2L + 1)` indexed ``[..., l, m + L]`` using
    ``f_{l,-m} = (-1)^m conj(f_lm)``.
    """
    L = coeffs.shape[-1] - 1
    out = np.zeros(coeffs.shape[:-1] + (2 * L + 1,), dtype=coeffs.dtype)
    out[..., L:] = coeffs
    m = np.arange(1, L + 1)
    sign = np.where(m % 2 == 0, 1.0, -1.0)
    out[..., :L][..., ::-1] = sign * np.conj(coeffs[..., 1:])
    return out


def so3_correlate(f: np.ndarray, g: np.ndarray, degrees: np.ndarray, grid: EulerGrid) -> np.ndarray:
    """Correlate real shell functions over every rotation of ``grid``.

    Parameters
    ----------
    f, g
        `(C, S, n_l, L + 1)` harmonic coefficients (``m >= 0``) of ``C`` independent pairs of
        functions on ``S`` shells, for the degrees ``degrees``. Shell weights, if any, are
        already folded into ``f``.
    degrees
        `(n_l,)` the degrees ``l`` of the coefficient rows: all ``0..L`` or the even ones.
    grid
        The Euler grid of band limit ``L``.

    Returns
    -------
    np.ndarray
        `(C, n_beta, n_alpha, n_gamma)` float32: ``C(R) = sum_s <f_s, g_s o R^-1>``.
    """
    L = grid.degree
    degrees = np.asarray(degrees, dtype=np.int64)
    if f.shape != g.shape or f.ndim != 4 or f.shape[-1] != L + 1 or f.shape[2] != degrees.size:
        raise ValueError(
            f"coefficient arrays must both be (C, S, {degrees.size}, {L + 1}), "
            f"got {f.shape} and {g.shape}"
        )
    even_only = bool(np.all(degrees % 2 == 0)) and degrees.size < L + 1
    expected = np.arange(0, L + 1, 2 if even_only else 1)
    if not np.array_equal(degrees, expected):
        raise ValueError(f"degrees must be all of 0..{L} or the even ones, got {degrees}")
    # P^l_{m'm} = sum_s f_slm' conj(g_slm): one batched matmul over (C, l).
    f_full = full_orders(f)  # (C, S, n_l, 2L+1)
    prod = np.matmul(
        f_full.transpose(0, 2, 3, 1), np.conj(g).transpose(0, 2, 1, 3)
    )  # (C, n_l, 2L+1, L+1)
    n_beta, n_alpha, n_gamma = grid.shape
    d_table = wigner_d_table(L, n_beta, even_only)
    spec = np.zeros((f.shape[0], n_beta, n_alpha, n_gamma // 2 + 1), dtype=np.complex64)
    wigner_sum(
        d_table,
        degrees,
        np.ascontiguousarray(prod.real, dtype=np.float32),
        np.ascontiguousarray(prod.imag, dtype=np.float32),
        spec,
    )
    out = scipy.fft.irfft2(spec, s=(n_alpha, n_gamma), axes=(-2, -1), workers=1)
    out *= n_alpha * n_gamma
    return out
