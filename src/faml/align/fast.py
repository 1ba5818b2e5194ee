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
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.spatial.transform import Rotation

from faml.align._sphere import analyse, sphere_grid
from faml.align.fourier_rotation import (
    PaddedSpectrum,
    crop_half_spectrum,
    crop_volume,
    padded_spectrum,
    rotated_cross_spectra,
)
from faml.align.peaks import find_peaks
from faml.align.scan import ScanReference, scan, scan_reference, shift_grid
from faml.align.shells import default_band_limit, sample_shells, shell_degree_caps
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


@dataclass(frozen=True)
class AlignSettings:
    """Parameters of the fast alignment for one box size.

    Attributes
    ----------
    box
        ``N``, the cubic box side in voxels.
    max_candidates
        ``M``: at most this many candidates are returned.
    max_shift
        Largest translation searched, voxels (sphere radius). Default ``N / 4``.
    band_limit
        Outermost Fourier shell (voxels) used by the rotational search. Default ``N // 2 - 1``.
    degree
        Spherical harmonic band limit ``L``. Default ``N // 2`` (16 at 32^3, 32 at 64^3).
    shell_weights
        Optional `(band_limit,)` non-negative weight per shell ``1..band_limit`` of the
        rotational score (e.g. an SNR estimate). Default: proportional to the radius ``r``.
        Measured on the 32^3 ribosome test set (+-60 wedge, 200 particles aligned to the
        true map): a candidate within 10 degrees at SNR 0.1 for 90.5% of particles with
        equal weights, 94.5% with ``r`` (95% with ``r^2``, 94% with ``sqrt(r)``); within
        15 degrees at SNR 0.02 for 35% (equal), 48.5% (``r``), 43% (``sqrt(r)``).
        Down-weighting outer shells (``1/r``, a Gaussian low-pass) lost 10-25 points.
    refine
        Refine rotations below the grid step and shifts below a voxel.
    translation_box
        Box (even, ``<= N``) at which candidates are scored, shifted and polished: the
        particle and average Fourier-cropped to it. Default ``N`` up to 32^3, else
        ``max(32, N // 2)``: the rotational search already used the full band, and the
        ranking and shifts need the low frequencies most (shifts stay sub-voxel).
    polish
        How many of the best candidates get a final local refinement of their rotation on
        the wedge-constrained (phase-aware) correlation itself: the magnitude score's
        maximum sits a few degrees off the truth under a missing wedge, the correlation's
        does not. Each round is a 6-point stencil (step: half the grid step, halved per
        round) and a parabola per axis.
    proposals
        How many maxima of the rotational score go to the translation stage, of which the
        best ``max_candidates`` by constrained correlation are kept. Default
        ``max_candidates``.
    polish_rounds
        Rounds of polishing. Measured on 50 noise-free 32^3 poses (+-60 wedge): one round
        leaves a median error of 0.26 degrees (max 1.8), two rounds 0.05 (max 0.17) for
        about 25% more time.
    scan_step_deg
        Rotation step of the phase-aware coarse scan (:mod:`faml.align.scan`), or ``None``
        for none. Its ``scan_candidates`` best rotations (no two within 1.5 steps), with
        their best shifts, join the magnitude search's proposals before the candidates are
        ranked by the constrained correlation.
    scan_shift_step
        Shift step of the scan's grid (voxels of the full box).
    scan_max_shift
        Radius of the scan's shift grid (voxels of the full box); default ``max_shift``.
        The cost of the scan grows with its cube: measured at 32^3, band 6, 15 degrees,
        37 ms per particle at radius 8 and 18 ms at radius 4 (with the magnitude search).
    scan_band
        Band limit of the scan (voxels of the full box). Default: ``band_limit``, at most
        the translation stage's band.
    scan_shell_weights
        Weight per shell ``0, 1, ...`` (of the full box; the last value serves beyond) of the
        scan's correlation (e.g. ``1 / sigma_r^2`` of the noise: the matched filter), or
        ``None`` for equal weights.
    """

    box: int
    max_candidates: int = 20
    max_shift: float | None = None
    band_limit: int | None = None
    degree: int | None = None
    shell_weights: tuple[float, ...] | None = None
    refine: bool = True
    polish: int = 1
    polish_rounds: int = 1
    proposals: int | None = None
    translation_box: int | None = None
    scan_step_deg: float | None = None
    scan_shift_step: float = 2.0
    scan_max_shift: float | None = None
    scan_candidates: int = 10
    scan_band: int | None = None
    scan_shell_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("box", "max_candidates", "polish", "polish_rounds"):
            if not isinstance(getattr(self, name), (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.box < 8:
            raise ValueError(f"box must be at least 8 voxels, got {self.box}")
        if self.translation_box is not None and not (
            self.translation_box == self.box
            or (
                8 <= self.translation_box < self.box
                and self.translation_box % 2 == 0
                and self.box % 2 == 0
            )
        ):
            raise ValueError(
                f"translation_box must be even, >= 8 and <= {self.box} (and the box even), "
                f"got {self.translation_box}"
            )
        if self.polish < 0 or self.polish_rounds < 0:
            raise ValueError(
                f"polish and polish_rounds must be >= 0, got {self.polish}, {self.polish_rounds}"
            )
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.max_shift is not None and not 0 <= self.max_shift < self.box / 2:
            raise ValueError(f"max_shift must lie in [0, {self.box / 2}), got {self.max_shift}")
        if self.band_limit is not None and not 2 <= self.band_limit <= self.box // 2 - 1:
            raise ValueError(
                f"band_limit must lie in [2, {self.box // 2 - 1}] for a {self.box}^3 box, "
                f"got {self.band_limit}"
            )
        if self.degree is not None and not 6 <= self.degree <= 128:
            # Below L = 6 the Euler grid is coarser than 25 degrees: measured errors of
            # 30-170 degrees at L = 2-3 against 1.3 at L = 7.
            raise ValueError(f"degree must lie in [6, 128], got {self.degree}")
        if self.scan_step_deg is not None and not 1.0 <= self.scan_step_deg <= 90.0:
            raise ValueError(f"scan_step_deg must lie in [1, 90], got {self.scan_step_deg}")
        if self.scan_shift_step <= 0 or self.scan_candidates < 1:
            raise ValueError(
                f"scan_shift_step must be > 0 and scan_candidates >= 1, got "
                f"{self.scan_shift_step}, {self.scan_candidates}"
            )
        if self.scan_shell_weights is not None:
            ssw = np.asarray(self.scan_shell_weights, dtype=np.float64)
            if ssw.ndim != 1 or ssw.size < 2 or np.any(ssw < 0) or not np.all(np.isfinite(ssw)):
                raise ValueError(
                    "scan_shell_weights must be finite non-negative values for shells 0, 1, ..."
                    f" (of the full box), got {ssw!r}"
                )
        if self.shell_weights is not None:
            sw = np.asarray(self.shell_weights, dtype=np.float64)
            if (
                sw.shape != (self.resolved_band_limit,)
                or np.any(sw < 0)
                or not np.all(np.isfinite(sw))
            ):
                raise ValueError(
                    f"shell_weights must be {self.resolved_band_limit} finite non-negative "
                    f"values (shells 1..{self.resolved_band_limit}), got shape {sw.shape}"
                )

    @property
    def resolved_shell_weights(self) -> np.ndarray:
        """`(band_limit,)` float64 shell weights with the default (``r``) applied."""
        if self.shell_weights is None:
            return np.arange(1, self.resolved_band_limit + 1, dtype=np.float64)
        return np.asarray(self.shell_weights, dtype=np.float64)

    @property
    def resolved_proposals(self) -> int:
        """``proposals`` with its default applied (never fewer than ``max_candidates``)."""
        return max(self.max_candidates, self.proposals or self.max_candidates)

    @property
    def resolved_translation_box(self) -> int:
        """The translation box actually used (see ``translation_box``)."""
        if self.translation_box is not None:
            return int(self.translation_box)
        if self.box <= 32 or self.box % 2:
            return self.box
        half = self.box // 2
        return max(32, half + half % 2)

    @property
    def translation_band_limit(self) -> int:
        """Band limit (in ``translation_box`` voxels) of the translation stage."""
        tb = self.resolved_translation_box
        return min(self.resolved_band_limit, default_band_limit(tb))

    @property
    def resolved_scan_band(self) -> int:
        """The scan's band limit in voxels of the translation box."""
        tb = self.resolved_translation_box
        band = self.resolved_band_limit if self.scan_band is None else int(self.scan_band)
        return max(2, min(int(round(band * tb / self.box)), self.translation_band_limit))

    @property
    def resolved_max_shift(self) -> float:
        """``max_shift`` with its default applied (voxels of the full box)."""
        return self.box / 4 if self.max_shift is None else float(self.max_shift)

    @property
    def resolved_band_limit(self) -> int:
        """``band_limit`` with its default applied."""
        return default_band_limit(self.box) if self.band_limit is None else int(self.band_limit)

    @property
    def resolved_degree(self) -> int:
        """``degree`` with its default applied."""
        return self.box // 2 if self.degree is None else int(self.degree)


@dataclass(frozen=True)
class PreparedAverage:
    """What the fast alignment needs of an average, computed once and reused per particle.

    Attributes
    ----------
    settings
        The settings it was prepared for.
    volume
        `(N, N, N)` float32 real-space average, ``(z, y, x)``.
    coeffs
        `(2, S, n_l, L + 1)` harmonic coefficients of ``q0`` and ``q1`` on the shells.
    padded
        The padded spectrum of the average cropped to ``settings.resolved_translation_box``,
        from which rotated copies are drawn (:mod:`faml.align.fourier_rotation`).
    """

    settings: AlignSettings
    volume: np.ndarray
    coeffs: np.ndarray
    padded: PaddedSpectrum
    _scan: list = field(default_factory=list, repr=False, compare=False)

    def scan_reference(self) -> ScanReference:
        """The average rotated to the scan's grid (computed on first use, then kept).

        Kept twice: on this object, and in a small per-process cache keyed by the content of
        the spectrum, so that a worker process that receives the same average with every task
        of an iteration (pickled afresh each time) computes it once per iteration, not once
        per task.
        """
        if not self._scan:
            st = self.settings
            key = (
                hashlib.blake2b(self.padded.real.tobytes(), digest_size=16).digest(),
                hashlib.blake2b(self.padded.imag.tobytes(), digest_size=16).digest(),
                st.resolved_scan_band,
                st.scan_step_deg,
            )
            ref = _SCAN_CACHE.pop(key, None)
            if ref is None:
                ref = scan_reference(self.padded, st.resolved_scan_band, st.scan_step_deg)
            _SCAN_CACHE[key] = ref  # newest last
            while len(_SCAN_CACHE) > _SCAN_CACHE_SIZE:
                _SCAN_CACHE.popitem(last=False)
            self._scan.append(ref)
        return self._scan[0]


_SCAN_CACHE_SIZE = 4
"""Scan references kept per process (one per class average of the current iteration)."""

_SCAN_CACHE: OrderedDict = OrderedDict()


def _check_volume(name: str, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"{name} must be a cubic (N, N, N) volume, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(v, dtype=np.float32)


@lru_cache(maxsize=16)
def _band_mask(box: int, band_limit: int) -> np.ndarray:
    """`(N, N, N//2 + 1)` float32 ``rfftn``-layout sphere ``|k| <= band_limit + 1/2`` voxels."""
    kz = np.fft.fftfreq(box, 1.0 / box)[:, None, None]
    ky = np.fft.fftfreq(box, 1.0 / box)[None, :, None]
    kx = np.fft.rfftfreq(box, 1.0 / box)[None, None, :]
    mask = (kz**2 + ky**2 + kx**2 <= (band_limit + 0.5) ** 2).astype(np.float32)
    mask.setflags(write=False)
    return mask


def _shell_setup(settings: AlignSettings):
    L = settings.resolved_degree
    grid = sphere_grid(L)
    radii = np.arange(1, settings.resolved_band_limit + 1)
    degrees = np.arange(0, L + 1, 2)
    caps = shell_degree_caps(radii, L)
    keep = degrees[None, :] <= caps[:, None]  # (S, n_l)
    return grid, radii, degrees, keep


def prepare_average(average: np.ndarray, settings: AlignSettings) -> PreparedAverage:
    """Precompute the average's shell harmonics (``q0``, ``q1``) for :func:`align_to`.

    Parameters
    ----------
    average
        `(N, N, N)` real-space average, ``(z, y, x)``.
    settings
        Alignment settings for this box.
    """
    average = _check_volume("average", average)
    if average.shape[0] != settings.box:
        raise ValueError(
            f"average is {average.shape[0]}^3 but the settings are for {settings.box}^3"
        )
    grid, radii, degrees, keep = _shell_setup(settings)
    mag = np.abs(scipy.fft.rfftn(average, workers=1)).astype(np.float32)
    q0 = sample_shells(mag[None], radii, grid)[0].astype(np.float64)  # (S, nt, np)
    q0 -= np.einsum("j,sjk->s", grid.weights, q0)[:, None, None] / (4 * np.pi)
    coeffs = analyse(np.stack([q0, q0 * q0]), grid, degrees) * keep[None, :, :, None]
    coarse = crop_volume(average, settings.resolved_translation_box)
    return PreparedAverage(settings, average, coeffs, padded_spectrum(coarse))


class _Stopwatch:
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


def _check_weight(weight: np.ndarray, box: int) -> np.ndarray:
    """``weight`` (``w``, signed allowed) as float32, its layout and values checked."""
    half = (box, box, box // 2 + 1)
    weight = np.asarray(weight, dtype=np.float32)
    if weight.shape != half:
        raise ValueError(
            f"wedge must be the particle's Fourier weight in rfftn layout {half}, "
            f"got {weight.shape}"
        )
    if not np.all(np.isfinite(weight)) or not np.abs(weight).max() > 0:
        raise ValueError("the wedge (Fourier weight) must be finite and not all zero")
    return weight


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
    clock = _Stopwatch(timings)
    st = prepared.settings
    particle = _check_volume("particle", particle)
    box = particle.shape[0]
    if box != st.box:
        raise ValueError(f"particle is {box}^3 but the average is {st.box}^3")
    wedge = _check_weight(wedge, box)
    weight = wedge * wedge
    data_ft = scipy.fft.rfftn(particle, workers=1) * wedge
    # Everything is scored within the band limit: beyond it the average is not trusted
    # (resolution) and the interpolation of rotated volumes is least accurate.
    score = _rotational_score(
        data_ft, weight * _band_mask(box, st.resolved_band_limit), prepared, clock
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
    weight = full_weight * _band_mask(tbox, st.translation_band_limit)
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
    shifts, scores = _score_rotations(prepared, data_ft, weight, rotations)
    order = np.argsort(-scores, kind="stable")
    order = order[: st.max_candidates]
    rotations, shifts, scores = rotations[order], shifts[order], scores[order]
    values = values[order]
    clock.lap("translations")
    n_polish = min(st.polish, len(scores)) if st.refine else 0
    if n_polish:
        step = np.radians(st_step_deg(st)) / 2
        sel = slice(0, n_polish)
        for _ in range(st.polish_rounds):
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
    shifts = shifts * (st.box / tbox)
    return [
        Candidate(rotations[i], shifts[i], float(scores[i]), float(values[i]))
        for i in range(len(scores))
    ]


def grid_candidates(
    particle: np.ndarray,
    wedge: np.ndarray,
    prepared: PreparedAverage,
    count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` best poses of the whole rotation x shift grid of the scan.

    ``particle`` and ``wedge`` as for :func:`align_to`. Every rotation of
    :func:`~faml.align.scan.rotation_grid` (``settings.scan_step_deg``) and every shift of
    the scan's grid is scored by the phase-aware correlation with the scan's shell weights;
    no magnitude search, no translation stage, no polishing. At the scan's band the
    likelihood of a pose (the average's amplitude profiled out) grows with that score, so
    these are the grid's most probable poses: a reference-free iteration at low
    resolution draws its candidates from here (coarse-to-fine marginalisation).

    Returns
    -------
    tuple of np.ndarray
        `(m, 3, 3)` rotations, `(m, 3)` shifts (voxels ``(x, y, z)`` of the full box) and
        `(m,)` scores, best first, ``m <= count``.
    """
    st = prepared.settings
    if st.scan_step_deg is None:
        raise ValueError("grid_candidates needs settings with a scan_step_deg")
    particle = _check_volume("particle", particle)
    tbox = st.resolved_translation_box
    wedge = _check_weight(wedge, particle.shape[0])
    data_ft = crop_half_spectrum(scipy.fft.rfftn(particle, workers=1) * wedge, tbox)
    scale = tbox / st.box
    rotations, shifts, scores = scan(
        prepared.scan_reference(),
        data_ft,
        crop_half_spectrum(wedge * wedge, tbox),
        _scan_shifts(st),
        _scan_weights(st),
        count,
        0.0,
        coarse_to_fine=False,
    )
    return rotations, shifts / scale, scores


def _scan_shifts(st: AlignSettings) -> np.ndarray:
    """The scan's shift grid, in voxels of the translation box.

    ``scan_max_shift`` (at most ``max_shift``) and ``scan_shift_step`` are given in voxels of
    the full box.
    """
    scale = st.resolved_translation_box / st.box
    radius = min(st.resolved_max_shift, st.scan_max_shift or np.inf)
    return shift_grid(radius * scale, st.scan_shift_step * scale)


def _scan_weights(st: AlignSettings) -> np.ndarray | None:
    """The scan's shell weights at the translation box's shells ``0..resolved_scan_band``."""
    if st.scan_shell_weights is None:
        return None
    w = np.asarray(st.scan_shell_weights, dtype=np.float64)
    full = np.rint(np.arange(st.resolved_scan_band + 1) * st.box / st.resolved_translation_box)
    return w[np.minimum(full.astype(int), w.size - 1)]


def st_step_deg(settings: AlignSettings) -> float:
    """The Euler grid's coarsest step (degrees) for these settings."""
    return euler_grid(settings.resolved_degree).step_deg


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
