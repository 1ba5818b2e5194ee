"""Cyclic symmetry of a map: its principal axis, Cn operators, and the symmetry score.

The symmetry score is the paper's TMV measure: the mean masked correlation of a map with its
copies turned by ``360 j / n`` degrees (``j = 1..n-1``) about its principal axis. The axis
passes through the centre of mass of the positive density and is the eigenvector of that
density's inertia tensor whose eigenvalue stands apart from the other two (a Cn-symmetric
body, ``n >= 3``, has two equal moments across its axis).

A symmetry operator is a rigid transform ``(S, u)`` of :func:`faml.geometry.transform.
transform_volume` that leaves the structure unchanged: ``T_(S, u) V = V``. A rotation by
``S`` about an axis through the point ``m`` (``(x, y, z)`` voxels) is
``u = (I - S)(m - c)`` with ``c = N // 2``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from faml.evaluate.maps import default_mask, masked_correlation
from faml.geometry.axes import box_center, zyx_to_xyz
from faml.geometry.rotations import rotation_about_axis
from faml.geometry.transform import transform_volume

__all__ = [
    "SymmetryScore",
    "cyclic_operators",
    "operators_score",
    "parse_symmetry",
    "principal_axis",
    "symmetry_score",
    "transform_operators",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SymmetryScore:
    """Correlation of a map with its Cn copies.

    Attributes
    ----------
    order
        ``n``.
    score
        Mean of ``correlations``.
    correlations
        `(n - 1,)` masked correlation with the copy turned by ``360 j / n``, ``j = 1..n-1``.
    axis
        `(3,)` unit axis ``(x, y, z)``.
    center
        `(3,)` a point of the axis, ``(x, y, z)`` voxels (the centre of mass).
    """

    order: int
    score: float
    correlations: np.ndarray
    axis: np.ndarray
    center: np.ndarray

    def to_dict(self) -> dict:
        """JSON-serialisable figures."""
        return {
            "order": self.order,
            "score": float(self.score),
            "correlations": np.asarray(self.correlations).tolist(),
            "axis_xyz": np.asarray(self.axis).tolist(),
            "center_xyz_voxels": np.asarray(self.center).tolist(),
        }


def principal_axis(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal axis of the positive density of an `(N, N, N)` volume.

    Returns
    -------
    axis
        `(3,)` unit vector ``(x, y, z)``: the eigenvector of the inertia tensor (about the
        centre of mass) whose eigenvalue is farthest from the other two.
    center
        `(3,)` the centre of mass ``(x, y, z)`` in voxels (array indices, not relative to
        the box centre).
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"volume must be a cubic (N, N, N) array, got shape {v.shape}")
    rho = np.clip(v, 0.0, None)
    total = rho.sum()
    if not total > 0:
        raise ValueError("the volume has no positive density: no principal axis")
    idx = np.indices(v.shape, dtype=np.float64).reshape(3, -1)  # (z, y, x) rows
    w = rho.reshape(-1)
    com_zyx = idx @ w / total
    d = idx - com_zyx[:, None]
    second = (d * w) @ d.T / total  # (3, 3) covariance, (z, y, x)
    inertia = np.trace(second) * np.eye(3) - second
    vals, vecs = np.linalg.eigh(inertia)  # ascending
    isolated = 0 if vals[1] - vals[0] > vals[2] - vals[1] else 2
    axis = zyx_to_xyz(vecs[:, isolated])
    axis = axis / np.linalg.norm(axis)
    return np.ascontiguousarray(axis), np.ascontiguousarray(zyx_to_xyz(com_zyx))


def cyclic_operators(
    order: int,
    axis: np.ndarray,
    center: np.ndarray,
    box: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` operators ``(S_j, u_j)`` of Cn about an axis through ``center``.

    Parameters
    ----------
    order
        ``n >= 1``.
    axis
        `(3,)` ``(x, y, z)`` direction.
    center
        `(3,)` a point of the axis, ``(x, y, z)`` voxels (array indices).
    box
        ``N`` (the transforms turn about voxel ``N // 2``).

    Returns
    -------
    tuple of np.ndarray
        `(n, 3, 3)` rotations by ``360 j / n`` (``j = 0..n-1``; the identity first) and
        `(n, 3)` shifts ``u_j = (I - S_j)(center - c)``.
    """
    if int(order) != order or order < 1:
        raise ValueError(f"the symmetry order must be an integer >= 1, got {order!r}")
    order = int(order)
    rots = np.stack([rotation_about_axis(axis, 360.0 * j / order) for j in range(order)])
    d = np.asarray(center, dtype=np.float64) - box_center(box)
    shifts = d[None, :] - np.einsum("nij,j->ni", rots, d)
    return rots, shifts


