"""Wigner small-d matrices ``d^l_{m'm}(beta)`` for all degrees up to ``L``.

``d^l(beta) = exp(-i beta J_y)`` in the ``|l, m>`` basis with the standard (Condon-Shortley)
ladder elements ``<l, m+1| J_+ |l, m> = sqrt(l(l+1) - m(m+1))``. Each ``J_y`` is diagonalised
once (a Hermitian tridiagonal matrix: ``eigh`` is accurate to rounding), after which
``d^l(beta) = V diag(exp(-i beta lambda)) V^H`` for any ``beta``. The SO(3) correlation
built on it matches direct quadrature to float32 rounding (tested at L = 8, used up to
L = 32 and more); unlike recursions in ``beta`` it has no instability at high degree.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["wigner_d", "wigner_d_table"]


@lru_cache(maxsize=256)
def _jy_eigen(l: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: E741
    m = np.arange(-l, l + 1, dtype=np.float64)
    # <m+1|J+|m> for m = -l..l-1
    jp = np.sqrt(l * (l + 1) - m[:-1] * (m[:-1] + 1))
    jy = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    # J_y = (J+ - J-) / (2i); J+ has jp on the sub-diagonal (row m+1, column m).
    idx = np.arange(2 * l)
    jy[idx + 1, idx] = jp / 2j
    jy[idx, idx + 1] = -jp / 2j
    lam, vec = np.linalg.eigh(jy)
    return lam, vec


def wigner_d(l: int, betas: np.ndarray) -> np.ndarray:  # noqa: E741
    """``d^l_{m'm}(beta)`` for one degree.

    Parameters
    ----------
    l
        Degree ``>= 0``.
    betas
        `(n_beta,)` angles in radians.

    Returns
    -------
    np.ndarray
        `(n_beta, 2l + 1, 2l + 1)` float64, indexed ``[beta, m' + l, m + l]``.
    """
    betas = np.atleast_1d(np.asarray(betas, dtype=np.float64))
    lam, vec = _jy_eigen(int(l))
    phase = np.exp(-1j * betas[:, None] * lam[None, :])  # (n_beta, 2l+1)
    d = np.einsum("ik,bk,jk->bij", vec, phase, vec.conj())
    return d.real


@lru_cache(maxsize=8)
def wigner_d_table(degree: int, n_beta: int, even_only: bool) -> np.ndarray:
    """Cached table of ``d^l_{m'm}(beta_k)`` on the SOFT grid for the SO(3) correlation.

    ``beta_k = pi (2k + 1) / (2 n_beta)``, ``k = 0..n_beta-1`` (no poles).

    Parameters
    ----------
    degree
        ``L``: degrees ``0..L`` (or the even ones).
    n_beta
        Number of ``beta`` samples.
    even_only
        Keep only even ``l`` (enough for Friedel-symmetric data such as magnitude spectra).

    Returns
    -------
    np.ndarray
        `(n_beta, n_l, 2L + 1, L + 1)` float32 indexed ``[k, l_index, m' + L, m]`` for
        ``m >= 0`` only (the other half follows from symmetry); zero where ``|m'|`` or ``m``
        exceeds ``l``. Read-only.
    """
    L = int(degree)
    betas = np.pi * (2 * np.arange(n_beta) + 1) / (2 * n_beta)
    ls = np.arange(0, L + 1, 2 if even_only else 1)
    table = np.zeros((n_beta, ls.size, 2 * L + 1, L + 1), dtype=np.float32)
    for i, l in enumerate(ls):  # noqa: E741
        d = wigner_d(int(l), betas)  # (n_beta, 2l+1, 2l+1)
        table[:, i, L - l : L + l + 1, : l + 1] = d[:, :, l:]
    table.setflags(write=False)
    return table
