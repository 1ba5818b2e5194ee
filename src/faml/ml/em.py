"""One FAML / FA iteration as map-reduce: per-particle statistics, summed, then the M-step.

Map (per particle ``i``, every class ``k``; :func:`process_chunk`):

1. candidates ``Phi_ik`` from :func:`faml.align.align_to` against the class's filtered,
   masked average;
2. (FAML) Voronoi weights ``nu`` of the candidates (:mod:`faml.ml.voronoi`);
3. (FAML) E-step in the log domain (DESIGN.md 3.3): for candidate ``phi = (R, t)``

   .. code-block:: text

       log e = log alpha_k + log nu - 1/2 sum_r d_r(phi) / sigma_r^2 - |t|^2 / (2 xi^2)
       d_r(phi) = sum_{j in shell r} w_j |(T_phi A_k)_j - X_j|^2     (full-spectrum sums)

   over shells ``1..band_e`` (the current resolution plus a margin), with one noise variance
   per shell; responsibilities ``g = softmax(log e)`` over all classes and candidates
   (log-sum-exp). FA instead gives weight 1 to the single best candidate by the
   wedge-constrained correlation, over all classes;
4. sufficient statistics (DESIGN.md 3.4), summed over the candidates that carry weight
   (``g >= 1e-4``, renormalised): per half-set and class ``n = sum g``,
   ``S = sum g T^-1(w X)`` (accumulated in real space: ``T^-1`` of the wedge-filtered
   particle, trilinear; one FFT at the M-step), ``W = sum g w(R k)`` (the wedge seen from
   the class frame), per shell ``E_r = sum g d_r`` and ``C_r = sum_{j in r} w_j``, and
   ``D = sum g |t|^2``.

Reduce: :class:`Stats` add up (in a fixed chunk order, so any number of workers gives the
same sums). M-step (:func:`m_step`): ``A = (S + (n - W) A_old) / n`` (paper eq. 10: voxels
never observed keep their value), ``alpha = n / N``, ``sigma_r^2 = E_r / C_r``,
``xi^2 = D / (3 N)`` (floored at one voxel); FA: ``A = S / max(W, 0.1 n)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy.special import logsumexp

from faml.align import AlignSettings, PreparedAverage, align_to
from faml.align._kernels import gather_half_spectrum
from faml.align.fourier_rotation import PaddedSpectrum, band_points, rotated_spectra
from faml.align.translate import half_spectrum_multiplicity
from faml.geometry.axes import matrix_xyz_to_zyx, xyz_to_zyx
from faml.geometry.rotations import random_rotations
from faml.geometry.transform import inverse_transform, transform_volume
from faml.io.particles import ParticleTable
from faml.ml.config import RunConfig
from faml.ml.fourier import shell_index
from faml.ml.voronoi import rng_for, voronoi_weights

__all__ = [
    "KEEP_WEIGHT",
    "ParticleResult",
    "StepContext",
    "Stats",
    "hard_chunk",
    "initial_chunk",
    "m_step",
    "process_chunk",
    "responsibilities",
    "shell_sums",
]

KEEP_WEIGHT = 1e-4
"""Candidates with a smaller responsibility are left out of the M-step sums."""


@dataclass(frozen=True)
class StepContext:
    """What every worker needs for one iteration (sent once per task, read-only).

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
    inv_sigma2
        `(N//2 + 1,)` ``1 / sigma_r^2`` per shell, 0 beyond the likelihood band.
    xi
        Translation prior standard deviation (voxels).
    align
        Per class the prepared average of the fast alignment.
    padded
        Per class the padded spectrum of the (filtered, masked) average for the E-step.
    band_e
        Outermost shell of the likelihood.
    halves
        `(n,)` 0/1 half-set of each particle.
    """

    config: RunConfig
    iteration: int
    box: int
    log_alpha: np.ndarray
    inv_sigma2: np.ndarray
    xi: float
    align: tuple[PreparedAverage, ...]
    padded: tuple[PaddedSpectrum, ...]
    band_e: int
    halves: np.ndarray


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

    Shapes: ``acc`` `(2, K, N, N, N)` float64 real space, ``wsum`` `(2, K, N, N, N//2 + 1)`,
    ``n`` `(2, K)`, ``resid`` and ``count`` `(N//2 + 1,)`.
    """

    acc: np.ndarray
    wsum: np.ndarray
    n: np.ndarray
    resid: np.ndarray
    count: np.ndarray
    shift2: float = 0.0
    loglik: float = 0.0
    particles: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def zeros(cls, classes: int, box: int) -> Stats:
        """Empty statistics."""
        half = box // 2 + 1
        return cls(
            acc=np.zeros((2, classes, box, box, box)),
            wsum=np.zeros((2, classes, box, box, half)),
            n=np.zeros((2, classes)),
            resid=np.zeros(half),
            count=np.zeros(half),
        )

    def __iadd__(self, other: Stats) -> Stats:
        self.acc += other.acc
        self.wsum += other.wsum
        self.n += other.n
        self.resid += other.resid
        self.count += other.count
        self.shift2 += other.shift2
        self.loglik += other.loglik
        self.particles += other.particles
        for k, v in other.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        return self


