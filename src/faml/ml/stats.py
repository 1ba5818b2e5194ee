"""The sufficient statistics of the M-step, summed over particles, and the class frame.

The cross terms of the likelihood and the M-step sums are computed in each class's frame, in
Fourier space. For a candidate ``phi = (R, t)`` (the particle is ``X = w T_phi A``, RELION's
sense) the particle seen from the class frame is, at class-frame frequency ``k'``,

.. code-block:: text

    Y_phi(k') = X(R k') exp(+2 pi i (R k').t)    w_phi(k') = w(R k')    v_phi(k') = w²(R k')

read by one trilinear gather from the particle's padded, gridding-corrected spectrum
(:mod:`faml.align.fourier_rotation`) and from its weight ``w`` and ``w²`` (interpolated
separately: ``w_phi² <= v_phi``, so the interpolated model never explains more of the data
than the data hold) (:func:`class_frame`). The terms that do not depend on the pose, the
particle's power ``XX_r = sum_r |X|^2`` and its count of observed components
``c_r = #{w != 0}`` per shell, are taken from the particle as it is
(:func:`particle_shells`): interpolation damps noise by a factor that depends on the
sub-voxel position, and at SNR 0.01 that bias outweighed the signal.

:class:`Stats` holds, per half-set and class, ``n = sum g``, ``S = sum g w_phi Y_phi``,
``W = sum g v_phi``; per shell ``P_r = sum_i XX_r`` and ``C_r = sum_i c_r``; and
``D = sum g |t|^2`` (DESIGN.md 3.4). Statistics add (``a + b``), so the per-particle ones sum
along one binary tree over the particle indices (:class:`faml.parallel.TreeSum`) and any
batch size or number of workers gives the same sums to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from faml.align.fourier_rotation import (
    PaddedSpectrum,
    band_points,
    gather_half_spectrum,
    rotated_points,
    shift_phases,
)
from faml.align.translate import half_spectrum_multiplicity
from faml.geometry.axes import matrix_xyz_to_zyx
from faml.geometry.transform import inverse_transform
from faml.ml.fourier import shell_index

__all__ = [
    "Stats",
    "accumulate",
    "binned",
    "class_frame",
    "frame_points",
    "particle_shells",
    "reference_points",
    "shell_sums",
    "turned_weights",
    "with_square",
]


@dataclass
class Stats:
    """Summable sufficient statistics of a set of particles (see the module docstring).

    ``S`` and ``W`` are kept only at the class-frame points of ``band_points(N, band)``
    (the rest of the spectrum gets nothing): `(2, K, P)` complex128 and float64, per
    half-set and class; ``n`` `(2, K)`; ``power`` and ``count`` `(N//2 + 1,)` per shell;
    ``level`` `(2, K, N//2 + 1)` per half-set, class and shell ``sum g m_r``, with ``m_r``
    a particle's mean squared weight over its observed components of shell ``r`` (1 for a
    binary wedge: then ``level = n``), the scale of the M-step's floor
    (:func:`compensated_mean`).
    :meth:`dense` gives the `(2, K, N, N, N//2 + 1)` arrays. ``a + b`` is a new object
    (the inputs are left alone), so sums can be formed in any tree
    (:class:`faml.parallel.reduce.TreeSum`).
    """

    box: int
    band: int
    S: np.ndarray
    W: np.ndarray
    n: np.ndarray
    power: np.ndarray
    count: np.ndarray
    level: np.ndarray
    shift2: float = 0.0
    loglik: float = 0.0
    particles: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def zeros(cls, classes: int, box: int, band: int | None = None) -> Stats:
        """Empty statistics with sums up to shell ``band`` (default ``N//2 - 1``)."""
        band = box // 2 - 1 if band is None else int(min(band, box // 2 - 1))
        points = frame_points(box, band)[1].size
        half = box // 2 + 1
        return cls(
            box=box,
            band=band,
            S=np.zeros((2, classes, points), dtype=np.complex128),
            W=np.zeros((2, classes, points)),
            n=np.zeros((2, classes)),
            power=np.zeros(half),
            count=np.zeros(half),
            level=np.zeros((2, classes, half)),
        )

    def _check(self, other: Stats) -> None:
        if (self.box, self.band, self.S.shape) != (other.box, other.band, other.S.shape):
            raise ValueError(
                f"cannot add statistics of box {other.box}, band {other.band}, "
                f"{other.S.shape} to box {self.box}, band {self.band}, {self.S.shape}"
            )

    def __add__(self, other: Stats) -> Stats:
        self._check(other)
        timings = dict(self.timings)
        for k, v in other.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        return Stats(
            box=self.box,
            band=self.band,
            S=self.S + other.S,
            W=self.W + other.W,
            n=self.n + other.n,
            power=self.power + other.power,
            count=self.count + other.count,
            level=self.level + other.level,
            shift2=self.shift2 + other.shift2,
            loglik=self.loglik + other.loglik,
            particles=self.particles + other.particles,
            timings=timings,
        )

    def __iadd__(self, other: Stats) -> Stats:
        self._check(other)
        self.S += other.S
        self.W += other.W
        self.n += other.n
        self.power += other.power
        self.count += other.count
        self.level += other.level
        self.shift2 += other.shift2
        self.loglik += other.loglik
        self.particles += other.particles
        for k, v in other.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        return self

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """``S`` and ``W`` on the whole `(2, K, N, N, N//2 + 1)` grid (zero beyond the band)."""
        box = self.box
        shape = (*self.S.shape[:2], box, box, box // 2 + 1)
        flat = frame_points(box, self.band)[1]
        S = np.zeros(shape, dtype=np.complex128)
        W = np.zeros(shape)
        S.reshape(*shape[:2], -1)[:, :, flat] = self.S
        W.reshape(*shape[:2], -1)[:, :, flat] = self.W
        return S, W


def shell_sums(values: np.ndarray, box: int, band: int) -> np.ndarray:
    """Per-shell sums `(B, N//2 + 1)` of `(B, N, N, N//2 + 1)` values, shells ``1..band``."""
    idx = shell_index(box)
    n = box // 2 + 1
    flat = np.where((idx >= 1) & (idx <= band), idx, n).reshape(-1)  # n: discarded bin
    return binned(values.reshape(values.shape[0], -1), flat, n)


def binned(values: np.ndarray, bins: np.ndarray, n: int) -> np.ndarray:
    """`(B, n)` sums of `(B, P)` ``values`` by `(P,)` ``bins`` in ``0..n`` (``n`` discarded)."""
    b = values.shape[0]
    offs = (np.arange(b)[:, None] * (n + 1) + bins[None, :]).reshape(-1)
    sums = np.bincount(offs, weights=values.reshape(-1), minlength=b * (n + 1))
    return sums.reshape(b, n + 1)[:, :n]


@lru_cache(maxsize=16)
def frame_points(box: int, band: int):
    """Band points with their shell (shell 0 and beyond ``band`` -> discarded bin) and weight."""
    kzyx, flat, _ = band_points(box, band)
    shell = shell_index(box).reshape(-1)[flat]
    shell = np.where((shell >= 1) & (shell <= band), shell, box // 2 + 1)
    mult = half_spectrum_multiplicity(box)[flat % (box // 2 + 1)]
    return kzyx.astype(np.float64), flat, shell, mult


def reference_points(spectra: np.ndarray, band: int) -> np.ndarray:
    """`(K, n)` complex64 values of `(K, N, N, N//2 + 1)` spectra at ``band_points(N, band)``."""
    box = spectra.shape[-3]
    flat = band_points(box, band)[1]
    return spectra.reshape(spectra.shape[0], -1)[:, flat].astype(np.complex64)


def class_frame(
    padded: PaddedSpectrum,
    wedge: np.ndarray,
    rotations: np.ndarray,
    shifts: np.ndarray,
    band: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A particle seen from the class frame of each candidate, at ``band_points(N, band)``.

    Parameters
    ----------
    padded
        The particle's padded spectrum (:func:`~faml.align.fourier_rotation.padded_spectrum`).
    wedge
        `(N, N, N//2 + 1)` its Fourier weight ``w``, or `(2, N, N, N//2 + 1)` ``w`` and ``w²``
        (:func:`with_square`, formed once per particle by the callers that need it often).
    rotations, shifts
        `(B, 3, 3)` and `(B, 3)` candidates ``(R, t)`` (particle = ``T_(R, t)`` class).

    Returns
    -------
    tuple of np.ndarray
        ``Y`` `(B, n)` complex64 (the particle moved back by ``T^-1``) and `(B, 2, n)` float32
        its weight and squared weight, ``w(R k')`` and ``w²(R k')``.
    """
    kzyx, _, _, _ = frame_points(padded.box, band)
    inv_r, inv_t = inverse_transform(rotations, shifts)
    y = rotated_points(padded, inv_r, band)
    y *= shift_phases(kzyx, inv_t, padded.box).astype(np.complex64)
    stacked = wedge if np.ndim(wedge) == 4 else with_square(wedge)
    return y, turned_weights(stacked, kzyx, rotations)


def with_square(wedge: np.ndarray) -> np.ndarray:
    """`(2, N, N, N//2 + 1)` float32 ``w`` and ``w²``."""
    w = np.asarray(wedge, dtype=np.float32)
    return np.stack([w, w * w])


def turned_weights(weight: np.ndarray, kzyx: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """`(B, n)` float32 ``w(R k')`` of a `(N, N, N//2 + 1)` Fourier weight, trilinear.

    ``kzyx``: `(n, 3)` the points ``k'``; ``rotations``: `(B, 3, 3)`. A `(C, N, N, N//2 + 1)`
    stack of weights gives `(B, C, n)`.
    """
    stacked = np.ndim(weight) == 4
    weight32 = np.ascontiguousarray(weight if stacked else weight[None], dtype=np.float32)
    w = np.empty((len(rotations), weight32.shape[0], kzyx.shape[0]), dtype=np.float32)
    for b, rotation in enumerate(np.asarray(rotations, dtype=np.float64)):
        gather_half_spectrum(weight32, kzyx @ matrix_xyz_to_zyx(rotation).T, w[b])
    return w if stacked else w[:, 0]


def accumulate(
    stats, padded, wedge, half, klass, weights, rotations, shifts, shells, centre=None
) -> None:
    """Add candidates with responsibilities ``weights`` `(B,)` to the sums of one class.

    ``shells``: the particle's :func:`particle_shells` (its power and count per shell enter
    ``P`` and ``C`` with the candidates' total weight). ``S`` and ``W`` get the shells up to
    ``stats.band``. ``centre``: where the translation prior is centred (a local search: the
    particle's prior offset; default the box centre), for ``D = sum g |t - centre|^2``.
    """
    y, w = class_frame(padded, wedge, rotations, shifts, stats.band)
    g = np.asarray(weights, dtype=np.float64)
    stats.S[half, klass] += np.einsum("bn,bn->n", g[:, None] * w[:, 0], y)
    stats.W[half, klass] += np.einsum("b,bn->n", g, w[:, 1])
    stats.n[half, klass] += g.sum()
    stats.power += g.sum() * shells[0]
    stats.count += g.sum() * shells[1]
    stats.level[half, klass] += g.sum() * shells[2]
    offsets = np.asarray(shifts) if centre is None else np.asarray(shifts) - centre
    stats.shift2 += float(g @ np.sum(offsets**2, axis=1))


def particle_shells(particle_ft: np.ndarray, wedge: np.ndarray) -> np.ndarray:
    """`(3, N//2 + 1)` per shell ``XX_r = sum_{w != 0} |X|^2``, ``c_r = #{w != 0}`` and ``m_r``.

    ``m_r``: the mean of ``w²`` over the observed components of the shell (1 where none is
    observed, and for a binary wedge), the particle's share of :attr:`Stats.level`.

    Shells ``1..N//2 - 1``, full-spectrum sums. These two terms of the likelihood do not
    depend on the candidate: they are taken from the particle as it is, not from its
    interpolated class-frame copy (trilinear interpolation damps noise by a factor that
    depends on the sub-voxel position, i.e. on the candidate, and that bias outweighed the
    signal at SNR 0.01).
    """
    box = particle_ft.shape[0]
    wm = (wedge != 0) * half_spectrum_multiplicity(box)
    vals = np.stack([wm * (particle_ft.real**2 + particle_ft.imag**2), wm, wm * wedge * wedge])
    xx, count, squares = shell_sums(vals, box, box // 2 - 1)
    level = np.ones_like(count)
    np.divide(squares, count, out=level, where=count > 0)
    return np.stack([xx, count, level])
