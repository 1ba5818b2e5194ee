"""RELION's Euler angles and origins: the only module that converts angles.

RELION writes a particle's orientation as ZYZ Euler angles ``(rot, tilt, psi)`` in degrees
(``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``). Its matrix (``Euler_angles2matrix`` in
RELION's ``euler.cpp``) is

.. code-block:: text

    A(rot, tilt, psi) = Rz(psi) @ Ry(tilt) @ Rz(rot)        (passive rotations)
                      = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T

and it maps *reference* ``(x, y, z)`` coordinates to *particle* coordinates:
``x_particle = A @ x_reference + d`` about the box centre (voxel ``N // 2``), where ``d`` is the
particle's displacement. RELION stores the origin as ``rlnOriginXAngst = -d_x * pixel_size``
(likewise Y, Z): the shift that *re-centres* the particle.

Everywhere else in faml a rotation is this 3x3 matrix ``A`` and a shift is ``d`` in voxels,
``(x, y, z)`` order.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "shift_to_origin_angst",
    "origin_angst_to_shift",
]


def _check_last(a: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape[a.ndim - len(shape) :] != shape:
        raise ValueError(
            f"{what}: expected shape (..., {', '.join(map(str, shape))}), got {a.shape}"
        )
    return a


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """RELION Euler angles -> rotation matrices.

    Parameters
    ----------
    angles
        `(..., 3)` array of ``(rot, tilt, psi)`` in degrees, RELION's ZYZ convention.

    Returns
    -------
    np.ndarray
        `(..., 3, 3)` float64 matrices ``A`` that map reference ``(x, y, z)`` coordinates to
        particle coordinates (RELION's ``Euler_angles2matrix``).
    """
    angles = _check_last(angles, (3,), "euler_to_matrix")
    flat = angles.reshape(-1, 3)
    mats = Rotation.from_euler("ZYZ", flat, degrees=True).as_matrix().transpose(0, 2, 1)
    return mats.reshape(angles.shape[:-1] + (3, 3))


def matrix_to_euler(matrices: np.ndarray) -> np.ndarray:
    """Rotation matrices -> RELION Euler angles, the inverse of :func:`euler_to_matrix`.

    Parameters
    ----------
    matrices
        `(..., 3, 3)` rotation matrices in RELION's sense (reference -> particle).

    Returns
    -------
    np.ndarray
        `(..., 3)` ``(rot, tilt, psi)`` in degrees, ``tilt`` in ``[0, 180]``, ``rot`` and
        ``psi`` in ``(-180, 180]``. At ``tilt`` = 0 or 180 (gimbal lock) only ``rot + psi``
        (or ``psi - rot``) is defined; then ``rot`` = 0 and ``psi`` carries the in-plane
        angle, as RELION's ``Euler_matrix2angles`` does.

    Raises
    ------
    ValueError
        If a matrix is not a rotation (orthogonal with determinant +1, to 1e-4).
    """
    m = _check_last(matrices, (3, 3), "matrix_to_euler")
    flat = m.reshape(-1, 3, 3)
    ortho = np.abs(np.einsum("nij,nkj->nik", flat, flat) - np.eye(3)).max(axis=(1, 2))
    if flat.shape[0] and (ortho.max() > 1e-4 or np.abs(np.linalg.det(flat) - 1).max() > 1e-4):
        raise ValueError("matrix_to_euler: not a rotation matrix (orthogonal, determinant +1)")
    # A = Rz(psi) Ry(tilt) Rz(rot) (passive). With s = sin, c = cos:
    #   A[2, 2] = cos(tilt); A[2, 0:2] = sin(tilt) * (cos(rot), sin(rot)) ;
    #   A[0:2, 2] = -sin(tilt) * (cos(psi), -sin(psi)) ... see RELION euler.cpp.
    # A = Rz(psi) Ry(tilt) Rz(rot) (passive); RELION's euler.cpp gives
    #   A[2, 0] = sin(tilt) cos(rot),  A[2, 1] = sin(tilt) sin(rot),  A[2, 2] = cos(tilt),
    #   A[0, 2] = -cos(psi) sin(tilt), A[1, 2] = sin(psi) sin(tilt).
    tilt = np.arccos(np.clip(flat[:, 2, 2], -1.0, 1.0))
    abs_sin_tilt = np.hypot(flat[:, 0, 2], flat[:, 1, 2])
    regular = abs_sin_tilt > 16 * np.finfo(np.float32).eps
    rot = np.where(regular, np.arctan2(flat[:, 2, 1], flat[:, 2, 0]), 0.0)
    # Gimbal lock (tilt 0 or 180): RELION's Euler_matrix2angles sets rot = 0 and puts the
    # whole in-plane angle in psi.
    up = flat[:, 2, 2] > 0
    locked_psi = np.where(
        up,
        np.arctan2(-flat[:, 1, 0], flat[:, 0, 0]),
        np.arctan2(flat[:, 1, 0], -flat[:, 0, 0]),
    )
    psi = np.where(regular, np.arctan2(flat[:, 1, 2], -flat[:, 0, 2]), locked_psi)
    tilt = np.where(regular, tilt, np.where(up, 0.0, np.pi))
    out = np.degrees(np.stack([rot, tilt, psi], axis=-1))
    # Map -180 to +180 so that the range is (-180, 180].
    out[..., 0] = np.where(out[..., 0] <= -180.0, out[..., 0] + 360.0, out[..., 0])
    out[..., 2] = np.where(out[..., 2] <= -180.0, out[..., 2] + 360.0, out[..., 2])
    return out.reshape(m.shape[:-2] + (3,))


def shift_to_origin_angst(shifts: np.ndarray, pixel_size: float) -> np.ndarray:
    """Particle displacement ``d`` (voxels, ``(..., 3)`` x, y, z) -> RELION ``rlnOrigin*Angst``.

    RELION's origin is minus the displacement, in Ångström: ``origin = -d * pixel_size``.
    """
    shifts = _check_last(shifts, (3,), "shift_to_origin_angst")
    return -shifts * float(pixel_size)


def origin_angst_to_shift(origins: np.ndarray, pixel_size: float) -> np.ndarray:
    """RELION ``rlnOrigin{X,Y,Z}Angst`` (``(..., 3)``, Å) -> particle displacement in voxels."""
    origins = _check_last(origins, (3,), "origin_angst_to_shift")
    return -origins / float(pixel_size)
