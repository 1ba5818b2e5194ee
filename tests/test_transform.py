"""Tests of faml.geometry.transform: rigid volume transforms and Fourier shifts.

Convention under test: ``V'(x) = V(R^T (x - c - t) + c)``, c = N // 2, x = (x, y, z); content at
p moves to c + R (p - c) + t.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
from scipy import ndimage

from faml.geometry.rotations import random_rotations, rotation_about_axis
from faml.geometry.transform import (
    compose,
    inverse_transform,
    shift_fourier,
    shift_volume,
    transform_volume,
)

# Exact quarter turns, written out (active, right-handed, acting on (x, y, z)).
RX90 = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # y -> z
RY90 = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float)  # z -> x
RZ90 = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)  # x -> y
# For each: the quarter turn, and np.rot90's axes (array axis of a, array axis of b) for the
# turn that takes +a to +b. Array axes: z = 0, y = 1, x = 2.
QUARTER_TURNS = {"x": (RX90, (1, 0)), "y": (RY90, (0, 2)), "z": (RZ90, (2, 1))}


# --- helpers ---------------------------------------------------------------------------------


def _blobs(n: int, seed: int = 0, sigma: tuple[float, float] = (0.8, 1.2)) -> np.ndarray:
    """Smooth asymmetric test volume: anisotropic Gaussian blobs within radius n/4 of the centre.

    Blob widths (voxels) are drawn from ``sigma``; 0.8-1.2 keeps signal up to Nyquist (about
    4% of DC at 0.8 Nyquist), so that a round-trip FSC there measures interpolation, not noise.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((n, n, n), dtype=np.float64)
    c = n // 2
    vol = np.zeros((n, n, n))
    for _ in range(6):
        centre = c + rng.uniform(-n / 4, n / 4, 3) / np.sqrt(3)
        widths = rng.uniform(*sigma, 3)
        r2 = (
            ((x - centre[0]) / widths[0]) ** 2
            + ((y - centre[1]) / widths[1]) ** 2
            + ((z - centre[2]) / widths[2]) ** 2
        )
        vol += rng.uniform(0.5, 1.5) * np.exp(-0.5 * r2)
    return vol.astype(np.float32)


def _fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fourier shell correlation of two cubic volumes, shells 0 .. N//2 (1 Fourier voxel wide)."""
    n = a.shape[0]
    fa = scipy.fft.rfftn(a.astype(np.float64))
    fb = scipy.fft.rfftn(b.astype(np.float64))
    k = scipy.fft.fftfreq(n) * n
    kx = scipy.fft.rfftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = np.rint(r).astype(int).ravel()
    keep = shell <= n // 2
    # The rfft half holds the terms 0 < kx < N/2 once for the pair (k, -k): weight them twice.
    w = np.where((kx > 0) & (kx < n / 2), 2.0, 1.0) * np.ones(fa.shape)
    w = w.ravel()[keep]
    shell = shell[keep]
    fa = fa.ravel()[keep]
    fb = fb.ravel()[keep]
    num = np.bincount(shell, w * (fa * fb.conj()).real)
    da = np.bincount(shell, w * np.abs(fa) ** 2)
    db = np.bincount(shell, w * np.abs(fb) ** 2)
    return num / np.sqrt(da * db)


def _round_trip_fsc(n: int, order: int, n_rot: int = 3) -> float:
    """Minimum FSC up to 0.8 Nyquist of V against T^-1(T(V)) for random (R, t)."""
    vol = _blobs(n, seed=n)
    rng = np.random.default_rng(7)
    rots = random_rotations(n_rot, rng)
    shifts = rng.uniform(-2.0, 2.0, (n_rot, 3))
    worst = 1.0
    for r, t in zip(rots, shifts, strict=True):
        moved = transform_volume(vol, r, t, order=order)
        back = transform_volume(moved, *inverse_transform(r, t), order=order)
        fsc = _fsc(vol, back)
        worst = min(worst, fsc[1 : int(0.8 * n / 2) + 1].min())
    return worst


