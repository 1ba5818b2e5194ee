"""Per-particle pose errors after removing the global map-to-truth transform.

Conventions (DESIGN.md section 5, :mod:`faml.geometry.transform`): a particle with true pose
``(R, t)`` is ``T_(R, t) truth``; a run estimates ``(R_hat, t_hat)`` against its class map,
``particle ~ T_(R_hat, t_hat) map``; the map is ``T_(G, s) truth``
(:func:`faml.evaluate.maps.align_map`). Composing (``compose``: ``T1 T2 = (R1 R2, t1 + R1
t2)``), the estimate against the truth is::

    R_est = R_hat G,        t_est = t_hat + R_hat s.

The rotation error is the geodesic angle between ``R_est`` and ``R``, the shift error the
length of ``t_est - t`` (voxels). With symmetry operators ``(S_j, u_j)`` of the truth
(``T_(S_j, u_j) truth = truth``), the true pose is equally ``(R S_j, t + R u_j)``: the
rotation error is the smallest over ``j``, and the shift error is taken at that ``j``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from faml.geometry.rotations import rotation_distance

__all__ = ["PoseErrors", "pose_errors"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoseErrors:
    """Errors of `n` particle poses.

    Attributes
    ----------
    rotation_deg
        `(n,)` geodesic rotation error, degrees (``[0, 180]``).
    shift_voxels
        `(n,)` length of the shift error, voxels.
    symmetry_copy
        `(n,)` index of the symmetry operator that gave the smallest rotation error, into
        the operators as given with the identity prepended when they lack it (0 without
        symmetry).
    """

    rotation_deg: np.ndarray
    shift_voxels: np.ndarray
    symmetry_copy: np.ndarray


def _as_batch(a: np.ndarray, shape: tuple[int, ...], n: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape == shape:
        return np.broadcast_to(a, (n, *shape))
    if a.shape != (n, *shape):
        raise ValueError(f"{name} must be {shape} or {(n, *shape)}, got {a.shape}")
    return a


def pose_errors(
    rotations: np.ndarray,
    shifts: np.ndarray,
    true_rotations: np.ndarray,
    true_shifts: np.ndarray,
    global_rotation: np.ndarray | None = None,
    global_shift: np.ndarray | None = None,
    *,
    symmetry_rotations: np.ndarray | None = None,
    symmetry_shifts: np.ndarray | None = None,
) -> PoseErrors:
    """Rotation and shift errors of estimated poses against the truth.

    Parameters
    ----------
    rotations, shifts
        `(n, 3, 3)` and `(n, 3)` estimated poses ``(R_hat, t_hat)`` against the map (RELION
        sense, shifts ``(x, y, z)`` voxels).
    true_rotations, true_shifts
        `(n, 3, 3)` and `(n, 3)` true poses against the truth.
    global_rotation, global_shift
        ``G`` `(3, 3)` or `(n, 3, 3)` and ``s`` `(3,)` or `(n, 3)` with ``map ~ T_(G, s)
        truth`` (per particle: its class's transform). Default: the identity.
    symmetry_rotations, symmetry_shifts
        `(S, 3, 3)` and `(S, 3)` (or `(n, S, 3, 3)` and `(n, S, 3)` per particle) operators
        ``(S_j, u_j)`` that leave the truth unchanged; shifts default to 0 (axes through the
        box centre). The identity is always tried (prepended when they lack it).

    Returns
    -------
    PoseErrors
        Per particle the rotation error (degrees), shift error (voxels) and the symmetry copy.
    """
    r_hat = np.asarray(rotations, dtype=np.float64)
    if r_hat.ndim != 3 or r_hat.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (n, 3, 3), got {r_hat.shape}")
    n = r_hat.shape[0]
    t_hat = _as_batch(shifts, (3,), n, "shifts")
    r_true = _as_batch(true_rotations, (3, 3), n, "true_rotations")
    t_true = _as_batch(true_shifts, (3,), n, "true_shifts")
    g = _as_batch(np.eye(3) if global_rotation is None else global_rotation, (3, 3), n, "G")
    s = _as_batch(np.zeros(3) if global_shift is None else global_shift, (3,), n, "s")
    r_est = r_hat @ g
    t_est = t_hat + np.einsum("nij,nj->ni", r_hat, s)

    if symmetry_rotations is None:
        ops_r = np.eye(3)[None]
    else:
        ops_r = np.asarray(symmetry_rotations, dtype=np.float64)
    if ops_r.ndim == 3:
        ops_r = np.broadcast_to(ops_r, (n, *ops_r.shape))
    if ops_r.ndim != 4 or ops_r.shape[0] != n or ops_r.shape[2:] != (3, 3):
        raise ValueError(f"symmetry_rotations must be (S, 3, 3) or (n, S, 3, 3), got {ops_r.shape}")
    n_ops = ops_r.shape[1]
    if symmetry_shifts is None:
        ops_t = np.zeros((n, n_ops, 3))
    else:
        ops_t = np.asarray(symmetry_shifts, dtype=np.float64)
        if ops_t.ndim == 2:
            ops_t = np.broadcast_to(ops_t, (n, *ops_t.shape))
        if ops_t.shape != (n, n_ops, 3):
            raise ValueError(
                f"symmetry_shifts must be ({n_ops}, 3) or ({n}, {n_ops}, 3), got {ops_t.shape}"
            )
    # The identity is always one of the copies: prepended unless the caller listed it.
    is_identity = (rotation_distance(ops_r, np.eye(3)) < 1e-4) & (
        np.linalg.norm(ops_t, axis=-1) < 1e-9
    )  # (n, S)
    added = not bool(np.all(np.any(is_identity, axis=1)))
    if added:
        ops_r = np.concatenate([np.broadcast_to(np.eye(3), (n, 1, 3, 3)), ops_r], axis=1)
        ops_t = np.concatenate([np.zeros((n, 1, 3)), ops_t], axis=1)

    copies_r = np.einsum("nij,nsjk->nsik", r_true, ops_r)  # R S_j
    copies_t = t_true[:, None, :] + np.einsum("nij,nsj->nsi", r_true, ops_t)  # t + R u_j
    angles = rotation_distance(r_est[:, None], copies_r)  # (n, S + 1)
    best = np.argmin(angles, axis=1)
    rows = np.arange(n)
    rot_err = angles[rows, best]
    shift_err = np.linalg.norm(t_est - copies_t[rows, best], axis=1)
    return PoseErrors(rot_err, shift_err, best)
