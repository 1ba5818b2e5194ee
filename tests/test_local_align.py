"""Local alignment about a prior pose: planted poses recovered, the range respected, cheap."""

import numpy as np
import pytest
import scipy.fft
from scipy.spatial.transform import Rotation

from conftest import transform_reference
from faml.align import AlignSettings, prepare_average
from faml.align.local import local_align, local_rotations
from faml.geometry.rotations import random_rotations, rotation_distance
from faml.geometry.wedge import wedge_mask
from faml.ml.local import restrict

RANGE = 30.0


def _turned(rotations, angles_deg, rng):
    axes = rng.normal(size=(len(rotations), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return Rotation.from_rotvec(axes * np.radians(angles_deg)[:, None]).as_matrix() @ rotations


@pytest.fixture(scope="module")
def planted(ribosome32):
    """12 noise-free particles (+-60 wedge, shifts up to 5 voxels) with priors 5-25 degrees
    and about 2 voxels off."""
    rng = np.random.default_rng(22)
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    rots = random_rotations(12, rng)
    shifts = rng.uniform(-5.0, 5.0, size=(12, 3))
    particles = [
        scipy.fft.irfftn(scipy.fft.rfftn(transform_reference(ribosome32, r, t)) * wedge,
                         s=(box,) * 3).astype(np.float32)
        for r, t in zip(rots, shifts, strict=True)
    ]  # fmt: skip
    priors = _turned(rots, np.linspace(5.0, 25.0, 12), rng)
    prior_shifts = shifts + rng.normal(0.0, 2.0, size=shifts.shape)
    settings = AlignSettings(box=box, scan_step_deg=15.0, scan_band=10, max_shift=6.0)
    prepared = prepare_average(ribosome32, settings)
    return particles, wedge, rots, shifts, priors, prior_shifts, prepared


def test_local_rotations_cover_the_range():
    """The prior first; every rotation within the range has a grid rotation within one step;
    none lies beyond the range plus half a step."""
    rng = np.random.default_rng(1)
    r0 = random_rotations(1, rng)[0]
    grid = local_rotations(r0, RANGE, 15.0)
    assert rotation_distance(grid[0], r0) < 1e-9
    assert rotation_distance(grid, r0[None]).max() <= RANGE + 7.5 + 1e-6
    probes = _turned(np.repeat(r0[None], 200, 0), rng.uniform(0, RANGE, 200), rng)
    nearest = rotation_distance(probes[:, None], grid[None]).min(axis=1)
    assert nearest.max() <= 15.0, nearest.max()
    assert len(grid) < 120  # a few dozen rotations, not the whole grid's 4608


def test_local_align_recovers_planted_poses_from_priors(planted):
    """Noise-free, priors 5-25 degrees and ~2 voxels off: the best candidate within 3 degrees
    and 0.5 voxel of the truth for every particle; shifts are absolute (the prior added back)."""
    particles, wedge, rots, shifts, priors, prior_shifts, prepared = planted
    for p, r, t, r0, t0 in zip(particles, rots, shifts, priors, prior_shifts, strict=True):
        best = local_align(p, wedge, prepared, r0, t0, RANGE)[0]
        assert rotation_distance(best.rotation, r) <= 3.0
        assert np.linalg.norm(best.shift - t) <= 0.5


def test_local_align_stays_in_range_when_the_truth_is_outside(planted):
    """Priors 60 degrees from the truth with a 20 degree range: every candidate (after
    :func:`faml.ml.local.restrict`) within the range of the prior, the prior among them."""
    particles, wedge, rots, shifts, _, prior_shifts, prepared = planted
    rng = np.random.default_rng(3)
    far = _turned(rots, np.full(len(rots), 60.0), rng)
    for p, r0, t0 in zip(particles[:4], far[:4], prior_shifts[:4], strict=True):
        cands = local_align(p, wedge, prepared, r0, t0, 20.0)
        rots_c = np.stack([c.rotation for c in cands])
        shifts_c = np.stack([c.shift for c in cands])
        kept_r, kept_t, _ = restrict(rots_c, shifts_c, cands[0].score, (r0, t0), 20.0, 6.0)
        assert rotation_distance(kept_r, r0[None]).max() <= 20.0 + 1e-6
        assert np.abs(kept_t - t0[None]).max() <= 6.0 + 1e-6
        assert rotation_distance(kept_r, r0[None]).min() < 1e-6


def test_local_align_refuses_a_bad_range(planted):
    particles, wedge, _, _, priors, prior_shifts, prepared = planted
    with pytest.raises(ValueError, match="range must be positive"):
        local_align(particles[0], wedge, prepared, priors[0], prior_shifts[0], 0.0)
