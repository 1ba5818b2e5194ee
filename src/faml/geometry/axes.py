"""The one place where array axes ``(z, y, x)`` meet coordinates ``(x, y, z)``.

Volumes are stored as ``(z, y, x)`` arrays (``mrcfile``'s order: the first index is the
slowest axis, z). Formulas with rotation matrices and shifts use ``(x, y, z)`` coordinates.
Everything that crosses between the two goes through these helpers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["zyx_to_xyz", "xyz_to_zyx", "matrix_xyz_to_zyx", "box_center"]


def zyx_to_xyz(v: np.ndarray) -> np.ndarray:
    """Reverse the last axis: ``(..., 3)`` in ``(z, y, x)`` order -> ``(x, y, z)`` order."""
    v = np.asarray(v)
    if v.shape[-1:] != (3,):
        raise ValueError(f"expected an array of shape (..., 3), got {v.shape}")
    return v[..., ::-1]


def xyz_to_zyx(v: np.ndarray) -> np.ndarray:
    """Reverse the last axis: ``(..., 3)`` in ``(x, y, z)`` order -> ``(z, y, x)`` order."""
    return zyx_to_xyz(v)


def matrix_xyz_to_zyx(matrix: np.ndarray) -> np.ndarray:
    """Express ``(..., 3, 3)`` matrices acting on ``(x, y, z)`` vectors on ``(z, y, x)`` vectors.

    With ``P`` the axis reversal, ``M_zyx = P M_xyz P``.
    """
    m = np.asarray(matrix)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"expected matrices of shape (..., 3, 3), got {m.shape}")
    return m[..., ::-1, ::-1]


def box_center(box: int) -> int:
    """Index of the rotation centre of a cubic box of side ``box``: voxel ``box // 2`` (RELION)."""
    return int(box) // 2
