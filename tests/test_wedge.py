"""Tests of faml.geometry.wedge: missing-wedge geometry, Fourier layouts, weight volumes."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from faml.geometry.axes import box_center, matrix_xyz_to_zyx
from faml.geometry.wedge import (
    full_to_rfft,
    read_weight,
    rfft_to_full,
    wedge_mask,
    weight_from_volume,
)

RANGES = [(-60.0, 60.0), (-50.0, 70.0), (-40.0, 40.0), (-70.0, 50.0), (10.0, 60.0)]


# --- helpers ---------------------------------------------------------------------------------


def _ry(theta_deg: float) -> np.ndarray:
    """Active right-handed rotation about +Y on (x, y, z): x -> z sense, written out."""
    t = np.radians(theta_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _at(full: np.ndarray, kx: int, ky: int, kz: int) -> float:
    """Value of a full fftshifted (z, y, x) Fourier array at integer frequency (kx, ky, kz)."""
    c = box_center(full.shape[0])
    return float(full[c + kz, c + ky, c + kx])


def _mirror_full(full: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """k -> -k along the given array axes of a full fftshifted cube (index mirror, any N)."""
    n = full.shape[0]
    mirror = (-np.arange(n)) % n
    out = np.fft.ifftshift(full)
    for axis in axes:
        out = np.take(out, mirror, axis=axis)
    return np.fft.fftshift(out)


def _radius(n: int, layout: str) -> np.ndarray:
    """|k| in Fourier voxels on the grid of a ``layout`` array ("rfft" or fftshifted "full")."""
    k = np.fft.fftfreq(n, d=1.0 / n)
    if layout == "rfft":
        kx = np.fft.rfftfreq(n, d=1.0 / n)
    else:
        k = kx = np.fft.fftshift(k)
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


# --- wedge_mask: geometry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tilt_range", "expected"),
    [((-60.0, 60.0), 120 / 180), ((-50.0, 70.0), 120 / 180), ((-40.0, 40.0), 80 / 180)],
)
def test_observed_fraction_of_directions(tilt_range, expected):
    # The azimuth of a direction about Y is uniform on the sphere, so the observed solid angle
    # is (max - min) / 180 of all directions.
    n = 64
    mask = wedge_mask(n, tilt_range, layout="full")
    r = _radius(n, "full")
    inside = (r > 0) & (r <= n / 2 - 1)
    assert mask[inside].mean() == pytest.approx(expected, abs=0.02)


# Hand-derived: k = (kx, ky, kz) is observed iff atan(kz / kx) (mod 180) is in [min, max].
# (3,0,0): 0 deg; (0,0,3): 90 deg, the beam direction of the 0-deg view, never observed;
# (3,0,3): 45; (3,0,-3): -45; (2,0,4): 63.4; (2,0,-4): -63.4; (-2,0,-4) is (2,0,4) mod 180;
# (0,5,0): the tilt axis, always observed.
POINTS = [
    (3, 0, 0),
    (0, 0, 3),
    (3, 0, 3),
    (3, 0, -3),
    (2, 0, 4),
    (2, 0, -4),
    (-2, 0, -4),
    (0, 5, 0),
]
KNOWN = {
    (-60.0, 60.0): [1, 0, 1, 1, 0, 0, 0, 1],
    (-50.0, 70.0): [1, 0, 1, 1, 1, 0, 1, 1],
    (-70.0, 50.0): [1, 0, 1, 1, 0, 1, 0, 1],
    (-40.0, 40.0): [1, 0, 0, 0, 0, 0, 0, 1],
    (10.0, 60.0): [0, 0, 1, 0, 0, 0, 0, 1],
}


@pytest.mark.parametrize("tilt_range", list(KNOWN))
@pytest.mark.parametrize("n", [16, 17])
def test_known_points(tilt_range, n):
    full = wedge_mask(n, tilt_range, layout="full")
    half = wedge_mask(n, tilt_range, layout="rfft")
    for (kx, ky, kz), want in zip(POINTS, KNOWN[tilt_range], strict=True):
        assert _at(full, kx, ky, kz) == want, ((kx, ky, kz), tilt_range)
        if kx < 0:  # the rfft layout holds kx >= 0; read -k (Friedel)
            kx, ky, kz = -kx, -ky, -kz
        assert half[kz % n, ky % n, kx] == want, ((kx, ky, kz), tilt_range)
    assert _at(full, 0, 0, 0) == 1  # DC


def test_boundary_planes_count_as_observed():
    full = wedge_mask(16, (-45.0, 45.0), layout="full")
    assert _at(full, 3, 0, 3) == 1 and _at(full, 3, 0, -3) == 1 and _at(full, -3, 2, 3) == 1
    just_inside = wedge_mask(16, (-44.9, 44.9), layout="full")
    assert _at(just_inside, 3, 0, 3) == 0 and _at(just_inside, 3, 0, -3) == 0
    starts_at_zero = wedge_mask(16, (0.0, 30.0), layout="full")
    assert _at(starts_at_zero, 4, 1, 0) == 1 and _at(starts_at_zero, 4, 1, -1) == 0


@pytest.mark.parametrize("n", [16, 17])
def test_asymmetric_range_is_the_mirror_of_the_reversed_range(n):
    # kx -> -kx (or kz -> -kz) sends atan(kz / kx) to its negative, so [min, max] -> [-max, -min].
    a = wedge_mask(n, (-50.0, 70.0), layout="full")
    b = wedge_mask(n, (-70.0, 50.0), layout="full")
    x_axis, z_axis = 2, 0
    assert not np.array_equal(a, _mirror_full(a, (x_axis,)))
    assert not np.array_equal(a, _mirror_full(a, (z_axis,)))
    np.testing.assert_array_equal(_mirror_full(b, (x_axis,)), a)
    np.testing.assert_array_equal(_mirror_full(b, (z_axis,)), a)
    # the y axis plays no part; the full k -> -k mirror (Friedel) leaves every mask unchanged
    np.testing.assert_array_equal(_mirror_full(a, (1,)), a)
    np.testing.assert_array_equal(_mirror_full(a, (0, 1, 2)), a)


@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("tilt_range", [(-60.0, 60.0), (-40.0, 40.0)])
def test_symmetric_range_is_mirror_symmetric(n, tilt_range):
    a = wedge_mask(n, tilt_range, layout="full")
    np.testing.assert_array_equal(_mirror_full(a, (2,)), a)
    np.testing.assert_array_equal(_mirror_full(a, (0,)), a)


# --- wedge_mask: layouts, cutoff, validation --------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 8, 9, 32, 33])
@pytest.mark.parametrize("tilt_range", RANGES)
@pytest.mark.parametrize("cutoff", [None, 5.5])
def test_rfft_layout_is_the_half_of_the_full_layout(n, tilt_range, cutoff):
    full = wedge_mask(n, tilt_range, layout="full", cutoff_radius=cutoff)
    half = wedge_mask(n, tilt_range, layout="rfft", cutoff_radius=cutoff)
    assert full.shape == (n, n, n) and full.dtype == np.float32
    assert half.shape == (n, n, n // 2 + 1) and half.dtype == np.float32
    np.testing.assert_array_equal(half, np.fft.ifftshift(full)[..., : n // 2 + 1])
    # the mask is exactly Friedel-symmetric, Nyquist planes included, so the half rebuilds it
    np.testing.assert_array_equal(rfft_to_full(half, n), full)
    assert set(np.unique(full)) <= {0.0, 1.0}


@pytest.mark.parametrize("layout", ["rfft", "full"])
@pytest.mark.parametrize("cutoff", [0.0, 4.0, 6.3])
def test_cutoff_radius(layout, cutoff):
    n = 24
    plain = wedge_mask(n, (-50.0, 70.0), layout=layout)
    cut = wedge_mask(n, (-50.0, 70.0), layout=layout, cutoff_radius=cutoff)
    r = _radius(n, layout)
    assert not np.any(cut[r > cutoff])
    np.testing.assert_array_equal(cut[r <= cutoff], plain[r <= cutoff])  # |k| == cutoff kept
    assert cut.sum() > 0  # DC at least
    assert plain[r > cutoff].sum() > 0  # the cutoff did remove something


def test_dtype_argument():
    mask = wedge_mask(8, dtype=bool)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, wedge_mask(8) == 1)


@pytest.mark.parametrize(
    "tilt_range",
    [(-90.0, 60.0), (-60.0, 90.0), (60.0, -60.0), (10.0, 10.0), (float("nan"), 10.0)],
)
def test_invalid_tilt_range(tilt_range):
    with pytest.raises(ValueError, match=r"-90 < min < max < 90.*min=") as info:
        wedge_mask(8, tilt_range)
    assert f"min={float(tilt_range[0])}" in str(info.value)
    assert f"max={float(tilt_range[1])}" in str(info.value)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="two angles"):
        wedge_mask(8, (-60.0, 0.0, 60.0))
    for box in (1, 0, 2.5, True, "8"):
        with pytest.raises(ValueError, match="box must be an integer >= 2"):
            wedge_mask(box)
    with pytest.raises(ValueError, match="layout must be one of"):
        wedge_mask(8, layout="half")
    with pytest.raises(ValueError, match="cutoff_radius"):
        wedge_mask(8, cutoff_radius=-1.0)
    assert wedge_mask(np.int64(8)).shape == (8, 8, 5)


# --- the tilt series: what a real acquisition observes ----------------------------------------


def _rotate(vol: np.ndarray, rot_xyz: np.ndarray) -> np.ndarray:
    """Actively rotate a (z, y, x) volume about voxel N//2: out(r) = vol(R^T r), r in (x, y, z).

    ``affine_transform`` reads ``out[o] = vol[M o + offset]`` with ``o`` in (z, y, x) array
    order; with c the centre, ``M = P R^T P`` (P the axis reversal) and ``offset = c - M c``.
    """
    c = np.full(3, float(box_center(vol.shape[0])))
    m = matrix_xyz_to_zyx(rot_xyz.T)
    return ndimage.affine_transform(vol, m, offset=c - m @ c, order=1, mode="constant")


def _weighted_backprojection(vol: np.ndarray, tilt_range, step: float, box: int) -> np.ndarray:
    """Simulate a tilt series of ``vol`` and back-project it into a ``box``-sided volume.

    Each view: rotate the specimen by R_y(theta), project along the beam (z, array axis 0).
    Each projection is zero-padded to ``box``, ramp-filtered along x (weighted
    back-projection), smeared back along z and rotated by R_y(theta)^T.
    """
    n = vol.shape[0]
    lo = box_center(box) - box_center(n)
    ramp = np.maximum(np.abs(np.fft.fftfreq(box)), 0.25 / box)
    out = np.zeros((box,) * 3, dtype=np.float32)
    for theta in np.arange(tilt_range[0], tilt_range[1] + 1e-9, step):
        projection = _rotate(vol, _ry(theta)).sum(axis=0)
        padded = np.zeros((box, box), dtype=np.float32)
        padded[lo : lo + n, lo : lo + n] = projection
        padded = np.fft.ifft(np.fft.fft(padded, axis=1) * ramp, axis=1).real.astype(np.float32)
        smear = np.ascontiguousarray(np.broadcast_to(padded, (box,) * 3))
        out += _rotate(smear, _ry(theta).T)
    return out


def _energy_fraction(vol: np.ndarray, mask_rfft: np.ndarray, r_max: float) -> float:
    """Share of the spectral energy of ``vol`` (0 < |k| <= r_max) where ``mask_rfft`` is 1."""
    n = vol.shape[0]
    energy = np.abs(np.fft.rfftn(vol)) ** 2
    energy[..., 1 : (n + 1) // 2] *= 2  # columns standing for both kx and -kx
    r = _radius(n, "rfft")
    keep = (r > 0) & (r <= r_max)
    return float(energy[keep & (mask_rfft > 0)].sum() / energy[keep].sum())


@pytest.fixture(scope="module")
def specimen() -> np.ndarray:
    n = 32
    rng = np.random.default_rng(20240611)
    vol = rng.standard_normal((n, n, n))
    r = _radius(n, "full")  # distance to voxel N//2, the same in real space
    soft_sphere = np.clip((n / 2 - 4 - r) / 3 + 0.5, 0.0, 1.0)  # keeps rotations in the box
    return (vol * soft_sphere).astype(np.float32)


@pytest.mark.parametrize("tilt_range", [(-60.0, 60.0), (-50.0, 70.0), (-40.0, 40.0), (20.0, 40.0)])
def test_tilt_series_backprojection_fills_the_mask(specimen, tilt_range):
    # The back-projection lives in a box padded 2x (64): the finite length of each smear then
    # blurs its central plane by 1/64 instead of 1/32 cycles, and the ramp filter keeps the
    # (plane-dense) low frequencies from dominating. |k| > 64/2 - 4 (the 32-box's N/2 - 2) and
    # DC are left out. Measured (seed 20240611; seeds 0-3 agree within 0.004, except the
    # mirror column of (-50, 70): 0.81-0.84, and (20, 40): 0.91-0.93):
    #   range       in mask   in mirrored mask
    #   (-60, 60)   0.987     0.987
    #   (-50, 70)   0.988     0.842   <- the mirror (-70, 50) misses the 50..70 views
    #   (-40, 40)   0.983     0.983
    #   (20, 40)    0.915     0.001   <- a one-sided range: the sign of theta, bare
    # Without the padding and the ramp filter the "in mask" column drops to 0.91-0.95.
    # With the tilt sign reversed the two columns swap, so this pins the convention.
    box = 64
    bp = _weighted_backprojection(specimen, tilt_range, step=2.0, box=box)
    lo, hi = tilt_range
    inside = _energy_fraction(bp, wedge_mask(box, (lo, hi)), r_max=box / 2 - 4)
    mirrored = _energy_fraction(bp, wedge_mask(box, (-hi, -lo)), r_max=box / 2 - 4)
    if lo == -hi:
        assert inside > 0.97
        assert mirrored == pytest.approx(inside, abs=1e-9)
    elif lo < 0:
        assert inside > 0.97
        assert mirrored < inside - 0.1
    else:  # narrow one-sided range: boundary leakage weighs more, the mirror gets nothing
        assert inside > 0.85
        assert mirrored < 0.05


# --- layout converters -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 7, 8, 15, 16])
def test_half_full_round_trips(n):
    rng = np.random.default_rng(n)
    half = rng.random((n, n, n // 2 + 1)).astype(np.float32)
    full = rfft_to_full(half, n)
    assert full.shape == (n, n, n) and full.dtype == np.float32
    np.testing.assert_array_equal(full_to_rfft(full), half)
    # a Friedel-symmetric full cube survives full -> half -> full exactly
    sym = full + _mirror_full(full, (0, 1, 2))
    np.testing.assert_array_equal(rfft_to_full(full_to_rfft(sym), n), sym)
    assert _at(full, 0, 0, 0) == half[0, 0, 0]  # DC moves to the centre voxel


@pytest.mark.parametrize("n", [7, 8])
def test_rfft_to_full_of_an_amplitude_spectrum(n):
    # |rfftn(v)| of a real v, completed by Friedel symmetry, is |fftn(v)| (fftshifted)
    v = np.random.default_rng(1).standard_normal((n, n, n))
    np.testing.assert_allclose(
        rfft_to_full(np.abs(np.fft.rfftn(v)), n),
        np.fft.fftshift(np.abs(np.fft.fftn(v))),
        rtol=1e-10,
        atol=1e-10,
    )
    np.testing.assert_allclose(
        full_to_rfft(np.fft.fftshift(np.fft.fftn(v))), np.fft.rfftn(v), rtol=1e-10, atol=1e-10
    )


def test_converter_shape_errors():
    with pytest.raises(ValueError, match=r"\(8, 8, 5\).*got \(8, 8, 4\)"):
        rfft_to_full(np.zeros((8, 8, 4)), 8)
    with pytest.raises(ValueError, match=r"got \(8, 8, 5\)"):
        full_to_rfft(np.zeros((8, 8, 5)))


# --- weight volumes ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [8, 9, 16])
def test_weight_full_and_half_layouts_agree(n):
    full = wedge_mask(n, (-50.0, 70.0), layout="full", dtype=np.float64)
    half = wedge_mask(n, (-50.0, 70.0), layout="rfft")
    from_full = weight_from_volume(full, n)
    from_half = weight_from_volume(half, n)
    assert from_full.shape == (n, n, n // 2 + 1) and from_full.dtype == np.float32
    np.testing.assert_array_equal(from_full, half)
    np.testing.assert_array_equal(from_half, half)
    # a graded weight: a Gaussian in |k| times the wedge
    graded = full * np.exp(-((_radius(n, "full") / n) ** 2))
    np.testing.assert_allclose(
        weight_from_volume(graded, n), weight_from_volume(full_to_rfft(graded), n), rtol=1e-7
    )


def test_weight_full_cube_is_read_at_minus_k_as_relion_does():
    # RELION (ml_optimiser.cpp): Fctf(k) = Ictf(-k) about the cube's centre voxel N//2.
    n = 8
    c = box_center(n)
    cube = np.zeros((n, n, n), dtype=np.float32)
    kz, ky, kx = 1, 2, 3
    cube[c - kz, c - ky, c - kx] = 1.0  # frequency -k in the cube
    half = weight_from_volume(cube, n)
    assert half[kz, ky, kx] == 1.0 and half.sum() == 1.0


def test_weight_volume_is_copied_not_aliased():
    half = wedge_mask(8, layout="rfft")
    out = weight_from_volume(half, 8)
    out[0, 0, 0] = 0.5
    assert half[0, 0, 0] == 1.0


def test_weight_wrong_shape():
    with pytest.raises(ValueError) as info:
        weight_from_volume(np.ones((8, 8, 4)), 8)
    msg = str(info.value)
    assert "(8, 8, 4)" in msg and "(8, 8, 8)" in msg and "(8, 8, 5)" in msg
    with pytest.raises(ValueError, match=r"\(16, 8, 5\)"):  # RELION 5 CTF+multiplicity stack
        weight_from_volume(np.ones((16, 8, 5)), 8)


@pytest.mark.parametrize("bad", [1.1, -1.5, 1.0 + 1e-4])
def test_weight_out_of_range(bad):
    w = wedge_mask(8)
    w[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"\[-1, 1\].*min=.*max=.*rlnCtfDataAreCtfPremultiplied 1"):
        weight_from_volume(w, 8)


def test_weight_forms():
    """A signed CTF passes as multiplied, a CTF² sum of any scale as premultiplied only."""
    signed = wedge_mask(8) * np.float32(-0.5)
    np.testing.assert_array_equal(weight_from_volume(signed, 8), signed)
    ctf2_sum = wedge_mask(8) * np.float32(37.0)
    np.testing.assert_array_equal(weight_from_volume(ctf2_sum, 8, premultiplied=True), ctf2_sum)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        weight_from_volume(ctf2_sum, 8)
    with pytest.raises(ValueError, match=r"CTF\u00b2 sum \(>= 0\).*-0.5.*not premultiplied"):
        weight_from_volume(signed, 8, premultiplied=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weight_non_finite(bad):
    w = wedge_mask(8)
    w[1, 2, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        weight_from_volume(w, 8)


def test_weight_slack_is_clipped():
    w = wedge_mask(8).astype(np.float64)
    w[0, 0, 0] = 1.0 + 5e-7
    w[1, 0, 0] = -1.0 - 5e-7
    w[2, 0, 0] = -5e-7
    out = weight_from_volume(w, 8)
    assert out[0, 0, 0] == 1.0 and out[1, 0, 0] == -1.0
    assert weight_from_volume(np.where(w < 0, -5e-7, w), 8, premultiplied=True)[2, 0, 0] == 0.0


@pytest.mark.parametrize("layout", ["rfft", "full"])
def test_read_weight_round_trip(tmp_path, layout):
    n = 10
    mask = wedge_mask(n, (-50.0, 70.0), layout=layout)
    weight = mask * np.exp(-((_radius(n, layout) / n) ** 2)).astype(np.float32)
    path = tmp_path / f"weight_{layout}.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(weight)
    got = read_weight(path, n)
    assert got.dtype == np.float32 and got.shape == (n, n, n // 2 + 1)
    expected = weight if layout == "rfft" else full_to_rfft(weight)
    np.testing.assert_array_equal(got, expected)


def test_read_weight_rejects_wrong_box(tmp_path):
    path = tmp_path / "w.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(wedge_mask(10))
    with pytest.raises(ValueError, match=r"\(10, 10, 6\)"):
        read_weight(path, 12)
