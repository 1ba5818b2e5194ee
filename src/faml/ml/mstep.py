"""The M-step: new parameters from the summed statistics (paper eqs. 10-13, DESIGN.md 3.4).

:func:`m_step` gives the class averages (per half-set and joint), the class priors
``alpha = n / N``, the noise variance per shell ``sigma_r^2 = sum g d_r(A_new) / C_r`` (the
maximiser given the new averages) and the translation prior ``xi^2 = D / (3 N)`` (floored at
one voxel). The averages are ``S / max(W, 0.1 L)`` (:func:`compensated_mean`, the maximiser
where at least a tenth of the weight observed a component; ``L = n`` for binary wedges), or
with ``Tuning.average_update == "paper"`` eq. 10, ``A = (S + (n - W) A_old) / n``.

:func:`update_model` is the whole M-step of an iteration as the engine runs it: the sums
symmetrised over the point group (:func:`symmetrize_stats`), :func:`m_step`, the averages
turned into the group's frame once, the FSC between the half-set averages and the band it
gives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import scipy.fft

from faml.align.fourier_rotation import padded_spectrum, rotated_points
from faml.align.translate import half_spectrum_multiplicity
from faml.geometry.symmetry import PointGroup, parse_symmetry, symmetry_frame
from faml.geometry.transform import transform_volume
from faml.ml.config import RunConfig
from faml.ml.focus import focus_state
from faml.ml.fourier import band_from_fsc, fsc, shell_index
from faml.ml.phase import Phase
from faml.ml.state import ModelState
from faml.ml.stats import Stats, frame_points, shell_sums, turned_weights

__all__ = [
    "MStepResult",
    "compensated_mean",
    "m_step",
    "model_band",
    "reference_model",
    "symmetrize_stats",
    "update_model",
]

logger = logging.getLogger(__name__)


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
    kzyx, flat, _, _ = frame_points(box, band)
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


def update_model(
    stats: Stats,
    previous: ModelState | None,
    config: RunConfig,
    phase: Phase,
    n_particles: int,
    mask: np.ndarray,
    focus: np.ndarray | None = None,
) -> ModelState:
    """The model after iteration ``phase.iteration``'s M-step.

    ``previous``: the model before it (``None`` at the random start). ``focus``: the
    `(N, N, N)` focus mask of a focused classification (:mod:`faml.ml.focus`): the class
    averages and their halves are made equal outside it before the FSC.

    The sums are symmetrised first when the phase says so, the averages turned into the
    point group's frame after the M-step of :func:`~faml.ml.phase.symmetry_frame_iteration`
    (:func:`to_symmetry_frame`); the band is where the FSC between the half-set averages
    first drops below 0.143, at least ``Tuning.min_band`` shells.
    """
    box, tuning = stats.box, config.tuning
    group = parse_symmetry(config.symmetry)
    if phase.symmetrize:
        stats = symmetrize_stats(stats, group.rotations())
    m = m_step(
        stats,
        None if previous is None else previous.averages,
        phase.method,
        None if previous is None else previous.sigma2,
        n_particles,
        tuning.average_update,
    )
    averages, halves = m.averages, m.half_averages
    if phase.to_symmetry_frame:
        averages, halves = to_symmetry_frame(averages, halves, group, mask)
    if focus is not None and config.classes > 1:
        averages, halves = focus_state(averages, halves, m.alpha, stats.n, focus)
    curves = np.stack([fsc(halves[0, k], halves[1, k]) for k in range(config.classes)])
    band = model_band(curves, tuning.min_band, box)
    return ModelState(
        phase.iteration, averages, curves, band, m.alpha, m.sigma2, m.xi,
        halves if config.gold_standard else None,
    )  # fmt: skip


def model_band(curves: np.ndarray, min_band: int, box: int) -> int:
    """The band of a model with `(K, N//2 + 1)` half-set FSC ``curves``.

    The largest class's 0.143 shell, at least ``min_band`` and below Nyquist.
    """
    return int(np.clip(max(band_from_fsc(c) for c in curves), min_band, box // 2 - 1))


def to_symmetry_frame(
    averages: np.ndarray, halves: np.ndarray, group: PointGroup, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each class's averages (joint and halves) turned into ``group``'s frame.

    The frame is found on the joint average (:func:`faml.geometry.symmetry.symmetry_frame`).
    """
    averages, halves = averages.copy(), halves.copy()
    shape = (mask.shape[0],) * 3
    for k in range(averages.shape[0]):
        joint = scipy.fft.irfftn(averages[k], s=shape, workers=1)
        q, t, score = symmetry_frame(joint, group, mask)
        logger.info(
            "class %d brought into the %s frame (mean correlation of its symmetry copies %.3f)",
            k + 1, group.name, score,
        )  # fmt: skip
        for target in (averages, halves[0], halves[1]):
            vol = scipy.fft.irfftn(target[k], s=shape, workers=1).astype(np.float32)
            target[k] = scipy.fft.rfftn(transform_volume(vol, q, t, order=3), workers=1)
    return averages, halves


def reference_model(
    references: np.ndarray, start: ModelState, config: RunConfig, voxel_size: float
) -> ModelState:
    """The model of iteration 0 of a run from references (``config.references > 0``).

    ``references`` `(K, N, N, N)` are the class averages (and both half averages), trusted up
    to the shell of ``config.initial_lowpass``; the noise per shell and ``xi`` are those of
    the random start ``start`` (the particles against their random-pose means); the classes
    are equally likely.
    """
    box, K = references.shape[-1], config.classes
    shell = box * voxel_size / config.initial_lowpass
    band = int(np.clip(round(shell), config.tuning.min_band, box // 2 - 1))
    spectra = scipy.fft.rfftn(references, axes=(-3, -2, -1), workers=1)
    curve = np.zeros((K, box // 2 + 1))
    curve[:, : band + 1] = 1.0
    halves = np.stack([spectra, spectra]) if config.gold_standard else None
    alpha = np.full(K, 1.0 / K)
    return ModelState(0, spectra, curve, band, alpha, start.sigma2, start.xi, halves)
