"""Rotations on SO(3): uniform sampling, geodesic distance, elementary rotations.

Rotation matrices act on ``(x, y, z)`` column vectors, in RELION's sense (reference ->
particle); see :mod:`faml.geometry.euler` for the Euler-angle boundary.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "axis_stencil",
    "distinct",
    "random_rotations",
    "rotation_about_axis",
    "rotation_distance",
]


def random_rotations(n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Draw ``n`` rotations uniformly on SO(3) (Haar measure).

    Uses normalised 4D Gaussian vectors as unit quaternions, which are uniform on S^3 and so
    give Haar-uniform rotations (drawing Euler angles uniformly does not).

    Parameters
    ----------
    n
        Number of rotations.
    rng
        A ``numpy.random.Generator`` or a seed.

    Returns
    -------
    np.ndarray
        `(n, 3, 3)` float64 rotation matrices.
    """
    rng = np.random.default_rng(rng)
    q = rng.standard_normal((int(n), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Rotation.from_quat(q).as_matrix()


def rotation_distance(r1: np.ndarray, r2: np.ndarray, *, degrees: bool = True) -> np.ndarray:
    """Geodesic angle between rotations: the angle of ``r1^T r2``.

    Parameters
    ----------
    r1, r2
        `(..., 3, 3)` rotation matrices (broadcast against each other).
    degrees
        Return degrees (default) or radians.

    Returns
    -------
    np.ndarray
        `(...)` angles in ``[0, 180]`` degrees (or ``[0, pi]``).
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    if r1.shape[-2:] != (3, 3) or r2.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got {r1.shape} and {r2.shape}")
    trace = np.einsum("...ji,...ji->...", r1, r2)  # trace(r1^T r2)
    angle = np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))
    return np.degrees(angle) if degrees else angle


def rotation_about_axis(axis: str | np.ndarray, angle_deg: float) -> np.ndarray:
    """Active right-handed rotation by ``angle_deg`` about ``axis``.

    ``axis`` is ``"x"``, ``"y"``, ``"z"`` or a `(3,)` vector in ``(x, y, z)``; returns a
    `(3, 3)` matrix acting on ``(x, y, z)``.
    """
    if isinstance(axis, str):
        vec = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}.get(axis.lower())
        if vec is None:
            raise ValueError(f"axis must be 'x', 'y', 'z' or a 3-vector, got {axis!r}")
        axis = np.asarray(vec)
    axis = np.asarray(axis, dtype=np.float64)
    if axis.shape != (3,) or not np.linalg.norm(axis) > 0:
        raise ValueError(f"axis must be a non-zero 3-vector, got {axis!r}")
    axis = axis / np.linalg.norm(axis)
    return Rotation.from_rotvec(np.radians(angle_deg) * axis).as_matrix()


def axis_stencil(rotations: np.ndarray, step: float) -> np.ndarray:
    """`(B, 6, 3, 3)` each of `(B, 3, 3)` ``rotations`` turned by ``+-step`` (radians).

    Order per rotation: about ``+x, +y, +z``, then ``-x, -y, -z``, applied on the left
    (``Q R``: the particle side in RELION's sense).
    """
    kicks = Rotation.from_rotvec(np.concatenate([np.eye(3), -np.eye(3)]) * step).as_matrix()
    return np.einsum("kij,bjl->bkil", kicks, rotations)


def distinct(
    rotations: np.ndarray,
    min_deg: float,
    count: int | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy angular suppression: indices of rotations no closer than ``min_deg`` to a kept one.

    ``rotations`` `(B, 3, 3)` are visited in ``order`` (default ``0..B-1``, i.e. best first);
    each is kept unless a rotation kept before it lies within ``min_deg`` degrees. Stops
    after ``count`` kept rotations (default: no limit). Returns their indices, in visit order.
    """
    if min_deg <= 0.0:  # nothing to suppress: the first ``count`` in visit order
        visit = np.arange(rotations.shape[0]) if order is None else np.asarray(order)
        return np.asarray(visit[:count], dtype=np.int64)
    limit = 1.0 + 2.0 * np.cos(np.radians(min_deg))  # trace(Ra^T Rb) above it: closer
    keep: list[int] = []
    for i in range(rotations.shape[0]) if order is None else order:
        if keep and np.any(np.einsum("ij,bij->b", rotations[i], rotations[keep]) > limit):
            continue
        keep.append(int(i))
        if count is not None and len(keep) == count:
            break
    return np.asarray(keep, dtype=np.int64)
