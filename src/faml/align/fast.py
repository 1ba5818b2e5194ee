"""``fast_align``: a short list of candidate rigid transforms of a particle against an average.

FAML's step 1 (paper section 2.1; DESIGN.md section 3.1):

The particle comes as a volume ``X`` and a Fourier weight ``w`` that multiplies the reference
(``X = w T(A) + white noise``: a binary wedge, ``|CTF|``, the signed CTF, or whitened
premultiplied data, :func:`faml.geometry.wedge.whitened`); the correlations use its
premultiplied form ``D = w X``, ``C = w^2`` (:mod:`faml.align.translate`).

1. Translation-invariant rotational score. On spherical shells of Fourier space (radius
   ``1..band_limit``), ``p0 = C (|D| / C - mu_s)``, ``p1 = C``, ``q0 = |A| - nu_s``,
   ``q1 = q0^2``, where ``mu_s`` is the shell's mean observed particle magnitude ``|D| / C``
   (for a binary wedge: ``w^2 (|X| - mu_s)``, ``p1 = w^2``) and ``nu_s`` the shell's mean
   average magnitude (zero-mean magnitudes; no ``r^2`` shell weight: both measured to find more true
   poses at low SNR, DESIGN.md section 3.1). The score is
   ``c~(R) = C0(R) / sqrt(C1(R))`` with ``Ci(R) = sum_s <pi_s, qi_s o R^-1>``.
2. ``C0`` and ``C1`` for every rotation of a ``(2L + 2) x n x n`` Euler grid at once: spherical
   harmonics to degree ``L`` per shell (even degrees only: magnitudes are Friedel-symmetric),
   then the SO(3) correlation of :mod:`faml.align.so3` (Wigner-d sum + one 2D inverse FFT per
   ``beta``). No volume is rotated in this step.
3. Candidate rotations = local maxima of ``c~`` (wrap-around and poles handled), best first,
   refined below the grid step by a quadratic fit.
4. For each candidate, the average is rotated about voxel ``N // 2`` (in Fourier space, from a
   padded spectrum: :mod:`faml.align.fourier_rotation`) and the wedge-constrained
   correlation is evaluated for every integer shift by one inverse FFT
   (:mod:`faml.align.translate`); the best within ``max_shift`` is refined below a voxel.
   The candidates are returned ordered by that correlation.
5. With ``settings.scan_step_deg`` set, the phase-aware scan (:mod:`faml.align.scan`: the
   constrained correlation on a quasi-uniform rotation grid x a coarse shift grid, low
   frequencies) proposes ``scan_candidates`` more rotations, scored and refined like the
   others in step 4. Measured against the true map (60 particles of 1U6G, 32^3, +-60,
   band 8): a candidate within 15 degrees for 48% / 82% of particles at SNR 0.01 / 0.02
   without the scan, 98% / 100% with it (an exhaustive 7.5 degree, 1-voxel search: 98% /
   100%).

The pieces live in their own modules and are importable from here too: the settings
(:class:`~faml.align.settings.AlignSettings`) in :mod:`faml.align.settings`, the average's
precomputation (:func:`~faml.align.prepared.prepare_average`) in :mod:`faml.align.prepared`,
and the whole-grid candidates (:func:`~faml.align.grid_search.grid_candidates`) in
:mod:`faml.align.grid_search`. This module holds the candidate search itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.spatial.transform import Rotation

from faml.align._sphere import analyse
from faml.align.fourier_rotation import crop_half_spectrum, rotated_cross_spectra
from faml.align.grid_search import grid_candidates
from faml.align.peaks import find_peaks
from faml.align.prepared import (
    PreparedAverage,
    _check_volume,
    _shell_setup,
    checked_particle,
    prepare_average,
)
from faml.align.scan import scan
from faml.align.settings import AlignSettings, _scan_shifts, _scan_weights, st_step_deg
from faml.align.shells import sample_shells
from faml.align.so3 import euler_grid, so3_correlate
from faml.align.translate import (
    CrossSpectra,
    correlation_at_shifts,
    refine_shifts,
    search_cross,
)
from faml.geometry.euler import matrix_to_euler
from faml.geometry.rotations import axis_stencil, distinct

__all__ = [
    "Candidate",
    "AlignSettings",
    "PreparedAverage",
    "prepare_average",
    "align_to",
    "fast_align",
    "grid_candidates",
]


@dataclass(frozen=True)
class Candidate:
    """One candidate rigid transform of a particle against an average.

    Attributes
    ----------
    rotation
        `(3, 3)` float64 matrix in RELION's sense: it maps the average's ``(x, y, z)``
        coordinates (about voxel ``N // 2``) to the particle's.
    shift
        `(3,)` float64 ``(x, y, z)`` voxels: the particle is the average rotated by
        ``rotation`` about voxel ``N // 2`` and then displaced by ``shift``. (RELION's
        ``rlnOrigin*Angst`` is ``-shift * pixel_size``.)
    score
        Wedge-constrained correlation of the particle with the transformed average
        (Pearson-like, ``-1..1``, DC excluded); candidates are ordered by it.
    rotational_score
        The translation-invariant score ``c~`` at the (refined) grid maximum that proposed it.
    """

    rotation: np.ndarray
    shift: np.ndarray
    score: float
    rotational_score: float = field(default=float("nan"))

    @property
    def euler(self) -> np.ndarray:
        """`(3,)` RELION ``(rot, tilt, psi)`` in degrees of :attr:`rotation`."""
        return matrix_to_euler(self.rotation)


@lru_cache(maxsize=16)
def band_mask(box: int, band_limit: int) -> np.ndarray:
    """`(N, N, N//2 + 1)` float32 ``rfftn``-layout sphere ``|k| <= band_limit + 1/2`` voxels."""
    kz = np.fft.fftfreq(box, 1.0 / box)[:, None, None]
    ky = np.fft.fftfreq(box, 1.0 / box)[None, :, None]
    kx = np.fft.rfftfreq(box, 1.0 / box)[None, None, :]
    mask = (kz**2 + ky**2 + kx**2 <= (band_limit + 0.5) ** 2).astype(np.float32)
    mask.setflags(write=False)
    return mask


class Stopwatch:
    """Adds the wall time of named stages into a dict (when one is given)."""

    def __init__(self, sink: dict[str, float] | None):
        self.sink = sink
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sink is not None:
            now = time.perf_counter()
            self.sink[name] = self.sink.get(name, 0.0) + now - self.last
            self.last = now


STAGES = ("spectra+shells", "sht", "so3", "peaks", "scan", "translations", "polish")
"""Names of the stages :func:`align_to` reports in its ``timings`` dict."""


def _rotational_score(data_ft, weight, prepared, clock):
    """``c~`` on the Euler grid: `(n_beta, n_alpha, n_gamma)` float64."""
    st = prepared.settings
    grid, radii, degrees, keep = _shell_setup(st)
    # Normalised interpolation: the shell value of |X| is interp(|D|) / interp(C) (for a
    # binary wedge interp(w^2 |X|) / interp(w^2)), so nodes next to the wedge's edge read
    # observed neighbours only instead of a mix of signal and the zeros of the missing
    # region; a node counts as observed where interp(C) is at least half the weight's
    # maximum (fractional weights, e.g. CTF envelopes, keep their value there).
    # (Interpolating |X| and w^2 separately moved the maximum 5-20 degrees off the truth on a
    # +-60 degree wedge.)
    magnitude = np.where(weight > 0, np.sqrt(data_ft.real**2 + data_ft.imag**2), 0.0)
    w2_s, w2mag_s = sample_shells(np.stack([weight, magnitude]), radii, grid).astype(
        np.float64
    )  # (S, n_theta, n_phi) each
    w_max = float(weight.max())
    mag = w2mag_s / np.maximum(w2_s, 1e-6 * w_max)
    w2 = np.where(w2_s >= 0.5 * w_max, w2_s, 0.0)
    shell_sum_w = np.einsum("j,sjk->s", grid.weights, w2)
    mu = np.einsum("j,sjk->s", grid.weights, w2 * mag) / np.maximum(shell_sum_w, 1e-12)
    p0 = w2 * (mag - mu[:, None, None])
    clock.lap("spectra+shells")
    f = analyse(np.stack([p0, w2]), grid, degrees) * keep[None, :, :, None]
    f = f * st.resolved_shell_weights[None, :, None, None]
    clock.lap("sht")
    c0, c1 = so3_correlate(f, prepared.coeffs, degrees, euler_grid(st.resolved_degree))
    c0 = c0.astype(np.float64)
    c1 = c1.astype(np.float64)
    top = float(np.nanmax(c1)) if np.any(np.isfinite(c1)) else 0.0
    if not top > 0 or not np.any(np.isfinite(c0)):
        raise ValueError(
            "the rotational score is empty: the average has no signal inside the band limit "
            "where the particle's weight is non-zero (an empty average or an all-zero weight)"
        )
    score = c0 / np.sqrt(np.maximum(c1, 1e-12 * top))
    clock.lap("so3")
    return score


def align_to(
    particle: np.ndarray,
    wedge: np.ndarray,
    prepared: PreparedAverage,
    *,
    timings: dict[str, float] | None = None,
) -> list[Candidate]:
    """Candidate transforms of a particle against a prepared average (see :func:`fast_align`).

    ``particle`` `(N, N, N)` and ``wedge``, its weight ``w`` in rfft layout, as
    :func:`fast_align`'s (module docstring): what :func:`faml.ml.em.load_particle` gives.
    ``timings``, if given, receives the seconds spent per stage (:data:`STAGES`), added to
    what it holds.
    """
    clock = Stopwatch(timings)
    st = prepared.settings
    particle, wedge = checked_particle(particle, wedge, st)
    box = particle.shape[0]
    weight = wedge * wedge
    data_ft = scipy.fft.rfftn(particle, workers=1) * wedge
    # Everything is scored within the band limit: beyond it the average is not trusted
    # (resolution) and the interpolation of rotated volumes is least accurate.
    score = _rotational_score(
        data_ft, weight * band_mask(box, st.resolved_band_limit), prepared, clock
    )
    peaks = find_peaks(
        score, euler_grid(st.resolved_degree), st.resolved_proposals, refine=st.refine
    )
    rotations = np.stack([p.rotation for p in peaks])
    clock.lap("peaks")
    # Translations and polishing at the translation box (shifts in its voxels until the end).
    tbox = st.resolved_translation_box
    data_ft = crop_half_spectrum(data_ft, tbox)
    full_weight = crop_half_spectrum(weight, tbox)
    weight = full_weight * band_mask(tbox, st.translation_band_limit)
    if st.scan_step_deg is not None:
        scan_rots, _, _ = scan(
            prepared.scan_reference(),
            data_ft,
            full_weight,
            _scan_shifts(st),
            _scan_weights(st),
            st.scan_candidates,
            1.5 * st.scan_step_deg,
        )
        rotations = np.concatenate([scan_rots, rotations])
        values = np.concatenate([np.full(len(scan_rots), np.nan), [p.value for p in peaks]])
    else:
        values = np.array([p.value for p in peaks])
    clock.lap("scan")
    return ranked(prepared, data_ft, weight, rotations, values, clock)


def ranked(
    prepared: PreparedAverage,
    data_ft: np.ndarray,
    weight: np.ndarray,
    rotations: np.ndarray,
    values: np.ndarray,
    clock: Stopwatch,
    polish: int | None = None,
    rounds: int | None = None,
) -> list[Candidate]:
    """Proposed rotations made candidates: shifted, ranked, polished (steps 4-5 above).

    ``data_ft``, ``weight``: the particle's premultiplied spectrum and its band-limited
    weight at the translation box; ``rotations`` `(B, 3, 3)` the proposals and ``values``
    `(B,)` their rotational scores (NaN where none). Each gets its best shift within
    ``max_shift`` (the constrained correlation), the best ``max_candidates`` are kept, the
    best ``polish`` of them polished in ``rounds`` rounds (defaults: the settings'), and
    near-copies dropped. Shifts are returned in voxels
    of the full box.
    """
    st = prepared.settings
    shifts, scores = _score_rotations(prepared, data_ft, weight, rotations)
    order = np.argsort(-scores, kind="stable")
    order = order[: st.max_candidates]
    rotations, shifts, scores = rotations[order], shifts[order], scores[order]
    values = values[order]
    clock.lap("translations")
    n_polish = min(st.polish if polish is None else polish, len(scores)) if st.refine else 0
    if n_polish:
        step = np.radians(st_step_deg(st)) / 2
        sel = slice(0, n_polish)
        for _ in range(st.polish_rounds if rounds is None else rounds):
            rotations[sel], shifts[sel], scores[sel] = _polish(
                prepared, data_ft, weight, rotations[sel], shifts[sel], scores[sel], step
            )
            step /= 2
        order = np.argsort(-scores, kind="stable")
        rotations, shifts, scores = rotations[order], shifts[order], scores[order]
        values = values[order]
    # Refinement and polishing can pull two maxima onto one pose (copies of a maximum near
    # a tilt pole): keep the better of any two closer than half the grid step.
    keep = distinct(rotations, 0.5 * st_step_deg(st))
    rotations, shifts, scores, values = rotations[keep], shifts[keep], scores[keep], values[keep]
    clock.lap("polish")
    shifts = shifts * (st.box / st.resolved_translation_box)
    return [
        Candidate(rotations[i], shifts[i], float(scores[i]), float(values[i]))
        for i in range(len(scores))
    ]


def _cross(prepared: PreparedAverage, data_ft, weight, rotations) -> CrossSpectra:
    """Cross spectra of the (translation-box) particle with the average at ``rotations``."""
    st = prepared.settings
    return rotated_cross_spectra(
        prepared.padded, rotations, st.translation_band_limit, data_ft, weight
    )


def _score_rotations(
    prepared: PreparedAverage,
    data_ft: np.ndarray,
    weight: np.ndarray,
    rotations: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Best shift `(B, 3)` and constrained correlation `(B,)` per rotation `(B, 3, 3)`.

    All shifts within ``max_shift`` are searched, then refined below a voxel; shifts are in
    voxels of the translation box.
    """
    st = prepared.settings
    scale = st.resolved_translation_box / st.box
    cs = _cross(prepared, data_ft, weight, rotations)
    return search_cross(cs, st.resolved_max_shift * scale, subvoxel=st.refine)


def _polish(prepared, data_ft, weight, rotations, shifts, scores, step):
    """One round of local rotation refinement on the constrained correlation.

    For each of `(B, 3, 3)` ``rotations`` (with their `(B, 3)` ``shifts`` and `(B,)`
    ``scores``), the correlation is evaluated at the current shift for small rotations by
    ``+-step`` (radians) about x, y and z applied on the particle side; a parabola per axis
    gives the move. At the moved rotation the shift is re-optimised (Newton), and the move is
    kept only where it raises the correlation. Returns updated rotations, shifts and scores.
    """
    n = rotations.shape[0]
    trial = axis_stencil(rotations, step).reshape(-1, 3, 3)
    s = correlation_at_shifts(
        _cross(prepared, data_ft, weight, trial), np.repeat(shifts, 6, axis=0)
    )
    s = s.reshape(n, 2, 3)
    plus, minus = s[:, 0], s[:, 1]
    denom = plus - 2 * scores[:, None] + minus
    with np.errstate(divide="ignore", invalid="ignore"):
        move = np.where(denom < 0, 0.5 * (minus - plus) / denom, 0.0)
    move = np.clip(move, -1.0, 1.0) * step  # (n, 3) rotation vectors
    moved = Rotation.from_rotvec(move).as_matrix() @ rotations
    st = prepared.settings
    new_shifts, new_scores = refine_shifts(
        _cross(prepared, data_ft, weight, moved),
        shifts,
        iterations=1,
        max_shift=st.resolved_max_shift * st.resolved_translation_box / st.box,
    )
    better = new_scores > scores
    return (
        np.where(better[:, None, None], moved, rotations),
        np.where(better[:, None], new_shifts, shifts),
        np.where(better, new_scores, scores),
    )


def fast_align(
    particle: np.ndarray,
    wedge: np.ndarray,
    average: np.ndarray,
    *,
    max_candidates: int = 20,
    max_shift: float | None = None,
    band_limit: int | None = None,
    degree: int | None = None,
) -> list[Candidate]:
    """Candidate rigid transforms that bring ``average`` onto ``particle``, best first.

    Parameters
    ----------
    particle
        `(N, N, N)` float32 real-space subtomogram, ``(z, y, x)`` axis order.
    wedge
        `(N, N, N//2 + 1)` the particle's Fourier weight ``w``, which multiplies the average
        (missing wedge 0 / 1, ``|CTF|`` or the signed CTF, in ``[-1, 1]``), in numpy
        ``rfftn`` layout: DC at ``[0, 0, 0]``, not shifted (RELION's FFTW half layout).
    average
        `(N, N, N)` float32 real-space average, ``(z, y, x)``.
    max_candidates
        ``M``, the most candidates returned (default 20).
    max_shift
        Largest shift searched, voxels (a sphere). Default ``N / 4``.
    band_limit
        Outermost Fourier shell (voxels) of the rotational search. Default ``N // 2 - 1``.
    degree
        Spherical harmonic degree ``L`` of the rotational search. Default ``N // 2``: an
        Euler grid of ``2L + 2`` tilts and ``>= 2L + 2`` rot/psi steps.

    Returns
    -------
    list[Candidate]
        At most ``max_candidates``, ordered by the wedge-constrained correlation, best first.
        ``cand.rotation`` (3x3, RELION's sense) maps the average's ``(x, y, z)`` coordinates
        to the particle's about voxel ``N // 2``; ``cand.shift`` (``(x, y, z)`` voxels) is the
        displacement applied after the rotation:
        ``particle(x) ~ average(R^T (x - c - shift) + c)``, ``c = N // 2``.
    """
    particle = _check_volume("particle", particle)
    settings = AlignSettings(
        box=particle.shape[0],
        max_candidates=max_candidates,
        max_shift=max_shift,
        band_limit=band_limit,
        degree=degree,
    )
    return align_to(particle, wedge, prepare_average(average, settings))