def shell_sums(values: np.ndarray, box: int, band: int) -> np.ndarray:
    """Per-shell sums `(B, N//2 + 1)` of `(B, N, N, N//2 + 1)` values, shells ``1..band``."""
    idx = shell_index(box)
    n = box // 2 + 1
    flat = np.where((idx >= 1) & (idx <= band), idx, n).reshape(-1)  # n: discarded bin
    b = values.shape[0]
    offs = (np.arange(b)[:, None] * (n + 1) + flat[None, :]).reshape(-1)
    sums = np.bincount(offs, weights=values.reshape(-1), minlength=b * (n + 1))
    return sums.reshape(b, n + 1)[:, :n]


def _shift_phase(box: int, shifts: np.ndarray) -> np.ndarray:
    """`(B, N, N, N//2 + 1)` ``exp(-2 pi i k.t)`` for `(B, 3)` shifts ``(x, y, z)`` (voxels)."""
    t = xyz_to_zyx(np.asarray(shifts, dtype=np.float64))
    kz = np.fft.fftfreq(box)
    kx = np.fft.rfftfreq(box)
    ez = np.exp(-2j * np.pi * t[:, 0, None] * kz[None, :])
    ey = np.exp(-2j * np.pi * t[:, 1, None] * kz[None, :])
    ex = np.exp(-2j * np.pi * t[:, 2, None] * kx[None, :])
    return (ez[:, :, None, None] * ey[:, None, :, None] * ex[:, None, None, :]).astype(np.complex64)


def residual_shells(
    particle_ft: np.ndarray,
    wedge: np.ndarray,
    padded: PaddedSpectrum,
    rotations: np.ndarray,
    shifts: np.ndarray,
    band: int,
) -> np.ndarray:
    """``d_r = sum_{j in r} w_j |(T A)_j - X_j|^2`` per candidate and shell: `(B, N//2 + 1)`.

    Sums run over the full spectrum (half layout times multiplicity), shells ``1..band``.
    """
    box = particle_ft.shape[0]
    rotated = rotated_spectra(padded, rotations, band) * _shift_phase(box, shifts)
    diff = rotated - particle_ft[None]
    d = (diff.real**2 + diff.imag**2) * (wedge * half_spectrum_multiplicity(box))[None]
    return shell_sums(d, box, band)


