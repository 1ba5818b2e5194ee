"""The phase-aware scan: its rotation grid covers SO(3); it finds a planted pose."""

import numpy as np
import scipy.fft

from conftest import transform_reference
from faml.align.fourier_rotation import padded_spectrum
from faml.align.scan import rotation_grid, scan, scan_reference, shift_grid
from faml.geometry.rotations import random_rotations, rotation_distance
from faml.geometry.wedge import wedge_mask


def test_rotation_grid_covers_so3():
    grid = rotation_grid(15.0)
    assert grid.shape == (4608, 3, 3)  # RELION's HEALPix count at 15 degrees
    assert np.allclose(np.einsum("nij,nkj->nik", grid, grid), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(grid), 1.0)
    probes = random_rotations(500, np.random.default_rng(0))
    trace = np.einsum("aij,bij->ab", probes, grid).max(axis=1)
    nearest = np.degrees(np.arccos(np.clip((trace - 1) / 2, -1, 1)))
    assert nearest.max() < 14.0 and np.median(nearest) < 9.0, (nearest.max(), np.median(nearest))


def test_shift_grid_is_a_ball():
    g = shift_grid(3.0, 1.0)
    assert len(g) == 123 and np.all(np.sum(g**2, axis=1) <= 9.0)
    assert len(shift_grid(4.0, 2.0)) == 33


def test_scan_finds_a_planted_pose(ribosome32):
    rng = np.random.default_rng(3)
    wedge = wedge_mask(32, (-60.0, 60.0))
    reference = scan_reference(padded_spectrum(ribosome32), 10, 15.0)
    grid = rotation_grid(15.0)
    for rotation in random_rotations(4, rng):
        shift = rng.integers(-2, 3, 3).astype(float)
        particle = transform_reference(ribosome32, rotation, shift)
        particle += rng.normal(0.0, 2.0 * particle.std(), particle.shape)  # SNR 0.25
        ft = scipy.fft.rfftn(particle) * wedge
        rots, shifts, scores = scan(reference, ft, wedge * wedge, shift_grid(3.5, 1.0), None, 3, 20)
        # best: the grid rotation nearest the truth, or within one grid step of it
        nearest = rotation_distance(grid, rotation[None]).min()
        assert rotation_distance(rots[:1], rotation[None])[0] < nearest + 12.0
        assert np.abs(shifts[0] - shift).max() <= 1.0
        assert scores[0] > scores[1] >= scores[2]
        # the three proposals are at least 20 degrees apart
        d = rotation_distance(rots[:, None], rots[None, :])
        assert np.all(d[~np.eye(3, dtype=bool)] >= 20.0)
