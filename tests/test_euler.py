"""RELION's Euler convention, origins and rotations, pinned by RELION's own formula."""

import numpy as np
import pytest

from faml.geometry.axes import matrix_xyz_to_zyx, xyz_to_zyx, zyx_to_xyz
from faml.geometry.euler import (
    euler_to_matrix,
    matrix_to_euler,
    origin_angst_to_shift,
    shift_to_origin_angst,
)
from faml.geometry.rotations import random_rotations, rotation_about_axis, rotation_distance


def relion_euler_angles2matrix(rot, tilt, psi):
    """RELION's ``Euler_angles2matrix`` (src/euler.cpp), written out by hand."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


TRIPLES = [
    (0.0, 0.0, 0.0),
    (90.0, 0.0, 0.0),
    (0.0, 90.0, 0.0),
    (0.0, 0.0, 90.0),
    (30.0, 45.0, 60.0),
    (-120.0, 135.0, 10.0),
    (170.0, 20.0, -75.0),
    (12.5, 179.0, -179.0),
]


@pytest.mark.parametrize("angles", TRIPLES)
def test_matrix_equals_relion(angles):
    np.testing.assert_allclose(
        euler_to_matrix(angles), relion_euler_angles2matrix(*angles), atol=1e-12
    )


def test_known_matrix_values():
    # rot = 90: passive rotation about z by 90 -> maps x to -y, y to x.
    np.testing.assert_allclose(
        euler_to_matrix([90, 0, 0]), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12
    )
    # tilt = 90: maps x to z, z to -x.
    np.testing.assert_allclose(
        euler_to_matrix([0, 90, 0]), [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-12
    )


def test_batched_and_round_trip():
    rng = np.random.default_rng(0)
    mats = random_rotations(200, rng)
    angles = matrix_to_euler(mats)
    assert angles.shape == (200, 3)
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    assert np.all((angles[:, [0, 2]] > -180) & (angles[:, [0, 2]] <= 180))
    np.testing.assert_allclose(euler_to_matrix(angles), mats, atol=1e-9)
    back = euler_to_matrix(angles.reshape(10, 20, 3))
    assert back.shape == (10, 20, 3, 3)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_gimbal_lock_like_relion(tilt):
    m = euler_to_matrix([40.0, tilt, 25.0])
    rot, t, psi = matrix_to_euler(m)
    assert rot == 0.0 and t == tilt
    np.testing.assert_allclose(euler_to_matrix([rot, t, psi]), m, atol=1e-12)


def test_matrix_maps_reference_to_particle():
    # The matrix of RELION maps reference coordinates to particle coordinates, i.e. it is the
    # transpose of scipy's intrinsic ZYZ active rotation.
    from scipy.spatial.transform import Rotation

    for angles in TRIPLES:
        active = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
        np.testing.assert_allclose(euler_to_matrix(angles), active.T, atol=1e-12)


def test_origin_sign():
    shift = np.array([2.0, -1.0, 0.5])  # particle displaced by +2 voxels in x
    origin = shift_to_origin_angst(shift, 4.0)
    np.testing.assert_allclose(origin, [-8.0, 4.0, -2.0])
    np.testing.assert_allclose(origin_angst_to_shift(origin, 4.0), shift)


def test_shape_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        euler_to_matrix(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        matrix_to_euler(np.zeros((2, 3)))


def test_random_rotations_uniform():
    mats = random_rotations(20000, 1)
    assert np.allclose(np.einsum("nij,nkj->nik", mats, mats), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(mats), 1.0)
    # Haar measure: the rotation angle w has density (1 - cos w) / pi on [0, pi],
    # so E[cos w] = -1/2 ... and the z-column is uniform on the sphere: E[z_z] = 0, E[z_z^2] = 1/3.
    w = rotation_distance(mats, np.eye(3), degrees=False)
    assert abs(np.mean(np.cos(w)) - (-0.5)) < 0.02
    assert abs(np.mean(mats[:, 2, 2] ** 2) - 1.0 / 3.0) < 0.01
    np.testing.assert_array_equal(random_rotations(3, 5), random_rotations(3, 5))


def test_rotation_distance():
    r = rotation_about_axis("z", 30.0)
    assert rotation_distance(np.eye(3), r) == pytest.approx(30.0)
    r2 = rotation_about_axis([1, 1, 0], 170.0)
    assert rotation_distance(r2, np.eye(3)) == pytest.approx(170.0)
    assert rotation_distance(r2, r2) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError):
        rotation_about_axis("w", 10)


def test_axes_helpers():
    v = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(zyx_to_xyz(v), [[3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(xyz_to_zyx(zyx_to_xyz(v)), v)
    r = rotation_about_axis("x", 37.0)
    p = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(matrix_xyz_to_zyx(r) @ p[::-1], (r @ p)[::-1])