def _rotated_wedge(wedge: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``w(R k')`` on the class-frame half grid (inside the sphere ``|k'| < N/2 - 1``)."""
    box = wedge.shape[0]
    kzyx, flat, _ = band_points(box, max(1, box // 2 - 2))
    coords = kzyx.astype(np.float64) @ matrix_xyz_to_zyx(rotation).T
    vals = np.empty((1, coords.shape[0]), dtype=np.float32)
    gather_half_spectrum(np.ascontiguousarray(wedge[None], dtype=np.float32), coords, vals)
    out = np.zeros(box * box * (box // 2 + 1), dtype=np.float32)
    out[flat] = vals[0]
    return out.reshape(wedge.shape)


def _accumulate(stats, x_w, wedge, half, klass, weight, rotation, shift) -> None:
    inv_r, inv_t = inverse_transform(rotation, shift)
    stats.acc[half, klass] += weight * transform_volume(x_w, inv_r, inv_t, order=1)
    stats.wsum[half, klass] += weight * _rotated_wedge(wedge, rotation)
    stats.n[half, klass] += weight


def hard_chunk(
    table: ParticleTable,
    assignments: list[tuple[int, int, np.ndarray, np.ndarray]],
    classes: int,
    halves: np.ndarray,
) -> tuple[list[ParticleResult], Stats]:
    """Statistics of particles placed by hand: ``(index, class, rotation, shift)`` each."""
    stats = Stats.zeros(classes, table.box)
    results = []
    for i, klass, rotation, shift in assignments:
        vol, wedge = table.load(int(i))
        x_w = scipy.fft.irfftn(scipy.fft.rfftn(vol, workers=1) * wedge, s=vol.shape, workers=1)
        _accumulate(stats, x_w.astype(np.float32), wedge, halves[i], klass, 1.0, rotation, shift)
        stats.particles += 1
        results.append(ParticleResult(int(i), klass, rotation, shift, 1.0, 1))
    return results, stats


def initial_chunk(
    table: ParticleTable, indices: np.ndarray, config: RunConfig, halves: np.ndarray
) -> tuple[list[ParticleResult], Stats]:
    """The random start (DESIGN.md 3.5) for the particles ``indices``.

    Each particle goes to a random class at a random rotation (uniform on SO(3)) and zero
    shift, so that no common wedge orientation survives in the starting averages.
    """
    assignments = []
    for i in indices:
        rng = rng_for(config.seed, 0, int(i), 0)
        klass = int(rng.integers(config.classes))
        assignments.append((int(i), klass, random_rotations(1, rng)[0], np.zeros(3)))
    return hard_chunk(table, assignments, config.classes, halves)


def responsibilities(log_e: np.ndarray) -> tuple[np.ndarray, float]:
    """``g = exp(log_e - logsumexp(log_e))`` and the log-sum-exp itself.

    ``log_e``: `(n,)` log of prior x likelihood x Voronoi weight of every (class, candidate)
    of one particle; exponents of -1e5 are fine (no under- or overflow).
    """
    total = float(logsumexp(log_e))
    g = np.exp(log_e - total)
    return g / g.sum(), total  # renormalised: with exponents near -1e5, exp loses ~1e-11


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - since
    return now


def process_chunk(
    ctx: StepContext, table: ParticleTable, indices: np.ndarray
) -> tuple[list[ParticleResult], Stats]:
    """The map step for the particles ``indices``: their results and summed statistics."""
    cfg = ctx.config
    box = ctx.box
    K = cfg.classes
    stats = Stats.zeros(K, box)
    results = []
    mult = half_spectrum_multiplicity(box)
    t = stats.timings
    for i in np.asarray(indices, dtype=np.int64):
        clock = time.perf_counter()
        vol, wedge = table.load(int(i))
        clock = _lap(t, "io", clock)
        half = int(ctx.halves[i])
        particle_ft = scipy.fft.rfftn(vol, workers=1)
        x_w = scipy.fft.irfftn(particle_ft * wedge, s=vol.shape, workers=1).astype(np.float32)
        stats.count += shell_sums((wedge * mult)[None], box, ctx.band_e)[0]
        clock = _lap(t, "fft", clock)
        cands = [align_to(vol, wedge, ctx.align[k]) for k in range(K)]
        clock = _lap(t, "align", clock)
        rots = [np.stack([c.rotation for c in cs]) for cs in cands]
        shifts = [np.stack([c.shift for c in cs]) for cs in cands]
        if cfg.method == "fa":
            best_k = int(np.argmax([cs[0].score for cs in cands]))
            weights = [(best_k, 0, 1.0)]
            d_best = residual_shells(
                particle_ft, wedge, ctx.padded[best_k], rots[best_k][:1], shifts[best_k][:1],
                ctx.band_e,
            )[0]  # fmt: skip
            resid = {(best_k, 0): d_best}
            n_sig, max_p = 1, 1.0
        else:
            log_e, resid_k = [], []
            for k in range(K):
                nu = voronoi_weights(
                    rots[k], shifts[k], rng_for(cfg.seed, ctx.iteration, int(i), k),
                    cfg.voronoi_samples,
                )  # fmt: skip
                clock = _lap(t, "voronoi", clock)
                d = residual_shells(
                    particle_ft, wedge, ctx.padded[k], rots[k], shifts[k], ctx.band_e
                )
                resid_k.append(d)
                prior = np.sum(shifts[k] ** 2, axis=1) / (2.0 * ctx.xi**2)
                log_e.append(ctx.log_alpha[k] + np.log(nu) - 0.5 * d @ ctx.inv_sigma2 - prior)
                clock = _lap(t, "estep", clock)
            flat = np.concatenate(log_e)
            g, total = responsibilities(flat)
            if not np.isfinite(total):
                raise FloatingPointError(
                    f"particle {i} ({table.paths[i]}): non-finite likelihood at iteration "
                    f"{ctx.iteration}"
                )
            stats.loglik += float(total)
            order = np.argsort(g)[::-1]
            n_sig = int(np.searchsorted(np.cumsum(g[order]), 0.9) + 1)
            max_p = float(g[order[0]])
            sizes = [len(le) for le in log_e]
            starts = np.concatenate([[0], np.cumsum(sizes)])
            keep = g >= KEEP_WEIGHT * g.max()
            g_kept = np.where(keep, g, 0.0)
            g_kept /= g_kept.sum()
            weights = []
            resid = {}
            for k in range(K):
                for m in range(sizes[k]):
                    gk = g_kept[starts[k] + m]
                    if gk > 0:
                        weights.append((k, m, float(gk)))
                        resid[(k, m)] = resid_k[k][m]
            best_flat = int(order[0])
            best_k = int(np.searchsorted(starts, best_flat, side="right") - 1)
        clock = _lap(t, "estep", clock)
        for k, m, gk in weights:
            _accumulate(stats, x_w, wedge, half, k, gk, rots[k][m], shifts[k][m])
            stats.resid += gk * resid[(k, m)]
            stats.shift2 += gk * float(np.sum(shifts[k][m] ** 2))
        best_m = 0
        fit = float(cands[best_k][0].score)
        if cfg.method == "faml":
            best_m = int(best_flat - starts[best_k])
            fit = float(total)
        clock = _lap(t, "mstep", clock)
        stats.particles += 1
        results.append(
            ParticleResult(
                int(i), best_k, rots[best_k][best_m], shifts[best_k][best_m], max_p, n_sig, fit
            )
        )
    return results, stats


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
) -> MStepResult:
    """Parameters from the reduced statistics (paper eqs. 10-13, DESIGN.md 3.4).

    ``previous``: `(K, N, N, N//2 + 1)` the old averages (Fourier), or ``None`` at the start
    (then, as for FA, ``A = S / max(W, 0.1 n)``).
    """
    S = scipy.fft.rfftn(stats.acc, axes=(-3, -2, -1), workers=1)  # (2, K, ...)
    W = stats.wsum
    n = stats.n

    def update(s, w, cnt, old):
        if cnt <= 0:
            return old if old is not None else np.zeros_like(s)
        if method == "fa" or old is None:
            return s / np.maximum(w, 0.1 * cnt)
        return (s + (cnt - w) * old) / cnt

    K = n.shape[1]
    halves = np.empty_like(S)
    combined = np.empty(S.shape[1:], dtype=S.dtype)
    for k in range(K):
        old = None if previous is None else previous[k]
        for h in range(2):
            # Half maps for the FSC must be independent: eq. 10 would give both halves the
            # same old values where they observed little, and inflate the FSC. They are
            # wedge-compensated means of their own particles only.
            halves[h, k] = S[h, k] / np.maximum(W[h, k], 0.1 * max(n[h, k], 1e-12))
        combined[k] = update(S[0, k] + S[1, k], W[0, k] + W[1, k], n[0, k] + n[1, k], old)
    counts = n.sum(axis=0)
    alpha = counts / max(counts.sum(), 1e-12)
    sigma2 = np.where(stats.count > 0, stats.resid / np.maximum(stats.count, 1e-30), 0.0)
    if previous_sigma2 is not None:
        sigma2 = np.where(stats.count > 0, sigma2, previous_sigma2)
    positive = sigma2[sigma2 > 0]
    floor = 1e-6 * (positive.max() if positive.size else 1.0)
    sigma2 = np.maximum(sigma2, floor)
    xi = float(np.sqrt(stats.shift2 / (3.0 * max(n_particles, 1))))
    return MStepResult(combined, halves, alpha, sigma2, max(xi, 1.0))


def settings_for(config: RunConfig, box: int, band: int) -> AlignSettings:
    """Fast-alignment settings of an iteration: the current band, the run's M and shift."""
    return AlignSettings(
        box=box,
        max_candidates=config.max_candidates,
        max_shift=config.max_shift,
        band_limit=int(min(max(band, 2), box // 2 - 1)),
    )
