"""Fast alignment: harmonic machinery exact, Euler mapping pinned, planted poses recovered."""

import numpy as np
import pytest
import scipy.fft

from conftest import transform_reference
from faml.align import AlignSettings, align_to, fast_align, prepare_average
from faml.align._sphere import analyse, sphere_grid, synthesise
from faml.align.fourier_rotation import crop_volume, padded_spectrum, rotated_spectra
from faml.align.peaks import find_peaks
from faml.align.shells import sample_shells
from faml.align.so3 import euler_grid, so3_correlate
from faml.align.translate import translation_search
from faml.geometry.euler import matrix_to_euler
from faml.geometry.rotations import random_rotations, rotation_distance
from faml.geometry.wedge import wedge_mask


def random_coeffs(rng, degree, even):
    c = np.zeros((degree + 1, degree + 1), complex)
    for l in range(degree + 1):  # noqa: E741
        if even and l % 2:
            continue
        c[l, 0] = rng.standard_normal()
        c[l, 1 : l + 1] = rng.standard_normal(l) + 1j * rng.standard_normal(l)
    return c


def test_sphere_analysis_is_exact_for_band_limited_functions():
    rng = np.random.default_rng(0)
    grid = sphere_grid(10)
    c = random_coeffs(rng, 10, even=False)
    got = analyse(synthesise(c, grid.directions), grid)
    np.testing.assert_allclose(got, c, atol=1e-12)


@pytest.mark.parametrize("even", [False, True])
def test_so3_correlation_equals_quadrature(even):
    """C(R) = integral f(u) g(R^-1 u) du with R = Rz(a) Ry(b) Rz(g) (scipy "ZYZ"), to rounding."""
    rng = np.random.default_rng(1)
    L = 8
    f, g = random_coeffs(rng, L, even), random_coeffs(rng, L, even)
    degrees = np.arange(0, L + 1, 2 if even else 1)
    grid = euler_grid(L)
    corr = so3_correlate(f[degrees][None, None], g[degrees][None, None], degrees, grid)[0]
    sg = sphere_grid(L)
    fv = synthesise(f, sg.directions)
    scale = np.abs(corr).max()
    for _ in range(20):
        idx = np.array([rng.integers(n) for n in grid.shape])
        rot = grid.matrices(grid.angles(idx))
        gv = synthesise(g, sg.directions @ rot)  # row u @ R = R^T u = R^-1 u
        direct = np.sum(sg.weights[:, None] * fv * gv)
        assert abs(direct - corr[tuple(idx)]) < 1e-5 * scale


def _shell_functions(particle, wedge, average, settings):
    """The rotational-score inputs p0, p1 (particle) and q0, q1 (average) on the shells."""
    from faml.align import fast, prepared

    grid, radii, degrees, keep = prepared._shell_setup(settings)
    pft = scipy.fft.rfftn(particle)
    w2 = wedge * wedge * fast.band_mask(settings.box, settings.resolved_band_limit)
    w2_s, w2m_s = sample_shells(np.stack([w2, w2 * np.abs(pft)]), radii, grid).astype(float)
    mag = w2m_s / np.maximum(w2_s, 1e-6)
    ws = (w2_s >= 0.5).astype(float)
    mu = np.einsum("j,sjk->s", grid.weights, ws * mag) / np.einsum("j,sjk->s", grid.weights, ws)
    p0 = ws * (mag - mu[:, None, None])
    return grid, radii, degrees, keep, p0, ws


