"""One FAML / FA iteration as map-reduce: per-particle statistics, summed, then the M-step.

Every particle is used in one form, whatever form it was stored in (:func:`load_particle`,
DESIGN.md section 2): ``X = w T_phi A + noise`` with white noise of variance ``sigma_r^2``
per shell and the weight ``w`` multiplying the reference (a binary wedge, ``|CTF|`` of
phase-flipped data, the signed CTF; CTF-premultiplied data ``D, C`` whitened,
``X = D / sqrt(C)``, ``w = sqrt(C)``). Its likelihood is
``-sum_k |X_k - w_k A_k|^2 / (2 sigma^2)`` over the observed components (``w != 0``) and
its M-step ``A = sum T^-1(w X) / sum T^-1(w²)`` (premultiplied: ``sum T^-1 D / sum T^-1 C``).
With a binary wedge ``w² = w`` and this is the paper's model.

The cross terms of the likelihood and the M-step sums are computed in each class's frame, in
Fourier space. For a candidate ``phi = (R, t)`` (the particle is ``X = w T_phi A``, RELION's
sense) the particle seen from the class frame is, at class-frame frequency ``k'``,

.. code-block:: text

    Y_phi(k') = X(R k') exp(+2 pi i (R k').t)    w_phi(k') = w(R k')    v_phi(k') = w²(R k')

read by one trilinear gather from the particle's padded, gridding-corrected spectrum
(:mod:`faml.align.fourier_rotation`) and from its weight ``w`` and ``w²`` (interpolated
separately: ``w_phi² <= v_phi``, so the interpolated model never explains more of the data
than the data hold). The terms that do not depend on the pose, the particle's power
``XX_r = sum_r |X|^2`` and its count of observed components ``c_r = #{w != 0}`` per shell,
are taken from the particle as it is (:func:`particle_shells`): interpolation damps noise by
a factor that depends on the sub-voxel position, and at SNR 0.01 that bias outweighed the
signal. The E-step and the
M-step use the same terms, so with the candidates held fixed one iteration is a
generalised EM step of the approximate likelihood and never lowers it (tested).

Map (per particle ``i``, every class ``k``; :func:`process_chunk`):

1. candidates ``Phi_ik`` from :func:`faml.align.align_to` against the class's filtered,
   masked average (magnitude search plus the phase-aware scan), and (FAML) six neighbours
   of each of the best ``config.local_candidates`` (:func:`with_neighbours`);
2. (FAML, ``config.voronoi``) Voronoi weights ``nu`` of the candidates
   (:mod:`faml.ml.voronoi`), else equal weights;
3. (FAML) E-step in the log domain (DESIGN.md 3.3), over shells ``r = 1..band_e`` (the
   current resolution plus a margin) with one noise variance ``sigma_r^2`` per shell:

   .. code-block:: text

       log e = log alpha_k + log nu - |t|^2 / (2 xi^2) - 3/2 log(2 pi xi^2)
               - 1/2 sum_r [d_r(phi) / sigma_r^2 + c_r log(2 pi sigma_r^2)]
       d_r(phi) = XX_r - 2 XA_r(phi) + AA_r(phi)
       XA_r = sum_{k' in r} w_phi Re(conj(A_k) Y_phi)     AA_r = sum_{k' in r} v_phi |A_k|^2

   (sums over the full spectrum: half-layout points weighted by their multiplicity).
   With ``config.likelihood == "scaled"`` (the default) ``A_k`` is ``a A_k`` with the
   amplitude ``a >= 0`` that fits the candidate best (profiled out, as a per-particle
   scale): ``sum_r d_r / sigma_r^2 = XX - max(XA, 0)^2 / AA`` (each ``1 / sigma_r^2``
   weighted). The filtered average is smaller than the particles' signal where its FSC is
   low, and the plain likelihood then rewards poses that put the average's strong
   directions into the missing wedge. Responsibilities ``g = softmax(log e)`` over all
   classes and candidates (log-sum-exp), whose log-normaliser is the particle's
   approximate log-likelihood. FA instead gives weight 1 to the single best candidate by
   the wedge-constrained correlation, over all classes;
4. sufficient statistics (DESIGN.md 3.4), summed over the candidates that carry weight
   (``g >= config.min_responsibility * max g``, renormalised), up to shell ``band_m`` (twice
   the likelihood's band; the start: the whole sphere ``|k'| < N/2``): per half-set and
   class ``n = sum g``, ``S = sum g w_phi Y_phi``, ``W = sum g v_phi``; per shell
   ``P_r = sum_i XX_r`` and ``C_r = sum_i c_r``; and ``D = sum g |t|^2``.

Reduce: the per-particle :class:`Stats` add up along one binary tree over the particle
indices (:class:`faml.parallel.reduce.TreeSum`), so any batch size and any number of
workers give the same sums to the last bit. M-step (:func:`m_step`):
``A = (S + (n - W) A_old) / n`` (paper eq. 10: voxels never observed keep their value; a
step towards ``S / W``, the maximiser, by ``W / n``),
``alpha = n / N``, ``sigma_r^2 = sum g d_r(A_new) / C_r`` from ``P``, ``S``, ``W``
(the maximiser given the new averages), ``xi^2 = D / (3 N)`` (floored at one voxel);
FA: ``A = S / max(W, 0.1 L)`` (:func:`compensated_mean`; ``L = n`` for binary wedges).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.special import logsumexp

from faml.align import AlignSettings, PreparedAverage, align_to
from faml.align._kernels import gather_half_spectrum
from faml.align.fast import grid_candidates
from faml.align.fourier_rotation import (
    PaddedSpectrum,
    band_points,
    padded_spectrum,
    rotated_points,
    shift_phases,
)
from faml.align.translate import half_spectrum_multiplicity
from faml.geometry.axes import matrix_xyz_to_zyx
from faml.geometry.masks import soft_sphere
from faml.geometry.rotations import axis_stencil, random_rotations
from faml.geometry.transform import inverse_transform
from faml.geometry.wedge import whitened
from faml.io.particles import ParticleTable, TableRows
from faml.ml.config import RunConfig
from faml.ml.fourier import shell_index
from faml.ml.voronoi import rng_for, voronoi_weights
from faml.parallel.reduce import TreeSum

__all__ = [
    "Candidates",
    "ParticleResult",
    "StepContext",
    "Stats",
    "class_frame",
    "compensated_mean",
    "hard_chunk",
    "hard_particle",
    "initial_assignment",
    "initial_chunk",
    "load_particle",
    "log_likelihoods",
    "m_step",
    "particle_shells",
    "process_chunk",
    "process_particle",
    "reference_points",
    "responsibilities",
    "shell_sums",
    "symmetrize_stats",
    "turned_weights",
    "neighbour_step_deg",
    "with_neighbours",
]


@dataclass(frozen=True)
class StepContext:
    """What every worker needs for one iteration (sent to each worker once, read-only).

    Attributes
    ----------
    config
        The run's configuration.
    iteration
        1-based iteration number (0: the random start).
    box
        ``N``.
    log_alpha
        `(K,)` log class priors.
    sigma2
        `(N//2 + 1,)` noise variance per shell (only shells ``1..band_e`` are used).
    xi
        Translation prior standard deviation (voxels).
    align
        Per class the prepared average of the fast alignment.
    references
        `(K, n)` complex64: the averages the likelihood compares with (filtered and masked in
        a run), at the points of ``band_points(N, band_e)``.
    band_e
        Outermost shell of the likelihood.
    halves
        `(n,)` 0/1 half-set of each particle, or ``None`` when each task says it (a run's
        workers: their memory must not grow with the data set).
    band_m
        Outermost shell of the M-step sums (``None``: the whole sphere, ``N//2 - 1``).
    half_align, half_references
        Gold-standard iterations: per half-set (index 0, 1) what ``align`` and
        ``references`` are otherwise; each particle meets only its own half's averages.
        ``None``: both halves use ``align`` and ``references``.
    """

    config: RunConfig
    iteration: int
    box: int
    log_alpha: np.ndarray
    sigma2: np.ndarray
    xi: float
    align: tuple[PreparedAverage, ...]
    references: np.ndarray
    band_e: int
    halves: np.ndarray | None
    band_m: int | None = None
    half_align: tuple[tuple[PreparedAverage, ...], tuple[PreparedAverage, ...]] | None = None
    half_references: np.ndarray | None = None

    def for_half(self, half: int) -> tuple[tuple[PreparedAverage, ...], np.ndarray]:
        """The prepared averages and likelihood references a particle of ``half`` meets."""
        if self.half_align is None or self.half_references is None:
            return self.align, self.references
        return self.half_align[half], self.half_references[half]


Candidates = list[tuple[np.ndarray, np.ndarray, np.ndarray]]
"""A particle's candidates, per class ``(rotations (M, 3, 3), shifts (M, 3), nu (M,))``."""


@dataclass(frozen=True)
class ParticleResult:
    """A particle's outcome of one iteration (what the STAR file and the reports need)."""

    index: int
    klass: int  # 0-based
    rotation: np.ndarray
    shift: np.ndarray
    max_probability: float
    n_significant: int  # candidates carrying 90% of the weight
    fit: float = 0.0  # FAML: the particle's log-likelihood; FA: its best correlation


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
        points = _frame_points(box, band)[1].size
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
        flat = _frame_points(box, self.band)[1]
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
    return _binned(values.reshape(values.shape[0], -1), flat, n)


def _binned(values: np.ndarray, bins: np.ndarray, n: int) -> np.ndarray:
    """`(B, n)` sums of `(B, P)` ``values`` by `(P,)` ``bins`` in ``0..n`` (``n`` discarded)."""
    b = values.shape[0]
    offs = (np.arange(b)[:, None] * (n + 1) + bins[None, :]).reshape(-1)
    sums = np.bincount(offs, weights=values.reshape(-1), minlength=b * (n + 1))
    return sums.reshape(b, n + 1)[:, :n]


@lru_cache(maxsize=16)
def _frame_points(box: int, band: int):
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
        (:func:`_with_square`, formed once per particle by the callers that need it often).
    rotations, shifts
        `(B, 3, 3)` and `(B, 3)` candidates ``(R, t)`` (particle = ``T_(R, t)`` class).

    Returns
    -------
    tuple of np.ndarray
        ``Y`` `(B, n)` complex64 (the particle moved back by ``T^-1``) and `(B, 2, n)` float32
        its weight and squared weight, ``w(R k')`` and ``w²(R k')``.
    """
    kzyx, _, _, _ = _frame_points(padded.box, band)
    inv_r, inv_t = inverse_transform(rotations, shifts)
    y = rotated_points(padded, inv_r, band)
    y *= shift_phases(kzyx, inv_t, padded.box).astype(np.complex64)
    stacked = wedge if np.ndim(wedge) == 4 else _with_square(wedge)
    return y, turned_weights(stacked, kzyx, rotations)


def _with_square(wedge: np.ndarray) -> np.ndarray:
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


def _accumulate(stats, padded, wedge, half, klass, weights, rotations, shifts, shells) -> None:
    """Add candidates with responsibilities ``weights`` `(B,)` to the sums of one class.

    ``shells``: the particle's :func:`particle_shells` (its power and count per shell enter
    ``P`` and ``C`` with the candidates' total weight). ``S`` and ``W`` get the shells up to
    ``stats.band``.
    """
    y, w = class_frame(padded, wedge, rotations, shifts, stats.band)
    g = np.asarray(weights, dtype=np.float64)
    stats.S[half, klass] += np.einsum("bn,bn->n", g[:, None] * w[:, 0], y)
    stats.W[half, klass] += np.einsum("b,bn->n", g, w[:, 1])
    stats.n[half, klass] += g.sum()
    stats.power += g.sum() * shells[0]
    stats.count += g.sum() * shells[1]
    stats.level[half, klass] += g.sum() * shells[2]
    stats.shift2 += float(g @ np.sum(np.asarray(shifts) ** 2, axis=1))


@lru_cache(maxsize=8)
def _particle_mask(box: int, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The particle mask `(N, N, N)`, its complement and the complement's sum."""
    mask = soft_sphere(box, max(radius * box - PARTICLE_MASK_EDGE, 1.0), edge=PARTICLE_MASK_EDGE)
    outside = 1.0 - mask
    for a in (mask, outside):
        a.setflags(write=False)
    return mask, outside, max(float(np.sum(outside)), 1.0)


PARTICLE_MASK_EDGE = 3.0
"""Raised-cosine edge (voxels) of the particle mask, as the run's default reference mask."""


def load_particle(
    table: ParticleTable | TableRows, index: int, mask_radius: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Particle ``index``'s volume and Fourier weight, masked as the run uses it.

    Returns the `(N, N, N)` float32 volume ``X`` and the `(N, N, N//2 + 1)` weight ``w`` that
    multiplies the reference (:func:`faml.geometry.wedge.whitened`, from the table's CTF
    form and weight scale; the mask is applied to the volume as stored).

    ``mask_radius`` (a share of the box, :attr:`RunConfig.particle_mask_radius`): the
    volume's background level (its mean outside the sphere) is subtracted and the volume
    multiplied by a soft sphere of that radius (RELION's ``--zero_mask``), so that the
    neighbours, back-projection streaks and the noise of the box's corners stay out of the
    alignment, the likelihood, the noise estimate and the averages. ``None``: as stored.

    Measured on the 40 real EMPIAR-10499 ribosomes at their own refined poses and average
    (band 8): the true pose scored above 300 random rotations for 72% of the particles
    unmasked and 90% masked, and the FSC between the half-set averages of those poses
    reached 4 shells (96 A) unmasked against 11 masked.
    """
    vol, weight = table.load(int(index))
    if mask_radius is not None:
        mask, outside, total = _particle_mask(vol.shape[0], float(mask_radius))
        background = float(np.sum(vol * outside) / total)
        vol = ((vol - background) * mask).astype(np.float32)
    return whitened(vol, weight, table.ctf_premultiplied, table.weight_scale)


def hard_particle(
    table: ParticleTable | TableRows,
    index: int,
    klass: int,
    rotation: np.ndarray,
    shift: np.ndarray,
    classes: int,
    half: int,
    mask_radius: float | None = None,
) -> tuple[ParticleResult, Stats]:
    """Statistics of particle ``index`` (half-set ``half``) placed in ``klass`` at one pose.

    ``mask_radius``: as :func:`load_particle`'s.
    """
    vol, wedge = load_particle(table, index, mask_radius)
    stats = Stats.zeros(classes, table.box)
    shells = particle_shells(scipy.fft.rfftn(vol, workers=1), wedge)
    _accumulate(
        stats, padded_spectrum(vol), wedge, int(half), klass, [1.0], rotation[None],
        np.asarray(shift, dtype=np.float64)[None], shells,
    )  # fmt: skip
    stats.particles = 1
    return ParticleResult(int(index), klass, rotation, shift, 1.0, 1), stats


def _summed(pairs) -> tuple[list[ParticleResult], Stats]:
    """Results in order and the statistics summed along :class:`TreeSum`'s tree."""
    results, tree = [], TreeSum(len(pairs))
    for position, (result, stats) in enumerate(pairs):
        results.append(result)
        tree.add(position, stats)
    return results, tree.total()


def hard_chunk(
    table: ParticleTable,
    assignments: list[tuple[int, int, np.ndarray, np.ndarray]],
    classes: int,
    halves: np.ndarray,
) -> tuple[list[ParticleResult], Stats]:
    """Statistics of particles placed by hand: ``(index, class, rotation, shift)`` each."""
    return _summed(
        [hard_particle(table, i, k, r, t, classes, halves[i]) for i, k, r, t in assignments]
    )


def initial_assignment(
    config: RunConfig, index: int, start: int = 0
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Random start number ``start`` (DESIGN.md 3.5) of particle ``index``.

    The particle goes to a random class at a random rotation (uniform on SO(3)) and zero
    shift, so that no common wedge orientation survives in the starting averages. Start
    ``s`` draws from the generator of (seed, iteration 0, particle, ``s``).
    """
    rng = rng_for(config.seed, 0, int(index), start)
    klass = int(rng.integers(config.classes))
    return int(index), klass, random_rotations(1, rng)[0], np.zeros(3)


def initial_chunk(
    table: ParticleTable,
    indices: np.ndarray,
    config: RunConfig,
    halves: np.ndarray,
    start: int = 0,
) -> tuple[list[ParticleResult], Stats]:
    """Random start number ``start`` of the particles ``indices`` (:func:`initial_assignment`)."""
    assignments = [initial_assignment(config, int(i), start) for i in indices]
    return hard_chunk(table, assignments, config.classes, halves)


def responsibilities(log_e: np.ndarray) -> tuple[np.ndarray, float]:
    """``g = exp(log_e - logsumexp(log_e))`` and the log-sum-exp itself.

    ``log_e``: `(n,)` log of prior x likelihood x Voronoi weight of every (class, candidate)
    of one particle; exponents of -1e5 are fine (no under- or overflow).
    """
    total = float(logsumexp(log_e))
    g = np.exp(log_e - total)
    return g / g.sum(), total  # renormalised: with exponents near -1e5, exp loses ~1e-11


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


def log_likelihoods(
    ctx: StepContext, klass: int, padded: PaddedSpectrum, wedge: np.ndarray,
    rotations: np.ndarray, shifts: np.ndarray, shells: np.ndarray, half: int = 0,
) -> np.ndarray:  # fmt: skip
    """``log p(X | phi, k) + log p(t)`` of `(B,)` candidates of one class (module docstring).

    ``wedge``: the particle's weight as :func:`class_frame` takes it; ``shells``: its
    :func:`particle_shells`; ``half``: its half-set (the references of a gold-standard
    iteration).
    """
    box = ctx.box
    n = box // 2 + 1
    _, _, shell, mult = _frame_points(box, ctx.band_e)
    y, w = class_frame(padded, wedge, rotations, shifts, ctx.band_e)
    a = ctx.for_half(half)[1][klass][None]
    wm = w[:, 1] * mult[None]
    xx, c = shells[0], shells[1]
    sigma2 = np.maximum(ctx.sigma2, 1e-300)
    used = np.zeros(n)
    used[1 : ctx.band_e + 1] = 1.0
    inv = used / sigma2
    aa = np.maximum(_binned(wm * (a.real**2 + a.imag**2), shell, n) @ inv, 1e-300)
    cross = _binned(w[:, 0] * mult[None] * (a.real * y.real + a.imag * y.imag), shell, n) @ inv
    if ctx.config.likelihood == "plain":
        data = xx @ inv - 2.0 * cross + aa
    else:  # "scaled": the amplitude a >= 0 of the reference profiled out per candidate
        data = xx @ inv - np.maximum(cross, 0.0) ** 2 / aa
    data = data + c @ (used * np.log(2.0 * np.pi * sigma2))
    t2 = np.sum(np.asarray(shifts) ** 2, axis=1)
    prior = t2 / ctx.xi**2 + 3.0 * np.log(2.0 * np.pi * ctx.xi**2)
    return -0.5 * (data + prior)


def with_neighbours(
    rotations: np.ndarray, shifts: np.ndarray, count: int, step_deg: float, rings: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Append ``6 * rings`` neighbours of each of the first ``count`` candidates.

    Each neighbour is the candidate's rotation turned by ``+-j * step_deg`` (``j = 1..rings``)
    about x, y or z (on the particle side: ``Q R``), with the candidate's shift.
    """
    top = min(count, rotations.shape[0])
    extra_r = np.concatenate(
        [
            axis_stencil(rotations[:top], np.radians(j * step_deg)).reshape(-1, 3, 3)
            for j in range(1, rings + 1)
        ]
    )
    extra_t = np.tile(np.repeat(shifts[:top], 6, axis=0), (rings, 1))
    return np.concatenate([rotations, extra_r]), np.concatenate([shifts, extra_t])


def neighbour_step_deg(config: RunConfig, band: int) -> float:
    """The angle of the neighbours (degrees) at the current ``band``.

    ``config.local_step_deg``, or with ``None`` one radian over the band (the turn that moves
    the outermost shell used by one voxel), within 3-15 degrees.
    """
    if config.local_step_deg is not None:
        return float(config.local_step_deg)
    return float(np.clip(np.degrees(1.0 / max(band, 1)), 3.0, 15.0))


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - since
    return now


def process_chunk(
    ctx: StepContext,
    table: ParticleTable,
    indices: np.ndarray,
    candidates: dict[int, Candidates] | None = None,
) -> tuple[list[ParticleResult], Stats]:
    """The map step for the particles ``indices``: their results and summed statistics.

    ``candidates`` (particle index -> :data:`Candidates`) replaces the fast alignment and the
    Voronoi weights with given ones (FAML only), as in a fixed-candidate EM step.
    """
    return _summed([process_particle(ctx, table, int(i), candidates) for i in np.asarray(indices)])


def process_particle(
    ctx: StepContext,
    table: ParticleTable | TableRows,
    i: int,
    candidates: dict[int, Candidates] | None = None,
    half: int | None = None,
) -> tuple[ParticleResult, Stats]:
    """The map step for particle ``i``: its result and statistics (sums up to ``band_m``).

    ``candidates`` as in :func:`process_chunk`; ``half``: the particle's half-set (default
    ``ctx.halves[i]``).
    """
    cfg = ctx.config
    box = ctx.box
    K = cfg.classes
    stats = Stats.zeros(K, box, ctx.band_m)
    t = stats.timings
    clock = time.perf_counter()
    vol, wedge = load_particle(table, i, cfg.particle_mask_radius)
    clock = _lap(t, "io", clock)
    half = int(ctx.halves[i]) if half is None else int(half)
    padded = padded_spectrum(vol)
    shells = particle_shells(scipy.fft.rfftn(vol, workers=1), wedge)
    weights = _with_square(wedge)  # w and w², gathered for every candidate batch
    clock = _lap(t, "fft", clock)
    if candidates is not None:
        given = candidates[int(i)]
        rots = [np.asarray(c[0], dtype=np.float64) for c in given]
        shifts = [np.asarray(c[1], dtype=np.float64) for c in given]
        nus = [np.asarray(c[2], dtype=np.float64) for c in given]
        scores = None
    elif cfg.method == "faml" and ctx.iteration <= cfg.grid_iterations:
        align = ctx.for_half(half)[0]
        grid = [grid_candidates(vol, wedge, align[k], cfg.grid_candidates) for k in range(K)]
        rots = [g[0] for g in grid]
        shifts = [g[1] for g in grid]
        scores = nus = None  # FAML only: no FA scores, equal candidate weights
    else:
        align = ctx.for_half(half)[0]
        cands = [align_to(vol, wedge, align[k]) for k in range(K)]
        rots = [np.stack([c.rotation for c in cs]) for cs in cands]
        shifts = [np.stack([c.shift for c in cs]) for cs in cands]
        scores = [cs[0].score for cs in cands]
        nus = None
        if cfg.method == "faml" and cfg.local_candidates:
            for k in range(K):
                rots[k], shifts[k] = with_neighbours(
                    rots[k], shifts[k], cfg.local_candidates,
                    neighbour_step_deg(cfg, align[k].settings.band_limit),
                    cfg.local_rings,
                )  # fmt: skip
    clock = _lap(t, "align", clock)
    if cfg.method == "fa":
        best_k = int(np.argmax(scores))
        best_m, max_p, n_sig, fit = 0, 1.0, 1, float(scores[best_k])
        clock = _lap(t, "estep", clock)
        _accumulate(
            stats, padded, weights, half, best_k, [1.0], rots[best_k][:1], shifts[best_k][:1],
            shells,
        )  # fmt: skip
    else:
        log_e = []
        for k in range(K):
            if nus is None and not cfg.voronoi:
                nu = np.full(len(rots[k]), 1.0 / len(rots[k]))
            elif nus is None:
                nu = voronoi_weights(
                    rots[k], shifts[k], rng_for(cfg.seed, ctx.iteration, int(i), k),
                    cfg.voronoi_samples,
                )  # fmt: skip
                clock = _lap(t, "voronoi", clock)
            else:
                nu = nus[k]
            ll = log_likelihoods(ctx, k, padded, weights, rots[k], shifts[k], shells, half)
            log_e.append(ctx.log_alpha[k] + np.log(nu) + ll)
        g, fit = responsibilities(np.concatenate(log_e))
        if not np.isfinite(fit):
            raise FloatingPointError(
                f"particle {i} ({table.path(i)}): non-finite likelihood at iteration "
                f"{ctx.iteration}"
            )
        stats.loglik += fit
        order = np.argsort(g)[::-1]
        n_sig = int(np.searchsorted(np.cumsum(g[order]), 0.9) + 1)
        max_p = float(g[order[0]])
        starts = np.concatenate([[0], np.cumsum([len(le) for le in log_e])])
        best_k = int(np.searchsorted(starts, order[0], side="right") - 1)
        best_m = int(order[0] - starts[best_k])
        keep = g >= cfg.min_responsibility * g[order[0]]
        g = np.where(keep, g, 0.0)
        g /= g.sum()
        clock = _lap(t, "estep", clock)
        for k in range(K):
            gk = g[starts[k] : starts[k + 1]]
            sel = np.flatnonzero(gk > 0)
            if sel.size:
                _accumulate(stats, padded, weights, half, k, gk[sel], rots[k][sel],
                            shifts[k][sel], shells)  # fmt: skip
    _lap(t, "mstep", clock)
    stats.particles = 1
    result = ParticleResult(
        int(i), best_k, rots[best_k][best_m], shifts[best_k][best_m], max_p, n_sig, fit
    )
    return result, stats


def symmetrize_stats(stats: Stats, rotations: np.ndarray) -> Stats:
    """``stats`` with ``S`` and ``W`` averaged over a point group (in the class frame).

    ``S_sym(k) = 1/G sum_g S(R_g^T k)``, ``W_sym(k) = 1/G sum_g W(R_g^T k)`` for the `(G, 3, 3)`
    ``rotations`` (:meth:`faml.geometry.symmetry.PointGroup.rotations`, a group, so the
    direction of each turn does not matter). ``S`` is turned as a map: its real-space sum
    is padded and gridding-corrected (:func:`~faml.align.fourier_rotation.padded_spectrum`),
    the same interpolation the particles get; ``W`` is interpolated trilinearly, as a
    particle's weight is. The counts, powers and the likelihood are left as they are.
    """
    rots = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    box, band = stats.box, stats.band
    kzyx, flat, _, _ = _frame_points(box, band)
    S, W = stats.dense()
    s_out = np.empty_like(stats.S)
    w_out = np.empty_like(stats.W)
    for h in range(S.shape[0]):
        for k in range(S.shape[1]):
            volume = scipy.fft.irfftn(S[h, k], s=(box,) * 3, workers=1)
            turned = rotated_points(padded_spectrum(volume), rots, band)
            s_out[h, k] = turned.astype(np.complex128).mean(axis=0)
            w_out[h, k] = turned_weights(W[h, k], kzyx, rots).astype(np.float64).mean(axis=0)
    return replace(stats, S=s_out, W=w_out)


def compensated_mean(s: np.ndarray, w: np.ndarray, level: float | np.ndarray) -> np.ndarray:
    """Wedge-compensated average ``S / max(W, 0.1 L)`` of `(N, N, N//2 + 1)` sums ``S``, ``W``.

    ``level`` ``L``: the particles' count ``n`` (binary wedges), or per shell `(N//2 + 1,)`
    their summed mean squared weight (:attr:`Stats.level`). Components observed by fewer
    than a tenth of what the particles observe at that frequency are damped instead of
    blown up. With CTF weights a shell's level follows ``c²``: the low shells, where
    ``|CTF|`` is near the amplitude contrast for every particle, are CTF-corrected, not
    floored (with the floor at ``0.1 n`` their amplitudes came out at 0.05-0.4 of the
    truth's).
    """
    level = np.asarray(level, dtype=np.float64)
    if level.ndim == 1:
        shells = np.minimum(shell_index(s.shape[0]), level.size - 1)
        level = np.where(level > 0, level, level.max(initial=0.0))[shells]
    return s / np.maximum(w, 0.1 * np.maximum(level, 1e-12))


@dataclass(frozen=True)
class MStepResult:
    """New class averages (Fourier, unfiltered) and parameters from summed statistics."""

    averages: np.ndarray  # (K, N, N, N//2+1) complex128
    half_averages: np.ndarray  # (2, K, N, N, N//2+1) complex128, independent (for the FSC)
    alpha: np.ndarray
    sigma2: np.ndarray
    xi: float


def m_step(
    stats: Stats,
    previous: np.ndarray | None,
    method: str,
    previous_sigma2: np.ndarray | None,
    n_particles: int,
    average_update: str = "compensated",
) -> MStepResult:
    """Parameters from the reduced statistics (paper eqs. 10-13, DESIGN.md 3.4).

    ``previous``: `(K, N, N, N//2 + 1)` the old averages (Fourier), or ``None`` at the start.
    ``average_update``: ``"compensated"``, ``A = S / max(W, 0.1 L)`` (the maximiser of the
    expected log-likelihood where at least a tenth of the weight observed a component), or
    ``"paper"``, eq. 10 ``A = (S + (n - W) A_old) / n``. FA and the start always use the
    first.
    """
    S, W = stats.dense()
    n = stats.n
    box = stats.box
    K = n.shape[1]
    halves = np.empty_like(S)
    combined = np.empty(S.shape[1:], dtype=S.dtype)
    explained = np.zeros(box // 2 + 1)
    mult = half_spectrum_multiplicity(box)
    for k in range(K):
        for h in range(2):
            # Half maps for the FSC must be independent: eq. 10 would give both halves the
            # same old values where they observed little, and inflate the FSC. They are
            # wedge-compensated means of their own particles only.
            halves[h, k] = compensated_mean(S[h, k], W[h, k], stats.level[h, k])
        s, w, cnt = S[0, k] + S[1, k], W[0, k] + W[1, k], n[0, k] + n[1, k]
        level = stats.level[0, k] + stats.level[1, k]
        old = None if previous is None else previous[k]
        if cnt <= 0:
            combined[k] = old if old is not None else 0.0
        elif method == "fa" or old is None or average_update == "compensated":
            combined[k] = compensated_mean(s, w, level)
        else:
            combined[k] = (s + (cnt - w) * old) / cnt
        # sum g w |A - Y|^2 = P - 2 Re(conj(A) S) + |A|^2 W, per shell
        a = combined[k]
        term = (2.0 * (np.conj(a) * s).real - (a.real**2 + a.imag**2) * w) * mult
        explained += shell_sums(term[None], box, box // 2)[0]
    counts = n.sum(axis=0)
    alpha = counts / max(counts.sum(), 1e-12)
    seen = stats.count > 1e-9
    sigma2 = np.where(seen, (stats.power - explained) / np.where(seen, stats.count, 1.0), 0.0)
    if previous_sigma2 is not None:
        sigma2 = np.where(seen, sigma2, previous_sigma2)
    positive = sigma2[sigma2 > 0]
    floor = 1e-6 * (positive.max() if positive.size else 1.0)
    sigma2 = np.maximum(sigma2, floor)
    xi = float(np.sqrt(stats.shift2 / (3.0 * max(n_particles, 1))))
    return MStepResult(combined, halves, alpha, sigma2, max(xi, 1.0))


def settings_for(
    config: RunConfig, box: int, band: int, sigma2: np.ndarray | None = None, xi: float = np.inf
) -> AlignSettings:
    """Fast-alignment settings of an iteration: the current band, the run's M and shift.

    The phase-aware scan (when on) works up to ``min(config.scan_band, band)`` with shells
    weighted by ``1 / sigma_r^2`` (the matched filter of the noise model) and shifts within
    ``3 xi`` (at least two steps of its grid).
    """
    band_limit = int(min(max(band, 2), box // 2 - 1))
    scan = {}
    if config.scan_step_deg is not None:
        scan_band = min(10 if config.scan_band is None else config.scan_band, band_limit)
        weights = None
        if sigma2 is not None:
            inv = 1.0 / np.maximum(np.asarray(sigma2[: scan_band + 1], dtype=np.float64), 1e-30)
            weights = tuple(inv / inv[1:].max())
        scan = dict(
            scan_step_deg=config.scan_step_deg,
            scan_band=scan_band,
            scan_candidates=config.scan_candidates,
            scan_max_shift=max(3.0 * xi, 4.0),
            scan_shell_weights=weights,
        )
    return AlignSettings(
        box=box,
        max_candidates=config.max_candidates,
        max_shift=config.max_shift,
        band_limit=band_limit,
        **scan,
    )
