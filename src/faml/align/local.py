"""Local alignment: candidates near a prior pose, without a search of all of SO(3).

A particle with a prior pose ``(R0, t0)`` (template matching, an earlier run) whose true
pose lies within ``range_deg`` of ``R0`` needs neither the magnitude search nor the scan of
the whole rotation grid (:mod:`faml.align.fast` steps 1-3 and 5). :func:`local_align`:

1. moves the particle back by its prior offset ``t0`` (a phase ramp on its spectrum), so
   the translation search of step 4 is centred on ``t0`` and reaches ``max_shift`` from it;
2. scores the rotations of the scan's quasi-uniform grid
   (:func:`faml.align.scan.rotation_grid`) within the range of ``R0`` (:func:`near_prior`,
   the angle of ``R R0^T``) with the phase-aware scan (:func:`faml.align.scan.scan`: the
   constrained correlation on a coarse shift grid), reusing the average's rotated spectra
   that the scan computes once per iteration; about 70 of the 4608 rotations of the 15
   degree grid for a 30 degree range;
3. gives the prior itself and the scan's ``scan_candidates`` best rotations to step 4 of
   the fast alignment (:func:`faml.align.fast.ranked`: the best shift of each by one
   inverse FFT, ranking, polishing).

Without a scan in the settings (``--paper-exact``), every rotation of a local grid
(:func:`local_rotations`) goes to step 4.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from faml.align.fast import Candidate, Stopwatch, band_mask, ranked
from faml.align.fourier_rotation import crop_half_spectrum
from faml.align.prepared import PreparedAverage, checked_particle
from faml.align.scan import rotation_grid, scan
from faml.align.settings import _scan_shifts, _scan_weights
from faml.geometry.rotations import rotation_distance
from faml.geometry.transform import shift_fourier

__all__ = [
    "DEFAULT_STEP_DEG",
    "POLISHED",
    "POLISH_ROUNDS",
    "SUPPRESS_STEPS",
    "local_align",
    "local_rotations",
    "near_prior",
]

DEFAULT_STEP_DEG = 15.0
"""Step of the local grid when the settings have no scan step (as the scan's default)."""

SUPPRESS_STEPS = 1.0
"""The scan's proposals are no two closer than this many grid steps (the global search
uses 1.5: a 30 degree range then holds only a few proposals)."""

POLISHED, POLISH_ROUNDS = 1, 2
"""How many of the best candidates are polished, in how many rounds (the global search
polishes one in one round, after the magnitude search's maxima were refined below its
grid step; the local scan's proposals are not)."""


def local_rotations(prior_rotation: np.ndarray, range_deg: float, step_deg: float) -> np.ndarray:
    """`(n, 3, 3)` the prior rotation first, then the grid's rotations near it.

    The grid is :func:`~faml.align.scan.rotation_grid` at ``step_deg`` turned onto the prior
    (``G R0`` for the grid's ``G`` within ``range_deg + step_deg / 2`` of the identity, so
    that every rotation within ``range_deg`` has a grid rotation within about half a step).
    """
    near = _near_identity(float(range_deg), float(step_deg))
    r0 = np.asarray(prior_rotation, dtype=np.float64)
    return np.concatenate([r0[None], near @ r0])


def near_prior(
    rotations: np.ndarray, prior_rotation: np.ndarray, range_deg: float, step_deg: float
) -> np.ndarray:
    """Indices of the grid ``rotations`` `(n, 3, 3)` near the prior rotation.

    Those within ``range_deg + step_deg / 2`` of it (``step_deg``: the grid's spacing).
    """
    angle = rotation_distance(rotations, np.asarray(prior_rotation, dtype=np.float64)[None])
    return np.flatnonzero(angle <= range_deg + 0.5 * step_deg)


@lru_cache(maxsize=8)
def _near_identity(range_deg: float, step_deg: float) -> np.ndarray:
    grid = rotation_grid(step_deg)
    angle = rotation_distance(grid, np.eye(3)[None])
    near = grid[(angle <= range_deg + 0.5 * step_deg) & (angle > 1e-6)]
    near.setflags(write=False)
    return near


def local_align(
    particle: np.ndarray,
    wedge: np.ndarray,
    prepared: PreparedAverage,
    prior_rotation: np.ndarray,
    prior_shift: np.ndarray,
    range_deg: float,
    *,
    timings: dict[str, float] | None = None,
) -> list[Candidate]:
    """Candidate transforms of a particle near its prior pose, best first.

    ``particle`` `(N, N, N)` and ``wedge`` (its weight ``w`` in rfft layout), ``prepared`` as
    :func:`faml.align.fast.align_to`'s; ``prior_rotation`` `(3, 3)` (RELION's sense) and
    ``prior_shift`` `(3,)` ``(x, y, z)`` voxels: the prior pose; ``range_deg``: how far from
    it rotations are proposed. The settings' ``scan_step_deg`` (or
    :data:`DEFAULT_STEP_DEG`), ``scan_band``, ``scan_candidates`` and ``scan_max_shift`` set
    the local scan, ``max_shift`` the translation search about ``prior_shift``. Candidates
    are as :func:`~faml.align.fast.align_to`'s (polishing may move one slightly beyond the
    range); their shifts are absolute (the prior offset added back). ``timings`` receives
    seconds per stage (``"spectra"``, ``"scan"``, ``"translations"``, ``"polish"``).
    """
    clock = Stopwatch(timings)
    st = prepared.settings
    particle, wedge = checked_particle(particle, wedge, st)
    box = particle.shape[0]
    if not range_deg > 0:
        raise ValueError(f"the local search range must be positive, got {range_deg} degrees")
    tbox = st.resolved_translation_box
    prior_shift = np.asarray(prior_shift, dtype=np.float64)
    data_ft = scipy.fft.rfftn(particle, workers=1) * wedge
    data_ft = shift_fourier(crop_half_spectrum(data_ft, tbox), -prior_shift * tbox / box, box=tbox)
    full_weight = crop_half_spectrum(wedge * wedge, tbox)
    weight = full_weight * band_mask(tbox, st.translation_band_limit)
    clock.lap("spectra")
    if st.scan_step_deg is not None:
        # the rows of the average's scan (rotated once per iteration) near the prior
        reference = prepared.scan_reference()
        step = float(st.scan_step_deg)
        rows = near_prior(reference.rotations, prior_rotation, range_deg, step)
        proposed = np.empty((0, 3, 3))
        if rows.size:
            proposed, _, _ = scan(
                reference, data_ft, full_weight, _scan_shifts(st), _scan_weights(st),
                st.scan_candidates, SUPPRESS_STEPS * step, rows=rows,
            )  # fmt: skip
    else:
        # no scan in the settings: the average rotated to a local grid, all of it proposed
        proposed = local_rotations(prior_rotation, range_deg, DEFAULT_STEP_DEG)[1:]
    proposed = np.concatenate([np.asarray(prior_rotation, np.float64)[None], proposed])
    clock.lap("scan")
    values = np.full(len(proposed), np.nan)
    candidates = ranked(prepared, data_ft, weight, proposed, values, clock, POLISHED, POLISH_ROUNDS)
    return [
        Candidate(c.rotation, c.shift + prior_shift, c.score, c.rotational_score)
        for c in candidates
    ]