def test_rotational_score_matches_direct_evaluation(ribosome32):
    """c~ on the Euler grid vs. rotate-and-correlate at 20 random grid points.

    Direct evaluation: the shell functions of the particle and of the average, each projected
    on harmonics of degree <= L (what the fast method represents: this excludes the
    interpolation effects of rotating sampled data), the average's synthesised at the rotated
    nodes R^-1 u, and C0, C1 summed by quadrature. Relative error < 1e-3.
    """
    rng = np.random.default_rng(2)
    box = ribosome32.shape[0]
    st = AlignSettings(box=box)
    wedge = wedge_mask(box, (-60, 60))
    rot = random_rotations(1, rng)[0]
    particle = transform_reference(ribosome32, rot, np.zeros(3))
    particle = scipy.fft.irfftn(scipy.fft.rfftn(particle) * wedge, s=particle.shape).astype(
        np.float32
    )
    prepared = prepare_average(ribosome32, st)
    grid, radii, degrees, keep, p0, ws = _shell_functions(particle, wedge, ribosome32, st)
    f = analyse(np.stack([p0, ws]), grid, degrees) * keep[None, :, :, None]
    c0, c1 = so3_correlate(f, prepared.coeffs, degrees, euler_grid(st.resolved_degree))
    score = c0 / np.sqrt(c1)

    L = st.resolved_degree
    egrid = euler_grid(L)

    def full(coeffs_even):  # (n_l, L+1) even rows -> (L+1, L+1)
        out = np.zeros((L + 1, L + 1), complex)
        out[degrees] = coeffs_even
        return out

    rel = []
    for _ in range(20):
        idx = np.array([rng.integers(n) for n in egrid.shape])
        r = egrid.matrices(egrid.angles(idx))
        rotated_nodes = grid.directions @ r
        direct = []
        for ch in range(2):
            total = 0.0
            for s in range(len(radii)):
                pv = synthesise(full(f[ch, s]), grid.directions)
                qv = synthesise(full(prepared.coeffs[ch, s]), rotated_nodes)
                total += np.sum(grid.weights[:, None] * pv * qv)
            direct.append(total)
        expected = direct[0] / np.sqrt(direct[1])
        rel.append(abs(expected - score[tuple(idx)]) / np.abs(score).max())
    assert max(rel) < 1e-3, max(rel)


def test_grid_rotation_is_the_particle_pose(ribosome32):
    """The grid's best rotation for a particle made by rotating the average by R is R itself
    (not R^T, not a mis-ordered Euler triple): the Euler mapping, pinned by brute force."""
    rng = np.random.default_rng(3)
    box = ribosome32.shape[0]
    full = np.ones((box, box, box // 2 + 1), np.float32)
    st = AlignSettings(box=box, refine=False, polish=0)
    prepared = prepare_average(ribosome32, st)
    step = euler_grid(st.resolved_degree).step_deg
    for rot in random_rotations(5, rng):
        particle = transform_reference(ribosome32, rot, np.zeros(3))
        best = align_to(particle, full, prepared)[0]
        assert rotation_distance(best.rotation, rot) <= step


def _make_particles(reference, n, snr, rng, wedge):
    rots = random_rotations(n, rng)
    shifts = rng.uniform(-3.0, 3.0, size=(n, 3))
    out = []
    for r, t in zip(rots, shifts, strict=True):
        p = transform_reference(reference, r, t)
        if snr:
            p = p + rng.standard_normal(p.shape).astype(np.float32) * np.sqrt(p.var() / snr)
        p = scipy.fft.irfftn(scipy.fft.rfftn(p) * wedge, s=p.shape).astype(np.float32)
        out.append(p)
    return out, rots, shifts


def test_fast_align_recovers_noise_free_poses(ribosome32):
    """50 random rotations and shifts, +-60 wedge, no noise: the best candidate is within one
    grid step (and, refined, within 3 degrees) and within 0.5 voxel in >= 48 of 50."""
    rng = np.random.default_rng(4)
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    particles, rots, shifts = _make_particles(ribosome32, 50, 0.0, rng, wedge)
    prepared = prepare_average(ribosome32, AlignSettings(box=box))
    raw = prepare_average(ribosome32, AlignSettings(box=box, refine=False, polish=0))
    step = euler_grid(prepared.settings.resolved_degree).step_deg
    ok_grid = ok_refined = ok_shift = 0
    for p, r, t in zip(particles, rots, shifts, strict=True):
        best = align_to(p, wedge, prepared)[0]
        grid_best = align_to(p, wedge, raw)[0]
        ok_grid += rotation_distance(grid_best.rotation, r) <= step
        ok_refined += rotation_distance(best.rotation, r) <= 3.0
        ok_shift += np.linalg.norm(best.shift - t) <= 0.5
    assert ok_grid >= 48, ok_grid
    assert ok_refined >= 48, ok_refined
    assert ok_shift >= 48, ok_shift


def test_fast_align_keeps_the_truth_at_snr_0_1(ribosome32):
    """SNR 0.1 (signal variance / noise variance), +-60 wedge: a candidate within 10 degrees of
    the truth among the M = 20 in >= 45 of 50."""
    rng = np.random.default_rng(5)
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    particles, rots, _ = _make_particles(ribosome32, 50, 0.1, rng, wedge)
    prepared = prepare_average(ribosome32, AlignSettings(box=box, max_candidates=20))
    hits = 0
    for p, r in zip(particles, rots, strict=True):
        cands = align_to(p, wedge, prepared)
        hits += min(rotation_distance(c.rotation, r) for c in cands) <= 10.0
    assert hits >= 45, hits


def test_candidate_contract(ribosome32):
    rng = np.random.default_rng(6)
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-50, 70))
    (p,), _, _ = _make_particles(ribosome32, 1, 0.5, rng, wedge)
    cands = fast_align(p, wedge, ribosome32, max_candidates=7, max_shift=4.0)
    assert 1 <= len(cands) <= 7
    scores = [c.score for c in cands]
    assert scores == sorted(scores, reverse=True)
    for c in cands:
        assert c.rotation.shape == (3, 3) and c.shift.shape == (3,)
        np.testing.assert_allclose(c.rotation @ c.rotation.T, np.eye(3), atol=1e-9)
        assert np.linalg.norm(c.shift) <= 4.0 + 1e-6
        np.testing.assert_allclose(c.euler, matrix_to_euler(c.rotation))
        assert -1.0 <= c.score <= 1.0