def _scipy_affine(r: np.ndarray, t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index-space (z, y, x) matrix and offset of T_(R,t), written out independently."""
    m = r.T[::-1, ::-1]  # P R^T P
    c = np.full(3, n // 2, dtype=float)
    return m, c - m @ (c + t[::-1])


def _random_volume(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)


# --- transform_volume: direction convention ----------------------------------------------------


@pytest.mark.parametrize("order", [1, 3])
def test_bright_voxel_quarter_turn_lands_exactly(order):
    n = 16
    c = n // 2
    p = np.array([c + 5, c - 3, c + 2])  # (x, y, z)
    t = np.array([1.0, -2.0, 3.0])
    vol = np.zeros((n, n, n), np.float32)
    vol[p[2], p[1], p[0]] = 1.0
    out = transform_volume(vol, RZ90, t, order=order)
    expected = c + RZ90 @ (p - c) + t  # (c + 3, c + 5, c + 2) + t = (12, 11, 13)
    np.testing.assert_array_equal(expected, [12, 11, 13])
    got = np.unravel_index(np.argmax(out), out.shape)[::-1]  # (x, y, z)
    np.testing.assert_array_equal(got, expected)
    assert out[tuple(expected[::-1].astype(int))] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("order", [1, 3])
def test_bright_voxel_goes_to_c_plus_r_p_plus_t(order):
    # A voxel at p must land at q = c + R (p - c) + t. Choosing t so that q is a voxel makes the
    # answer exact: q reads V at exactly p (value 1), every other voxel reads between voxels.
    n = 24
    c = n // 2
    p = np.array([c + 6, c - 4, c + 3], dtype=float)
    q = np.array([c - 2, c + 5, c + 1], dtype=float)
    vol = np.zeros((n, n, n), np.float32)
    vol[int(p[2]), int(p[1]), int(p[0])] = 1.0
    # Rotations under which the opposite convention (R^T) would put p > 3 voxels from q.
    rots = [r for r in random_rotations(20, 11) if np.linalg.norm((r - r.T) @ (p - c)) > 3.0]
    assert len(rots) >= 4
    for r in rots[:4]:
        t = q - c - r @ (p - c)
        out = transform_volume(vol, r, t, order=order)
        got = np.unravel_index(np.argmax(out), out.shape)[::-1]
        np.testing.assert_array_equal(got, q)
        assert out.max() == pytest.approx(1.0, abs=1e-4)


# --- transform_volume: known answers -----------------------------------------------------------


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_quarter_turn_equals_rot90_odd_box(axis, order):
    # Odd N: c = N // 2 = (N - 1) / 2 is np.rot90's centre, so the result is exact everywhere.
    r, axes = QUARTER_TURNS[axis]
    vol = _random_volume(17, seed=1)
    expected = np.rot90(vol, 1, axes=axes)
    np.testing.assert_allclose(transform_volume(vol, r, order=order), expected, atol=1e-5)
    if order == 1:
        # Rounded matrices (cos 90° = 6e-17) keep the outer planes too: the edge tolerance.
        inexact = rotation_about_axis(axis, 90.0)
        np.testing.assert_allclose(transform_volume(vol, inexact), expected, atol=1e-5)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_quarter_turn_equals_rot90_even_box(axis, order):
    # Even N: np.rot90 turns about (N - 1) / 2 = c - 1/2. Turning about c instead adds the shift
    # h - R h with h = (1/2, 1/2, 1/2), a 0/1 vector: compare away from the wrapped planes.
    r, axes = QUARTER_TURNS[axis]
    n = 16
    vol = _random_volume(n, seed=2)
    h = np.full(3, 0.5)
    step = (h - r @ h).astype(int)  # (x, y, z)
    assert set(step) <= {0, 1} and step.sum() == 1
    expected = np.roll(np.rot90(vol, 1, axes=axes), tuple(step[::-1]), axis=(0, 1, 2))
    out = transform_volume(vol, r, order=order)
    np.testing.assert_allclose(out[1:, 1:, 1:], expected[1:, 1:, 1:], atol=1e-5)


def test_identity_returns_input():
    vol = _random_volume(20, seed=3)
    np.testing.assert_array_equal(transform_volume(vol), vol)
    np.testing.assert_array_equal(transform_volume(vol, np.eye(3), np.zeros(3)), vol)
    np.testing.assert_allclose(transform_volume(vol, order=3), vol, atol=1e-5)


def test_integer_shift_moves_content_to_larger_index():
    vol = _random_volume(12, seed=4)
    out = transform_volume(vol, shifts=[1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[..., 1:], vol[..., :-1])
    np.testing.assert_array_equal(out[..., 0], 0.0)
    out = transform_volume(vol, shifts=[0.0, -2.0, 3.0])  # y -2, z +3
    np.testing.assert_array_equal(out[3:, :-2, :], vol[:-3, 2:, :])


@pytest.mark.parametrize("order", [1, 3])
def test_batched_equals_loop(order):
    n = 14
    vol = _random_volume(n, seed=5)
    rng = np.random.default_rng(5)
    rots = random_rotations(4, rng)
    shifts = rng.uniform(-3, 3, (4, 3))
    out = np.empty((4, n, n, n), np.float32)
    batched = transform_volume(vol, rots, shifts, order=order, out=out)
    assert batched is out and batched.shape == (4, n, n, n) and batched.dtype == np.float32
    for i in range(4):
        single = transform_volume(vol, rots[i], shifts[i], order=order)
        np.testing.assert_array_equal(batched[i], single)
    # One rotation with a batch of shifts, and a batch of rotations with no shift.
    one_rot = transform_volume(vol, rots[0], shifts, order=order)
    for i in range(4):
        np.testing.assert_array_equal(
            one_rot[i], transform_volume(vol, rots[0], shifts[i], order=order)
        )
    no_shift = transform_volume(vol, rots, order=order)
    np.testing.assert_array_equal(no_shift[2], transform_volume(vol, rots[2], order=order))


def test_trilinear_kernel_matches_scipy():
    n = 20
    vol = _random_volume(n, seed=6)
    rng = np.random.default_rng(6)
    for r, t in zip(random_rotations(5, rng), rng.uniform(-3, 3, (5, 3)), strict=True):
        m, offset = _scipy_affine(r, t, n)
        ref1 = ndimage.affine_transform(vol, m, offset, order=1, mode="constant", cval=0.0)
        np.testing.assert_allclose(transform_volume(vol, r, t, order=1), ref1, atol=1e-5)
        # The cubic path is scipy's one-shot cubic transform with the prefilter hoisted.
        ref3 = ndimage.affine_transform(vol, m, offset, order=3, mode="constant", cval=0.0)
        np.testing.assert_allclose(transform_volume(vol, r, t, order=3), ref3, atol=1e-5)


@pytest.mark.parametrize("n", [32, 48])
def test_round_trip_fsc(n):
    # Measured minima up to 0.8 Nyquist: cubic 0.9958 (N=32), 0.9934 (N=48); trilinear 0.84 and
    # 0.77 (it blurs and aliases more, and the error meets weak signal at high frequency).
    cubic = _round_trip_fsc(n, order=3)
    trilinear = _round_trip_fsc(n, order=1)
    assert cubic > 0.99
    assert 0.7 < trilinear < cubic


# --- inverse_transform and compose ---------------------------------------------------------------


def _move_points(r, t, p, c):
    """Where T_(R,t) takes points p: c + R (p - c) + t; `(..., 3)`."""
    return c + (p - c) @ r.T + t


def test_compose_and_inverse_on_points():
    rng = np.random.default_rng(8)
    c = 10.0
    r1, r2 = random_rotations(2, rng)
    t1, t2 = rng.uniform(-3, 3, (2, 3))
    p = rng.uniform(0, 20, (50, 3))
    r, t = compose(r1, t1, r2, t2)
    expected = _move_points(r1, t1, _move_points(r2, t2, p, c), c)  # T2 first, then T1
    np.testing.assert_allclose(_move_points(r, t, p, c), expected, atol=1e-12)
    ri, ti = inverse_transform(r1, t1)
    np.testing.assert_allclose(_move_points(ri, ti, _move_points(r1, t1, p, c), c), p, atol=1e-12)
    for a, b in (compose(r1, t1, ri, ti), compose(ri, ti, r1, t1)):
        np.testing.assert_allclose(a, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(b, 0.0, atol=1e-12)
    # Batched: broadcast over leading axes.
    rb, tb = compose(random_rotations(3, rng), rng.uniform(-1, 1, (3, 3)), r2, t2)
    assert rb.shape == (3, 3, 3) and tb.shape == (3, 3)


def test_compose_matches_applying_both():
    # Quarter turns and integer shifts: both ways are exact voxel permutations. Rx90 and Rz90 do
    # not commute, so the order T2-then-T1 is checked.
    n = 24
    vol = _random_volume(n, seed=9)
    z, y, x = np.indices(vol.shape) - n // 2
    vol[x**2 + y**2 + z**2 > 6**2] = 0.0  # stays inside the box under shifts of up to 3 voxels
    r1, t1 = RX90, np.array([1.0, 0.0, -2.0])
    r2, t2 = RZ90, np.array([0.0, 2.0, 1.0])
    both = transform_volume(transform_volume(vol, r2, t2), r1, t1)
    once = transform_volume(vol, *compose(r1, t1, r2, t2))
    np.testing.assert_allclose(once, both, atol=1e-6)
    swapped = transform_volume(vol, *compose(r2, t2, r1, t1))
    assert np.abs(swapped - both).max() > 0.1
    # A general pair, cubic: one interpolation against two agree closely on a smooth volume.
    rng = np.random.default_rng(9)
    (a1, a2), (s1, s2) = random_rotations(2, rng), rng.uniform(-2, 2, (2, 3))
    vol = _blobs(32, seed=9, sigma=(1.5, 2.5))
    both = transform_volume(transform_volume(vol, a2, s2, order=3), a1, s1, order=3)
    once = transform_volume(vol, *compose(a1, s1, a2, s2), order=3)
    assert np.abs(once - both).max() < 0.01 * vol.max()  # measured 0.3%
    swapped = transform_volume(vol, *compose(a2, s2, a1, s1), order=3)
    assert np.abs(swapped - both).max() > 0.2 * vol.max()


# --- Fourier shifts ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 13])
def test_integer_fourier_shift_is_roll(n):
    vol = _random_volume(n, seed=10)
    t = np.array([1.0, -2.0, 3.0])  # (x, y, z)
    rolled = np.roll(vol, (3, -2, 1), axis=(0, 1, 2))
    np.testing.assert_allclose(shift_volume(vol, t), rolled, atol=1e-5)
    spectrum = scipy.fft.rfftn(vol)
    np.testing.assert_allclose(
        shift_fourier(spectrum, t, box=n), scipy.fft.rfftn(rolled), atol=1e-4, rtol=1e-5
    )
    # Same direction as transform_volume with R = I (which fills with 0 instead of wrapping).
    direct = transform_volume(vol, shifts=t)
    np.testing.assert_array_equal(direct[3:, :-2, 1:], rolled[3:, :-2, 1:])


def test_half_voxel_shift_twice_is_one_voxel():
    n = 16
    vol = _random_volume(n, seed=11)
    spectrum = scipy.fft.rfftn(vol)
    half = np.array([0.5, -0.5, 0.5])
    twice = shift_fourier(shift_fourier(spectrum, half, box=n), half, box=n)
    np.testing.assert_allclose(twice, shift_fourier(spectrum, 2 * half, box=n), atol=1e-4)
    np.testing.assert_allclose(
        twice, scipy.fft.rfftn(np.roll(vol, (1, -1, 1), axis=(0, 1, 2))), atol=1e-4
    )
    # In real space (odd N: no Nyquist term, the half shift is an exact unitary operation).
    vol = _random_volume(15, seed=12)
    twice = shift_volume(shift_volume(vol, half), half)
    np.testing.assert_allclose(twice, np.roll(vol, (1, -1, 1), axis=(0, 1, 2)), atol=1e-5)


def test_fractional_fourier_shift_agrees_with_transform_volume():
    n = 32
    vol = _blobs(n, seed=13, sigma=(1.5, 2.5))
    t = np.array([1.3, -0.6, 2.4])
    fourier = shift_volume(vol, t)
    cubic = transform_volume(vol, shifts=t, order=3)
    assert np.abs(fourier - cubic).max() < 5e-3 * vol.max()
    # The opposite sign would be far off.
    assert np.abs(shift_volume(vol, -t) - cubic).max() > 0.2 * vol.max()


def test_fourier_shift_batched_equals_loop():
    n = 10
    rng = np.random.default_rng(14)
    vols = rng.standard_normal((3, n, n, n)).astype(np.float32)
    shifts = rng.uniform(-3, 3, (3, 3))
    spectrum = scipy.fft.rfftn(vols[0])
    batched = shift_fourier(spectrum, shifts, box=n)
    assert batched.shape == (3, n, n, n // 2 + 1) and batched.dtype == np.complex64
    for i in range(3):
        np.testing.assert_allclose(batched[i], shift_fourier(spectrum, shifts[i], box=n), atol=1e-6)
    pairs = shift_volume(vols, shifts)  # one-to-one
    single = shift_volume(vols, shifts[1])  # one shift for each volume
    assert pairs.shape == single.shape == (3, n, n, n) and pairs.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(pairs[i], shift_volume(vols[i], shifts[i]), atol=1e-6)
        np.testing.assert_allclose(single[i], shift_volume(vols[i], shifts[1]), atol=1e-6)


# --- argument checks ---------------------------------------------------------------------------


def test_wrong_shapes_are_rejected_with_the_shape():
    vol = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"\(8, 8, 9\)"):
        transform_volume(np.zeros((8, 8, 9)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        transform_volume(vol, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        transform_volume(vol, shifts=np.zeros(4))
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        transform_volume(vol, random_rotations(2, 0), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="order"):
        transform_volume(vol, order=2)
    with pytest.raises(ValueError, match=r"\(8, 8, 8\)"):
        transform_volume(vol, out=np.empty((2, 8, 8, 8), np.float32), rotations=np.eye(3))
    with pytest.raises(ValueError, match=r"\(8, 8, 4\)"):
        shift_fourier(np.zeros((8, 8, 4), np.complex64), np.zeros(3), box=8)
    with pytest.raises(ValueError, match="8.5"):
        shift_fourier(np.zeros((8, 8, 5), np.complex64), np.zeros(3), box=8.5)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        inverse_transform(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        compose(np.eye(3), np.zeros(2), np.eye(3), np.zeros(3))