def parse_symmetry(symmetry: int | str | None) -> int | None:
    """The order ``n`` of ``"Cn"``, ``"cn"`` or an integer; ``None`` or ``"C1"`` -> ``None``."""
    if symmetry is None:
        return None
    if isinstance(symmetry, str):
        text = symmetry.strip().upper()
        if text.startswith("C"):
            text = text[1:]
        if not text.isdigit():
            raise ValueError(f"symmetry must be 'Cn' or an integer n, got {symmetry!r}")
        symmetry = int(text)
    if isinstance(symmetry, bool) or int(symmetry) != symmetry or symmetry < 1:
        raise ValueError(f"the symmetry order must be an integer >= 1, got {symmetry!r}")
    return None if int(symmetry) == 1 else int(symmetry)


def symmetry_score(
    volume: np.ndarray,
    order: int,
    *,
    axis: np.ndarray | None = None,
    center: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> SymmetryScore:
    """Mean masked correlation of a map with its copies turned by ``360 j / n`` (the TMV score).

    Parameters
    ----------
    volume
        `(N, N, N)` map, ``(z, y, x)``.
    order
        ``n >= 2``.
    axis, center
        `(3,)` ``(x, y, z)`` axis and a point on it (voxels, array indices). Default: the
        principal axis through the centre of mass (:func:`principal_axis`).
    mask
        `(N, N, N)` correlation weights (default :func:`faml.evaluate.maps.default_mask`).

    Returns
    -------
    SymmetryScore
        About 1 for a map with Cn symmetry about that axis.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"volume must be a cubic (N, N, N) array, got shape {v.shape}")
    if int(order) != order or order < 2:
        raise ValueError(f"the symmetry order must be an integer >= 2, got {order!r}")
    box = v.shape[0]
    if axis is None or center is None:
        found_axis, found_center = principal_axis(v)
        axis = found_axis if axis is None else axis
        center = found_center if center is None else center
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    rots, shifts = cyclic_operators(int(order), axis, np.asarray(center, np.float64), box)
    corrs = _copy_correlations(v, rots[1:], shifts[1:], mask)
    return SymmetryScore(int(order), float(corrs.mean()), corrs, axis, np.asarray(center))


def _copy_correlations(volume, rotations, shifts, mask) -> np.ndarray:
    box = volume.shape[0]
    copies = transform_volume(volume, rotations, shifts, order=3).reshape(-1, box, box, box)
    mask = default_mask(box) if mask is None else mask
    return np.array([masked_correlation(volume, c, mask) for c in copies])


def operators_score(
    volume: np.ndarray,
    rotations: np.ndarray,
    shifts: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
) -> float:
    """Mean masked correlation of a map with its copies under given symmetry operators.

    Parameters
    ----------
    volume
        `(N, N, N)` map.
    rotations, shifts
        `(S, 3, 3)` and `(S, 3)` (voxels; default 0: axes through voxel ``N // 2``)
        operators ``(S_j, u_j)``; identities among them are skipped.
    mask
        `(N, N, N)` correlation weights (default :func:`faml.evaluate.maps.default_mask`).

    Returns
    -------
    float
        The mean correlation (NaN when only identities are given).
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"volume must be a cubic (N, N, N) array, got shape {v.shape}")
    rots = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    t = np.zeros((len(rots), 3)) if shifts is None else np.asarray(shifts, np.float64)
    if t.shape != (len(rots), 3):
        raise ValueError(f"shifts must be ({len(rots)}, 3), got {t.shape}")
    keep = (np.abs(rots - np.eye(3)).max(axis=(1, 2)) > 1e-9) | (np.abs(t).max(axis=1) > 1e-9)
    if not np.any(keep):
        return float("nan")
    return float(_copy_correlations(v, rots[keep], t[keep], mask).mean())


def transform_operators(
    rotations: np.ndarray,
    shifts: np.ndarray | None,
    global_rotation: np.ndarray,
    global_shift: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetry operators of a structure expressed in the frame of ``T_(G, s) structure``.

    If ``T_(S, u) V = V`` then ``V' = T_(G, s) V`` is left unchanged by
    ``T_(G, s) T_(S, u) T_(G, s)^-1 = (G S G^T, s + G u - G S G^T s)``.

    Parameters
    ----------
    rotations, shifts
        `(S, 3, 3)` and `(S, 3)` (voxels; ``None``: 0) operators of ``V``.
    global_rotation, global_shift
        ``G`` `(3, 3)` and ``s`` `(3,)` voxels.

    Returns
    -------
    tuple of np.ndarray
        `(S, 3, 3)` rotations and `(S, 3)` shifts of the operators of ``V'``.
    """
    r = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    u = np.zeros((len(r), 3)) if shifts is None else np.asarray(shifts, np.float64)
    g = np.asarray(global_rotation, dtype=np.float64)
    t = np.asarray(global_shift, dtype=np.float64)
    r_new = g @ r @ g.T
    return r_new, t + u @ g.T - r_new @ t