def test_max_shift_is_a_hard_limit(ribosome32):
    rng = np.random.default_rng(8)
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    (p,), _, _ = _make_particles(ribosome32, 1, 0.0, rng, wedge)  # shifted by up to 3 voxels
    for limit in (0.0, 1.5):
        for c in fast_align(p, wedge, ribosome32, max_shift=limit):
            assert np.linalg.norm(c.shift) <= limit + 1e-6


def test_bad_inputs_are_named(ribosome32):
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    with pytest.raises(ValueError, match=r"wedge must be .* \(32, 32, 17\), got \(32, 32, 32\)"):
        fast_align(ribosome32, np.ones((box,) * 3), ribosome32)
    with pytest.raises(ValueError, match="cubic"):
        fast_align(ribosome32[:, :, :30], wedge, ribosome32)
    bad = ribosome32.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fast_align(bad, wedge, ribosome32)
    with pytest.raises(ValueError, match="max_shift"):
        fast_align(ribosome32, wedge, ribosome32, max_shift=20)
    with pytest.raises(ValueError, match="band_limit"):
        fast_align(ribosome32, wedge, ribosome32, band_limit=16)


def _planted_score(grid, target, width_deg=8.0):
    nb, na, ng = grid.shape
    b, a, g = np.meshgrid(np.arange(nb), np.arange(na), np.arange(ng), indexing="ij")
    rots = grid.matrices(grid.angles(np.stack([b, a, g], -1)))
    d = rotation_distance(rots, target)
    return np.exp(-0.5 * (d / width_deg) ** 2)


@pytest.mark.parametrize(
    "euler_deg",
    [(0.7, 0.9, 0.3), (359.0, 40.0, 358.5), (123.0, 179.2, 17.0), (200.0, 90.0, 1.0)],
)
def test_peaks_across_poles_and_wraparound(euler_deg):
    """A single smooth maximum planted at the tilt poles or across the rot/psi wrap-around is
    found once (no duplicate within the separation) and refined to within 1.5 degrees."""
    grid = euler_grid(12)
    target = grid.matrices(np.radians(euler_deg))
    score = _planted_score(grid, target)
    peaks = find_peaks(score, grid, 5)
    assert rotation_distance(peaks[0].rotation, target) < 1.5
    for p in peaks[1:]:
        assert rotation_distance(p.rotation, peaks[0].rotation) >= 180.0 / grid.betas.size


