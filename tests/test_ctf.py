"""The CTF in the data model: every form gives the CTF-corrected average and one likelihood."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.fft

from conftest import polnet_map, transform_reference
from faml.evaluate.maps import amplitude_ratio, masked_correlation
from faml.evaluate.oracle import oracle_average
from faml.geometry.rotations import random_rotations
from faml.geometry.wedge import wedge_mask, whitened
from faml.io.mrc import write_volume
from faml.io.particles import ParticleTable, with_weight_scale
from faml.ml.em import hard_particle, load_particle
from faml.ml.fourier import shell_index
from faml.ml.stats import Stats

BOX, N = 32, 40
FORMS = ("wedge", "flipped", "signed", "premultiplied")


def ctf_like(box: int, defocus: float, signed: bool) -> np.ndarray:
    """`(N, N, N//2 + 1)` a CTF-like 3D weight: amplitude contrast 0.1 at DC, zeros beyond."""
    s = shell_index(box).astype(np.float64) / box  # cycles per voxel (rounded shells)
    ctf = np.sin(defocus * s**2 + np.arcsin(0.1))  # CTF(0) = +0.1, positive first lobe
    w = (ctf if signed else np.abs(ctf)) * wedge_mask(box, (-60.0, 60.0))
    return w.astype(np.float32)


@pytest.fixture(scope="module")
def ctf_sets(tmp_path_factory):
    """One particle set in three CTF forms, flipped (|CTF|), signed CTF, premultiplied (CTF² x 7),
    and with the same wedge but no CTF (the control)."""
    structure = polnet_map("1bxn")
    rng = np.random.default_rng(3)
    rots = random_rotations(N, rng)
    shifts = rng.uniform(-1.5, 1.5, (N, 3))
    root = tmp_path_factory.mktemp("ctf")
    tables = {}
    for form in FORMS:
        (root / form).mkdir()
    for i in range(N):
        defocus = 50.0 + 40.0 * i / N  # the CTF zeros move from particle to particle
        c = ctf_like(BOX, defocus, signed=True)
        posed = scipy.fft.rfftn(transform_reference(structure, rots[i], shifts[i]))
        noise = scipy.fft.rfftn(rng.standard_normal((BOX,) * 3)) * 0.05 * np.sqrt(posed.var())
        observed = np.abs(c) > 0
        for form, weight, data in (
            ("wedge", observed.astype(np.float32), posed * observed + noise * observed),
            ("flipped", np.abs(c), np.abs(c) * posed + noise * observed),
            ("signed", c, c * posed + np.sign(c) * noise * observed),
            ("premultiplied", 7.0 * c * c, 7.0 * (c * c * posed + np.abs(c) * noise)),
        ):
            vol = scipy.fft.irfftn(data, s=(BOX,) * 3)
            write_volume(root / form / f"p{i:03d}.mrc", vol, 10.0)
            write_volume(root / form / f"w{i:03d}.mrc", weight.astype(np.float32), 10.0)
    for form in FORMS:
        tables[form] = ParticleTable(
            paths=tuple(str(root / form / f"p{i:03d}.mrc") for i in range(N)),
            names=tuple(f"p{i:03d}.mrc" for i in range(N)),
            box=BOX,
            voxel_size=10.0,
            tilt_ranges=np.tile([-60.0, 60.0], (N, 1)),
            weight_paths=tuple(str(root / form / f"w{i:03d}.mrc") for i in range(N)),
            ctf_premultiplied=form == "premultiplied",
        )
    return structure, rots, shifts, tables


def test_whitened_premultiplied_is_the_multiplied_particle():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16,) * 3).astype(np.float32)
    c = ctf_like(16, 50.0, signed=False) + np.float32(0.0)
    d = scipy.fft.irfftn(scipy.fft.rfftn(x) * c * c, s=(16,) * 3) * 3.0
    xw, cw = whitened(d, 3.0 * c * c, is_premultiplied=True, scale=3.0)
    # D / sqrt(C) = c X where c > 0: the particle as a weight-multiplied one, its weight c
    expected = scipy.fft.irfftn(scipy.fft.rfftn(x) * c, s=(16,) * 3)
    np.testing.assert_allclose(xw, expected, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(cw, c, atol=1e-6)
    same_x, same_c = whitened(x, c)  # not premultiplied: as stored
    assert same_x is not None and np.array_equal(same_x, x) and np.array_equal(same_c, c)


def test_oracle_of_ctf_weighted_particles_is_ctf_corrected(ctf_sets):
    """Averaged at the true poses, every CTF form gives the amplitudes of the same particles
    without a CTF (the wedge's own interpolation at its edges is common to both)."""
    structure, rots, shifts, tables = ctf_sets
    classes = np.zeros(N, dtype=np.int64)
    ratios, corr = {}, {}
    for form, table in tables.items():
        filtered = oracle_average(table, rots, shifts, classes).maps[0]
        corr[form] = masked_correlation(filtered, structure)
        assert corr[form] > 0.85, form
        o = oracle_average(table, rots, shifts, classes, filtered=False)
        ratios[form] = amplitude_ratio(o.maps[0], structure, np.eye(3), np.zeros(3))[1:9]

    for form in ("flipped", "signed", "premultiplied"):
        relative = ratios[form] / ratios["wedge"]
        relative = relative / np.median(relative)
        # flat: the low shells, where |CTF| is near the amplitude contrast, are restored
        # (measured 0.85-1.22 over shells 1-8; the interpolation of a varying CTF and the
        # noise the correction lifts at CTF zeros make the spread)
        assert relative.min() > 0.75 and relative.max() < 1.35, (form, relative)
    # the signed CTF interpolates through its zeros where |CTF| does not: as good within 1%
    assert corr["signed"] >= 0.99 * corr["flipped"], corr


def test_three_forms_give_one_set_of_statistics(ctf_sets):
    """The same particles, flipped and premultiplied: the same sums up to one constant."""
    _, rots, shifts, tables = ctf_sets
    sums = {}
    for form, table in tables.items():
        table = with_weight_scale(table)
        assert (
            5.0 < table.weight_scale <= 7.0 if form == "premultiplied" else table.weight_scale == 1
        )
        total = Stats.zeros(1, BOX)
        for i in range(6):
            total += hard_particle(table, i, 0, rots[i], shifts[i], 1, i % 2)[1]
        sums[form] = total
    ref, pre = sums["flipped"], sums["premultiplied"]
    # premultiplied (whitened, scaled by a constant) = flipped: the same S / W and counts
    seen = ref.W > 1e-3 * ref.W.max()
    mean_ref = ref.S[seen] / ref.W[seen]
    np.testing.assert_allclose(
        pre.S[seen] / pre.W[seen], mean_ref, rtol=1e-3, atol=1e-3 * np.abs(mean_ref).max()
    )
    np.testing.assert_allclose(pre.count, ref.count, rtol=1e-2)


def test_load_particle_scales_premultiplied_weights(ctf_sets):
    _, _, _, tables = ctf_sets
    raw = tables["premultiplied"]
    scaled = with_weight_scale(raw)
    _, c_raw = load_particle(replace(raw, weight_scale=1.0), 0, None)
    _, c = load_particle(scaled, 0, None)
    assert c.max() <= 1.5 and c_raw.max() > 2.0  # sqrt(7 CTF²) against sqrt(CTF² / peak)
    np.testing.assert_allclose(c * np.sqrt(scaled.weight_scale), c_raw, rtol=1e-5)
