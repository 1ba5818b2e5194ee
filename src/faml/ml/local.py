"""Local searches around prior poses (``RunConfig.local_search_deg``, RELION's ``--sigma_ang``).

A particle with a prior pose ``(R0, t0)`` (template matching, an earlier run) is searched
only near it: its candidates come from the local alignment about the prior
(:func:`faml.align.local.local_align`: the scan of the rotations within ``local_search_deg``
of ``R0``, shifts about ``t0``; no search of all of SO(3)), or in grid iterations from the
grid's best poses, and are kept within ``local_search_deg`` of ``R0`` and within the largest
shift of ``t0`` (:func:`restrict`), with the prior itself (and, for the grid, rings of
neighbours about it); in the likelihood each candidate gets a
Gaussian prior on its angle from ``R0``, of standard deviation ``local_search_deg / 3``
(:func:`log_pose_prior`), and the translation prior is centred on ``t0``.
"""

from __future__ import annotations

import numpy as np

from faml.geometry.rotations import axis_stencil, rotation_distance

__all__ = ["SIGMAS_IN_RANGE", "log_pose_prior", "restrict", "within"]

SIGMAS_IN_RANGE = 3.0
"""The search range is this many standard deviations of the angular prior (as RELION's
local searches, which reach 3 ``--sigma_ang``)."""


def restrict(
    rotations: np.ndarray,
    shifts: np.ndarray,
    score: float,
    prior: tuple[np.ndarray, np.ndarray],
    range_deg: float,
    max_shift: float,
    step_deg: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Candidates `(B, 3, 3)`, `(B, 3)` kept within the search range of ``prior``.

    The given candidates inside the range (their order kept), then the prior itself, then
    (with ``step_deg``) six neighbours of the prior per ring at ``step_deg``,
    ``2 step_deg``, ... inside the range (for candidates that do not cover the range, as the
    best poses of a global grid).
    ``score``: the first given candidate's score; returned when that candidate is kept first,
    else ``-inf`` (the prior has no score of the fast alignment).
    """
    r0 = np.asarray(prior[0], dtype=np.float64)
    t0 = np.asarray(prior[1], dtype=np.float64)
    around = np.empty((0, 3, 3))
    if step_deg is not None:
        rings = max(1, int(range_deg // step_deg))
        around = np.concatenate(
            [axis_stencil(r0[None], np.radians(j * step_deg)).reshape(-1, 3, 3)
             for j in range(1, rings + 1)]
        )  # fmt: skip
    all_r = np.concatenate([np.asarray(rotations, np.float64), r0[None], around])
    all_t = np.concatenate(
        [np.asarray(shifts, np.float64), np.repeat(t0[None], 1 + len(around), axis=0)]
    )
    inside = within(all_r, all_t, prior, range_deg, max_shift)
    first_kept = bool(len(rotations)) and bool(inside[0])
    return all_r[inside], all_t[inside], (float(score) if first_kept else -np.inf)


def within(
    rotations: np.ndarray,
    shifts: np.ndarray,
    prior: tuple[np.ndarray, np.ndarray],
    range_deg: float,
    max_shift: float,
) -> np.ndarray:
    """`(B,)` bool: the candidates inside the search range of ``prior``.

    Within ``range_deg`` of the prior rotation and within ``max_shift`` (per axis) of its
    offset (a small tolerance for rounding).
    """
    angles = rotation_distance(rotations, np.asarray(prior[0])[None])
    offsets = np.abs(np.asarray(shifts) - np.asarray(prior[1])[None]).max(axis=1)
    return (angles <= range_deg + 1e-6) & (offsets <= max_shift + 1e-6)


def log_pose_prior(
    rotations: np.ndarray, prior_rotation: np.ndarray, range_deg: float
) -> np.ndarray:
    """`(B,)` ``-angle^2 / (2 sigma^2)`` of each rotation's angle from the prior.

    ``sigma = range_deg / SIGMAS_IN_RANGE``; the normalisation is the same for every
    candidate and left out.
    """
    sigma = range_deg / SIGMAS_IN_RANGE
    angles = rotation_distance(rotations, np.asarray(prior_rotation)[None])
    return -0.5 * (angles / sigma) ** 2