def test_translation_search_recovers_planted_subvoxel_shift(ribosome32):
    box = ribosome32.shape[0]
    shift_xyz = np.array([2.3, -1.6, 0.45])
    ft = scipy.fft.rfftn(ribosome32)
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    ramp = np.exp(-2j * np.pi * (kx * shift_xyz[0] + ky * shift_xyz[1] + kz * shift_xyz[2]))
    particle_ft = ft * ramp
    w2 = np.ones(ft.shape, np.float32)
    shifts, scores = translation_search(particle_ft, w2, ft[None], 6.0)  # parabola
    np.testing.assert_allclose(shifts[0], shift_xyz, atol=0.05)
    assert scores[0] > 0.99
    shifts, scores = translation_search(particle_ft, w2, ft[None], 6.0, newton=3)
    np.testing.assert_allclose(shifts[0], shift_xyz, atol=1e-3)
    assert scores[0] > 0.9999
    far = translation_search(particle_ft, w2, ft[None], 1.0)[0][0]  # outside max_shift
    assert np.linalg.norm(far) <= 1.0 + 1e-9


def test_fourier_rotation_matches_real_space_rotation(ribosome32):
    """The padded, gridding-corrected Fourier gather equals the FFT of a cubic real-space
    rotation to within 3% below half Nyquist (both are approximations: measured 2.1%), and
    is zero beyond the band."""
    box = ribosome32.shape[0]
    padded = padded_spectrum(ribosome32)
    rots = random_rotations(3, 7)
    got = rotated_spectra(padded, rots, box // 2 - 1)
    kz = np.fft.fftfreq(box, 1 / box)[:, None, None]
    kx = np.fft.rfftfreq(box, 1 / box)[None, None, :]
    r = np.sqrt(kz**2 + kz.transpose(1, 0, 2) ** 2 + kx**2)
    low = r < box / 4
    for i, rot in enumerate(rots):
        ref = scipy.fft.rfftn(transform_reference(ribosome32, rot, np.zeros(3)))
        err = np.linalg.norm(got[i][low] - ref[low]) / np.linalg.norm(ref[low])
        assert err < 0.03, err
    ident = rotated_spectra(padded, np.eye(3)[None], box // 2 - 1)[0]
    assert np.abs(ident[r > box / 2]).max() == 0.0  # beyond the band: zero


def test_crop_volume_keeps_centre_and_low_frequencies(ribosome32):
    small = crop_volume(ribosome32, 16)
    assert small.shape == (16, 16, 16)
    big_ft = scipy.fft.rfftn(ribosome32)
    small_ft = scipy.fft.rfftn(small) * (32 / 16) ** 3
    np.testing.assert_allclose(small_ft[:4, :4, :4], big_ft[:4, :4, :4], rtol=1e-4, atol=1e-3)


def test_candidates_are_distinct_and_fractional_weights_work(ribosome32):
    """A particle equal to the average (poses near the tilt pole) gives no duplicate
    candidates; a weight scaled to 0.7 (a CTF-like envelope) aligns like the binary one."""
    box = ribosome32.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    cands = fast_align(ribosome32, wedge, ribosome32)
    step = euler_grid(box // 2).step_deg
    for i in range(len(cands)):
        for j in range(i):
            assert rotation_distance(cands[i].rotation, cands[j].rotation) >= 0.5 * step
    assert rotation_distance(cands[0].rotation, np.eye(3)) < 1.0
    scaled = fast_align(ribosome32, 0.7 * wedge, ribosome32)
    assert rotation_distance(scaled[0].rotation, np.eye(3)) < 1.0
    with pytest.raises(ValueError, match="not all zero"):
        fast_align(ribosome32, 0 * wedge, ribosome32)
    with pytest.raises(ValueError, match="no signal"):
        fast_align(ribosome32, wedge, np.zeros_like(ribosome32))


def test_max_shift_near_half_the_box(ribosome32):
    """The sub-voxel fit keeps a neighbour inside the searched region at any max_shift."""
    box = ribosome32.shape[0]
    ft = scipy.fft.rfftn(ribosome32)
    k = np.fft.fftfreq(box)[:, None, None]
    for true_x in (14.6, -14.6):
        ramp = np.exp(-2j * np.pi * np.fft.rfftfreq(box)[None, None, :] * true_x) * (k == k)
        shifts, _ = translation_search(ft * ramp, np.ones(ft.shape, np.float32), ft[None], 15.0)
        assert abs(shifts[0, 0] - true_x) < 0.1, shifts
