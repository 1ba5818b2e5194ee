"""One FAML / FA iteration as map-reduce: per-particle statistics, summed, then the M-step.

Every particle is used in one form, whatever form it was stored in (:func:`load_particle`,
DESIGN.md section 2): ``X = w T_phi A + noise`` with white noise of variance ``sigma_r^2``
per shell and the weight ``w`` multiplying the reference (a binary wedge, ``|CTF|`` of
phase-flipped data, the signed CTF; CTF-premultiplied data ``D, C`` whitened,
``X = D / sqrt(C)``, ``w = sqrt(C)``). Its likelihood is
``-sum_k |X_k - w_k A_k|^2 / (2 sigma^2)`` over the observed components (``w != 0``) and
its M-step ``A = sum T^-1(w X) / sum T^-1(w²)`` (premultiplied: ``sum T^-1 D / sum T^-1 C``).
With a binary wedge ``w² = w`` and this is the paper's model.

The class frame and the sums are in :mod:`faml.ml.stats`, the M-step in :mod:`faml.ml.mstep`.
The E-step and the M-step use the same terms, so with the candidates held fixed one
iteration is a generalised EM step of the approximate likelihood and never lowers it
(tested).

Map (per particle ``i``, every class ``k``; :func:`process_particle`):

1. candidates ``Phi_ik`` from :func:`faml.align.align_to` against the class's filtered,
   masked average (magnitude search plus the phase-aware scan), and (FAML) six neighbours
   of each of the best ``Tuning.local_candidates`` (:func:`with_neighbours`);
2. (FAML, ``Tuning.voronoi``) Voronoi weights ``nu`` of the candidates
   (:mod:`faml.ml.voronoi`), else equal weights;
3. (FAML) E-step in the log domain (DESIGN.md 3.3), over shells ``r = 1..band_e`` (the
   current resolution plus a margin) with one noise variance ``sigma_r^2`` per shell:

   .. code-block:: text

       log e = log alpha_k + log nu - |t|^2 / (2 xi^2) - 3/2 log(2 pi xi^2)
               - 1/2 sum_r [d_r(phi) / sigma_r^2 + c_r log(2 pi sigma_r^2)]
       d_r(phi) = XX_r - 2 XA_r(phi) + AA_r(phi)
       XA_r = sum_{k' in r} w_phi Re(conj(A_k) Y_phi)     AA_r = sum_{k' in r} v_phi |A_k|^2

   (sums over the full spectrum: half-layout points weighted by their multiplicity).
   With ``Tuning.likelihood == "scaled"`` (the default) ``A_k`` is ``a A_k`` with the
   amplitude ``a >= 0`` that fits the candidate best (profiled out, as a per-particle
   scale): ``sum_r d_r / sigma_r^2 = XX - max(XA, 0)^2 / AA`` (each ``1 / sigma_r^2``
   weighted). The filtered average is smaller than the particles' signal where its FSC is
   low, and the plain likelihood then rewards poses that put the average's strong
   directions into the missing wedge. Responsibilities ``g = softmax(log e)`` over all
   classes and candidates (log-sum-exp), whose log-normaliser is the particle's
   approximate log-likelihood. FA instead gives weight 1 to the single best candidate by
   the wedge-constrained correlation, over all classes;
4. sufficient statistics (DESIGN.md 3.4), summed over the candidates that carry weight
   (``g >= config.tuning.min_responsibility * max g``, renormalised), up to shell ``band_m`` (twice
   the likelihood's band; the start: the whole sphere ``|k'| < N/2``): per half-set and
   class ``n = sum g``, ``S = sum g w_phi Y_phi``, ``W = sum g v_phi``; per shell
   ``P_r = sum_i XX_r`` and ``C_r = sum_i c_r``; and ``D = sum g |t|^2``.

Reduce: the per-particle :class:`~faml.ml.stats.Stats` add up along one binary tree over the
particle indices (:class:`faml.parallel.TreeSum`); then the M-step
(:func:`faml.ml.mstep.update_model`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.special import logsumexp

from faml.align import AlignSettings, PreparedAverage, align_to, grid_candidates, prepare_average
from faml.align.fourier_rotation import PaddedSpectrum, padded_spectrum
from faml.align.local import local_align
from faml.geometry.masks import soft_sphere
from faml.geometry.rotations import axis_stencil, random_rotations
from faml.geometry.wedge import whitened
from faml.io.particles import ParticleTable, TableRows
from faml.ml.config import RunConfig
from faml.ml.local import log_pose_prior, restrict, within
from faml.ml.phase import Phase
from faml.ml.state import ModelState, filtered_average
from faml.ml.stats import (
    Stats,
    accumulate,
    binned,
    class_frame,
    frame_points,
    particle_shells,
    reference_points,
    with_square,
)
from faml.ml.voronoi import rng_for, voronoi_weights
from faml.parallel.reduce import TreeSum

__all__ = [
    "PARTICLE_MASK_EDGE",
    "Candidates",
    "ParticleResult",
    "StepContext",
    "hard_chunk",
    "hard_particle",
    "initial_assignment",
    "likelihoods_and_correlations",
    "load_particle",
    "neighbour_step_deg",
    "process_particle",
    "random_class",
    "responsibilities",
    "settings_for",
    "step_context",
    "with_neighbours",
]


@dataclass(frozen=True)
class StepContext:
    """What every worker needs for one iteration (sent to each worker once, read-only).

    Attributes
    ----------
    config
        The run's configuration.
    phase
        The iteration's rules (:func:`faml.ml.phase.phase_of`): its number, FA or FAML,
        grid candidates or not.
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
    band_m
        Outermost shell of the M-step sums (``None``: the whole sphere, ``N//2 - 1``).
    half_align, half_references
        Gold-standard iterations: per half-set (index 0, 1) what ``align`` and
        ``references`` are otherwise; each particle meets only its own half's averages.
        ``None``: both halves use ``align`` and ``references``.
    """

    config: RunConfig
    phase: Phase
    box: int
    log_alpha: np.ndarray
    sigma2: np.ndarray
    xi: float
    align: tuple[PreparedAverage, ...]
    references: np.ndarray
    band_e: int
    band_m: int | None = None
    half_align: tuple[tuple[PreparedAverage, ...], tuple[PreparedAverage, ...]] | None = None
    half_references: np.ndarray | None = None

    @property
    def iteration(self) -> int:
        """The iteration number (0: the random start)."""
        return self.phase.iteration

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
    # the best correlation with a target (not junk) class over its candidates (FA: the
    # wedge-constrained score; FAML: the whitened correlation of the likelihood's shells):
    # what the junk screen (faml.ml.junk.screen_junk) compares. NaN: not measured.
    target_fit: float = float("nan")


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
    accumulate(
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

    The particle goes to a random target class (the junk classes wait for the screen,
    :mod:`faml.ml.junk`) at a random rotation (uniform on SO(3)) and zero shift, so that
    no common wedge orientation survives in the starting averages. Start
    ``s`` draws from the generator of (seed, iteration 0, particle, ``s``).
    """
    rng = rng_for(config.seed, 0, int(index), start)
    klass = int(rng.integers(config.classes - config.junk_classes))
    return int(index), klass, random_rotations(1, rng)[0], np.zeros(3)


def random_class(seed: int, index: int, classes: int) -> int:
    """The class particle ``index`` is put in when the phase draws classes at random.

    Its own generator (seed, particle), apart from every other draw of the run.
    """
    return int(np.random.default_rng([int(seed), 15485863, int(index)]).integers(classes))


def responsibilities(log_e: np.ndarray) -> tuple[np.ndarray, float]:
    """``g = exp(log_e - logsumexp(log_e))`` and the log-sum-exp itself.

    ``log_e``: `(n,)` log of prior x likelihood x Voronoi weight of every (class, candidate)
    of one particle; exponents of -1e5 are fine (no under- or overflow).
    """
    total = float(logsumexp(log_e))
    g = np.exp(log_e - total)
    return g / g.sum(), total  # renormalised: with exponents near -1e5, exp loses ~1e-11


def likelihoods_and_correlations(
    ctx: StepContext, klass: int, padded: PaddedSpectrum, wedge: np.ndarray,
    rotations: np.ndarray, shifts: np.ndarray, shells: np.ndarray, half: int = 0,
    centre: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``log p(X | phi, k) + log p(t)`` and the correlation of `(B,)` candidates of one class.

    The log-likelihoods as in the module docstring; the correlations are the whitened
    ``XA / sqrt(XX AA)``.

    ``wedge``: the particle's weight as :func:`class_frame` takes it; ``shells``: its
    :func:`particle_shells`; ``half``: its half-set (the references of a gold-standard
    iteration); ``centre``: where the translation prior is centred (a local search: the
    particle's prior offset; default 0). The correlation is that of the data with the
    class's average as the particle saw it (its weight), each shell ``1..band_e`` weighted
    by ``1 / sigma_r^2``: the share of the particle's whitened power that the reference
    explains is its square (when positive).
    """
    box = ctx.box
    n = box // 2 + 1
    _, _, shell, mult = frame_points(box, ctx.band_e)
    y, w = class_frame(padded, wedge, rotations, shifts, ctx.band_e)
    a = ctx.for_half(half)[1][klass][None]
    wm = w[:, 1] * mult[None]
    xx, c = shells[0], shells[1]
    sigma2 = np.maximum(ctx.sigma2, 1e-300)
    used = np.zeros(n)
    used[1 : ctx.band_e + 1] = 1.0
    inv = used / sigma2
    aa = np.maximum(binned(wm * (a.real**2 + a.imag**2), shell, n) @ inv, 1e-300)
    cross = binned(w[:, 0] * mult[None] * (a.real * y.real + a.imag * y.imag), shell, n) @ inv
    if ctx.config.tuning.likelihood == "plain":
        data = xx @ inv - 2.0 * cross + aa
    else:  # "scaled": the amplitude a >= 0 of the reference profiled out per candidate
        data = xx @ inv - np.maximum(cross, 0.0) ** 2 / aa
    data = data + c @ (used * np.log(2.0 * np.pi * sigma2))
    offsets = np.asarray(shifts) if centre is None else np.asarray(shifts) - centre
    t2 = np.sum(offsets**2, axis=1)
    prior = t2 / ctx.xi**2 + 3.0 * np.log(2.0 * np.pi * ctx.xi**2)
    correlation = cross / np.sqrt(np.maximum(xx @ inv, 1e-300) * aa)
    return -0.5 * (data + prior), correlation


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

    ``Tuning.local_step_deg``, or with ``None`` one radian over the band (the turn that moves
    the outermost shell used by one voxel), within 3-15 degrees.
    """
    if config.tuning.local_step_deg is not None:
        return float(config.tuning.local_step_deg)
    return float(np.clip(np.degrees(1.0 / max(band, 1)), 3.0, 15.0))


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - since
    return now


def process_particle(
    ctx: StepContext,
    table: ParticleTable | TableRows,
    i: int,
    half: int,
    candidates: dict[int, Candidates] | None = None,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[ParticleResult, Stats]:
    """The map step for particle ``i`` of half-set ``half``: its result and statistics.

    The sums reach shell ``band_m``.

    ``candidates`` (particle index -> :data:`Candidates`) replaces the fast alignment and the
    Voronoi weights with given ones (FAML only), as in a fixed-candidate EM step. ``prior``:
    the particle's prior pose ``(R0, t0)``, searched around with
    ``RunConfig.local_search_deg`` (:mod:`faml.ml.local`).
    """
    cfg = ctx.config
    tuning = cfg.tuning
    box = ctx.box
    K = cfg.classes
    # the classes the iterations compare: the targets (junk classes are filled by the screen)
    active = K - cfg.junk_classes
    local = cfg.local_search_deg
    if local is not None and prior is None:
        raise ValueError(f"particle {i}: a local search needs its prior pose")
    stats = Stats.zeros(K, box, ctx.band_m)
    t = stats.timings
    clock = time.perf_counter()
    vol, wedge = load_particle(table, i, cfg.particle_mask_radius)
    clock = _lap(t, "io", clock)
    half = int(half)
    padded = padded_spectrum(vol)
    shells = particle_shells(scipy.fft.rfftn(vol, workers=1), wedge)
    weights = with_square(wedge)  # w and w², gathered for every candidate batch
    clock = _lap(t, "fft", clock)
    centre = None if local is None else np.asarray(prior[1], dtype=np.float64)
    max_shift = AlignSettings(box=box, max_shift=cfg.max_shift).resolved_max_shift
    if candidates is not None:
        given = candidates[int(i)]
        rots = [np.asarray(c[0], dtype=np.float64) for c in given]
        shifts = [np.asarray(c[1], dtype=np.float64) for c in given]
        nus = [np.asarray(c[2], dtype=np.float64) for c in given]
        scores = None
    elif ctx.phase.grid:
        align = ctx.for_half(half)[0]
        grid = [grid_candidates(vol, wedge, align[k], cfg.tuning.grid_candidates)
                for k in range(active)]  # fmt: skip
        rots = [g[0] for g in grid]
        shifts = [g[1] for g in grid]
        if local is not None:
            step = neighbour_step_deg(cfg, ctx.band_e)
            for k in range(active):
                rots[k], shifts[k], _ = restrict(
                    rots[k], shifts[k], 0.0, prior, local, max_shift, step
                )
        scores = nus = None  # FAML only: no FA scores, equal candidate weights
    else:
        align = ctx.for_half(half)[0]
        if local is None:
            cands = [align_to(vol, wedge, align[k]) for k in range(active)]
        else:
            cands = [local_align(vol, wedge, align[k], *prior, local) for k in range(active)]
        rots = [np.stack([c.rotation for c in cs]) for cs in cands]
        shifts = [np.stack([c.shift for c in cs]) for cs in cands]
        scores = [cs[0].score for cs in cands]
        nus = None
        steps = [neighbour_step_deg(cfg, align[k].settings.band_limit) for k in range(active)]
        if local is not None:
            for k in range(active):
                rots[k], shifts[k], scores[k] = restrict(
                    rots[k], shifts[k], scores[k], prior, local, max_shift
                )
        if ctx.phase.method == "faml" and tuning.local_candidates:
            for k in range(active):
                rots[k], shifts[k] = with_neighbours(
                    rots[k], shifts[k], cfg.tuning.local_candidates, steps[k],
                    cfg.tuning.local_rings,
                )  # fmt: skip
                if local is not None:
                    inside = within(rots[k], shifts[k], prior, local, max_shift)
                    rots[k], shifts[k] = rots[k][inside], shifts[k][inside]
    if candidates is None:  # junk classes: no candidate
        rots += [np.empty((0, 3, 3))] * (K - active)
        shifts += [np.empty((0, 3))] * (K - active)
    clock = _lap(t, "align", clock)
    only = random_class(cfg.seed, i, active) if ctx.phase.random_classes else None
    if ctx.phase.method == "fa":
        best_k = int(np.argmax(scores[:active])) if only is None else only
        best_m, max_p, n_sig, fit = 0, 1.0, 1, float(scores[best_k])
        target_fit = max(float(scores[k]) for k in range(active))
        clock = _lap(t, "estep", clock)
        accumulate(
            stats, padded, weights, half, best_k, [1.0], rots[best_k][:1], shifts[best_k][:1],
            shells, centre,
        )  # fmt: skip
    else:
        log_e = []
        target_fit = float("nan")
        for k in range(K):
            if len(rots[k]) == 0:  # a junk class
                log_e.append(np.empty(0))
                continue
            if nus is None and not cfg.tuning.voronoi:
                nu = np.full(len(rots[k]), 1.0 / len(rots[k]))
            elif nus is None:
                nu = voronoi_weights(
                    rots[k], shifts[k], rng_for(cfg.seed, ctx.iteration, int(i), k),
                    cfg.tuning.voronoi_samples,
                )  # fmt: skip
                clock = _lap(t, "voronoi", clock)
            else:
                nu = nus[k]
            ll, corr = likelihoods_and_correlations(ctx, k, padded, weights, rots[k], shifts[k],
                                                    shells, half, centre)  # fmt: skip
            target_fit = float(np.fmax(target_fit, np.max(corr)))  # junk: no candidates
            if local is not None:
                ll = ll + log_pose_prior(rots[k], prior[0], local)
            log_e.append(ctx.log_alpha[k] + np.log(nu) + ll)
            if only is not None and k != only:
                log_e[-1] = np.full_like(log_e[-1], -np.inf)
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
        keep = g >= cfg.tuning.min_responsibility * g[order[0]]
        g = np.where(keep, g, 0.0)
        g /= g.sum()
        clock = _lap(t, "estep", clock)
        for k in range(K):
            gk = g[starts[k] : starts[k + 1]]
            sel = np.flatnonzero(gk > 0)
            if sel.size:
                accumulate(stats, padded, weights, half, k, gk[sel], rots[k][sel],
                           shifts[k][sel], shells, centre)  # fmt: skip
    _lap(t, "mstep", clock)
    stats.particles = 1
    result = ParticleResult(
        int(i),
        best_k,
        rots[best_k][best_m],
        shifts[best_k][best_m],
        max_p,
        n_sig,
        fit,
        target_fit,
    )
    return result, stats


def settings_for(
    config: RunConfig, box: int, band: int, sigma2: np.ndarray | None = None, xi: float = np.inf
) -> AlignSettings:
    """Fast-alignment settings of an iteration: the current band, the run's M and shift.

    The phase-aware scan (when on) works up to ``min(config.tuning.scan_band, band)`` with shells
    weighted by ``1 / sigma_r^2`` (the matched filter of the noise model) and shifts within
    ``3 xi`` (at least two steps of its grid).
    """
    band_limit = int(min(max(band, 2), box // 2 - 1))
    scan = {}
    if config.tuning.scan_step_deg is not None:
        scan_band = min(
            10 if config.tuning.scan_band is None else config.tuning.scan_band, band_limit
        )
        weights = None
        if sigma2 is not None:
            inv = 1.0 / np.maximum(np.asarray(sigma2[: scan_band + 1], dtype=np.float64), 1e-30)
            weights = tuple(inv / inv[1:].max())
        scan = dict(
            scan_step_deg=config.tuning.scan_step_deg,
            scan_band=scan_band,
            scan_candidates=config.tuning.scan_candidates,
            scan_max_shift=max(3.0 * xi, 4.0),
            scan_shell_weights=weights,
        )
    return AlignSettings(
        box=box,
        max_candidates=config.tuning.max_candidates,
        max_shift=config.max_shift,
        band_limit=band_limit,
        **scan,
    )


def step_context(
    state: ModelState, config: RunConfig, phase: Phase, mask: np.ndarray
) -> StepContext:
    """What every worker needs for iteration ``phase.iteration`` after ``state``.

    The class averages filtered by their FSC and masked (:func:`faml.ml.state.filtered_average`),
    prepared for the fast alignment at the current band, and sampled for the likelihood
    up to ``band_e`` (the band plus ``Tuning.band_margin``); with independent halves, each
    half-set's own.
    """
    box = mask.shape[0]
    settings = settings_for(config, box, state.band, state.sigma2, state.xi)
    band_e = int(min(state.band + config.tuning.band_margin, box // 2 - 1))

    def prepared(half):
        maps = np.stack([filtered_average(state, k, mask, half) for k in range(config.classes)])
        spectra = scipy.fft.rfftn(maps, axes=(-3, -2, -1), workers=1)
        return tuple(prepare_average(m, settings) for m in maps), reference_points(spectra, band_e)

    half_align = half_references = None
    if phase.halves_independent and state.half_averages is not None:
        per_half = [prepared(h) for h in (0, 1)]
        half_align = (per_half[0][0], per_half[1][0])
        half_references = np.stack([per_half[0][1], per_half[1][1]])
        align, references = (), half_references[0]
    else:
        align, references = prepared(None)
    with np.errstate(divide="ignore"):
        log_alpha = np.log(np.maximum(state.alpha, 1e-300))
    return StepContext(
        config=config,
        phase=phase,
        box=box,
        log_alpha=log_alpha,
        sigma2=state.sigma2,
        xi=state.xi,
        align=align,
        references=references,
        band_e=band_e,
        # The sums reach twice the likelihood's band: the half maps' FSC can show the
        # resolution doubling in one iteration, and the maps are filtered to that band
        # anyway. At 64^3 and band 6 the whole sphere cost 90% of the map step.
        band_m=min(2 * band_e, box // 2 - 1),
        half_align=half_align,
        half_references=half_references,
    )
