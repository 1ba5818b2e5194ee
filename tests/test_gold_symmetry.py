"""Gold-standard half-sets, point-group symmetry, masks and model.star, with planted answers."""

from __future__ import annotations

import shutil

import mrcfile
import numpy as np
import pytest
import scipy.fft
import starfile

from conftest import make_dataset, polnet_map
from faml.geometry.masks import reference_mask, soft_sphere
from faml.geometry.rotations import random_rotations, rotation_about_axis
from faml.geometry.symmetry import parse_symmetry, symmetry_correlation, symmetry_frame
from faml.geometry.transform import transform_volume
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.engine import run
from faml.ml.fourier import fsc, mask_corrected_fsc
from faml.ml.mstep import symmetrize_stats
from faml.ml.stats import Stats, frame_points
from faml.ml.tasks import split_halves


def _blobs(box: int, group: str) -> np.ndarray:
    """A chiral arrangement of Gaussian blobs with ``group``'s symmetry (RELION's axes)."""
    z, y, x = np.indices((box,) * 3) - box // 2
    vol = np.zeros((box,) * 3, np.float32)
    # amplitude-weighted z sums to 0: the centre of mass is the box centre (for any Cn)
    base = [((7.0, 0.0, 4.0), 1.0), ((9.0, 3.0, 7.0), 1.3), ((5.0, -2.0, 2.0), 1.6),
            ((4.0, 4.0, -8.15), 2.0)]  # fmt: skip
    for r in parse_symmetry(group).rotations():
        for c, a in base:
            p = r @ np.array(c)
            vol += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / 4.5)
    return vol


# -- symmetry ---------------------------------------------------------------------------------


def test_groups_have_relions_axes_and_sizes():
    c7, d7 = parse_symmetry("c7"), parse_symmetry("D7")
    assert (c7.name, len(c7.rotations()), d7.name, len(d7.rotations())) == ("C7", 7, "D7", 14)
    z = np.array([0.0, 0.0, 1.0])
    assert all(np.allclose(r @ z, z) for r in c7.rotations())
    assert np.allclose(d7.rotations()[7], rotation_about_axis("x", 180.0))
    assert parse_symmetry(None).trivial and parse_symmetry("C1").trivial
    for bad in ("O", "D0", "C", "I2", "7"):
        with pytest.raises(ValueError, match="Cn or Dn"):
            parse_symmetry(bad)
    with pytest.raises(ValueError, match="Cn or Dn"):
        RunConfig(symmetry="T")


@pytest.mark.parametrize("group", ["C4", "D3"])
def test_symmetry_frame_recovers_a_planted_transform(group):
    g = parse_symmetry(group)
    vol = _blobs(40, group)
    assert symmetry_correlation(vol, g.rotations()) > 0.99
    moved = transform_volume(vol, random_rotations(1, 11)[0], np.array([2.0, -1.5, 1.0]), order=3)
    assert symmetry_correlation(moved, g.rotations()) < 0.6
    q, t, score = symmetry_frame(moved, g)
    framed = transform_volume(moved, q, t, order=3)
    assert score > 0.98
    # the frame is unique up to the group (and, for Cn, a turn about z and the axis' sign)
    turns = [np.eye(3)]
    if g.kind == "C":
        flips = (np.eye(3), rotation_about_axis("x", 180.0))
        turns = [rotation_about_axis("z", a) @ f for a in range(0, 360, 2) for f in flips]
    best = max(
        np.corrcoef(transform_volume(framed, r @ s, order=1).ravel(), vol.ravel())[0, 1]
        for r in turns
        for s in g.rotations()
    )
    assert best > 0.97


def test_symmetrised_sums_equal_the_symmetrised_map():
    box, band = 32, 12
    g = parse_symmetry("D3")
    rng = np.random.default_rng(3)
    vol = _blobs(box, "C1") + rng.normal(0, 0.05, (box,) * 3).astype(np.float32)
    vol *= soft_sphere(box, 12.0)
    flat = frame_points(box, band)[1]
    stats = Stats.zeros(1, box, band)
    stats.S[0, 0] = scipy.fft.rfftn(vol).reshape(-1)[flat]
    stats.W[0, 0] = 1.0
    out = symmetrize_stats(stats, g.rotations())
    S, W = out.dense()
    keep = W[0, 0] > 0.5  # the outermost shell reads zeros beyond the band
    back = scipy.fft.irfftn(np.where(keep, S[0, 0] / np.maximum(W[0, 0], 1e-9), 0), s=vol.shape)
    ref = transform_volume(vol, g.rotations(), order=3).mean(axis=0)
    ref_spec = scipy.fft.rfftn(ref)
    ref_band = np.zeros(ref_spec.size, bool)
    ref_band[flat] = True
    ref = scipy.fft.irfftn(
        np.where(ref_band.reshape(ref_spec.shape) & keep, ref_spec, 0), s=vol.shape
    )
    assert np.corrcoef(back.ravel(), ref.ravel())[0, 1] > 0.995
    assert symmetry_correlation(back, g.rotations()) > 0.99
    assert np.array_equal(out.n, stats.n) and out.S is not stats.S


def test_a_symmetric_run_gives_a_symmetric_map_close_to_the_truth(tmp_path):
    truth = _blobs(32, "D3")
    make_dataset(tmp_path / "p", [truth], 16, 0.5, seed=2)
    cfg = RunConfig(iterations=4, seed=1, symmetry="D3", tuning=Tuning(starts=1, fa_iterations=2))
    result = run(from_mrc_files(tmp_path / "p"), tmp_path / "run", cfg)
    g = parse_symmetry("D3")
    final = result.maps[0]
    assert symmetry_correlation(final, g.rotations()) > 0.97
    # in the group's frame (n-fold along z): equal to the truth up to the group and a turn
    best = max(
        np.corrcoef(transform_volume(final, rotation_about_axis("z", a) @ s, order=1).ravel(),
                    truth.ravel())[0, 1]
        for a in range(0, 120, 3)
        for s in parse_symmetry("D3").rotations()
    )  # fmt: skip
    assert best > 0.9


# -- gold standard ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_set(tmp_path_factory):
    """Half-set 0 holds only the 80S ribosome, half-set 1 only the 1U6G complex: a half map
    that ever sees the other half's particles is pulled towards the other structure."""
    n, seed = 24, 4
    halves = split_halves(n, seed)
    a, b = polnet_map("4v4r"), polnet_map("1u6g")
    root = tmp_path_factory.mktemp("gold")
    make_dataset(root / "a", [a], int(np.sum(halves == 0)), 0.3, seed=1)
    make_dataset(root / "b", [b], int(np.sum(halves == 1)), 0.3, seed=2)
    files = {0: sorted((root / "a").glob("*.mrc")), 1: sorted((root / "b").glob("*.mrc"))}
    (root / "p").mkdir()
    for i, h in enumerate(halves):
        shutil.copy(files[int(h)].pop(0), root / "p" / f"particle_{i:04d}.mrc")
    return root / "p", (a, b), seed


def _half_scores(out, structures):
    from faml.evaluate import score_map

    scores = []
    for h in (1, 2):
        vol = mrcfile.read(out / f"class_001_half{h}_unfil.mrc")
        scores.append(
            [score_map(vol, s, 10.0, lowpass_angstrom=40.0).correlation_lowpass for s in structures]
        )
    return np.array(scores)  # (half, structure)


def test_gold_standard_halves_never_see_each_other(split_set, tmp_path):
    folder, structures, seed = split_set
    cfg = RunConfig(
        iterations=4, seed=seed, gold_standard=True, tuning=Tuning(starts=1, fa_iterations=1)
    )
    run(from_mrc_files(folder), tmp_path / "gold", cfg)
    scores = _half_scores(tmp_path / "gold", structures)
    assert scores[0, 0] > scores[0, 1] + 0.2 and scores[1, 1] > scores[1, 0] + 0.2, scores
    model = starfile.read(tmp_path / "gold" / "model.star")
    curve = model["model_class_1"]
    for label in ("rlnGoldStandardFsc", "rlnFourierShellCorrelationCorrected"):
        assert label in curve.columns
    # two different structures: the halves agree only at the lowest frequencies
    assert float(model["model_classes"]["rlnEstimatedResolution"].iloc[0]) > 60.0
    assert "gold standard" in (tmp_path / "gold" / "model.star").read_text().splitlines()[0]


def test_without_gold_standard_no_half_maps_and_an_optimistic_note(split_set, tmp_path):
    folder, _, seed = split_set
    cfg = RunConfig(iterations=2, seed=seed, tuning=Tuning(starts=1, fa_iterations=1))
    run(from_mrc_files(folder), tmp_path / "joint", cfg)
    assert not list((tmp_path / "joint").glob("*half*"))
    text = (tmp_path / "joint" / "model.star").read_text()
    assert "optimistic" in text.splitlines()[0]
    assert "rlnGoldStandardFsc" in text and "rlnFourierShellCorrelationCorrected" not in text


def test_mask_correction_is_neutral_without_a_mask_and_randomises_the_outer_shells():
    box = 32
    rng = np.random.default_rng(0)
    signal = scipy.fft.rfftn(_blobs(box, "C1"))
    h1 = signal + scipy.fft.rfftn(rng.normal(0, 0.3, (box,) * 3))
    h2 = signal + scipy.fft.rfftn(rng.normal(0, 0.3, (box,) * 3))
    out = mask_corrected_fsc(h1, h2, np.ones((box,) * 3, np.float32))
    np.testing.assert_allclose(out["unmasked"], fsc(h1, h2))
    np.testing.assert_allclose(out["masked"], out["unmasked"], atol=1e-9)
    start = int(out["randomised_from"])
    assert 1 <= start < box // 2 and out["unmasked"][start] < 0.8 <= out["unmasked"][start - 1]
    outer = slice(start + 2, box // 2)
    assert abs(np.mean(out["random"][outer])) < 0.05  # random phases: no correlation left
    np.testing.assert_allclose(out["corrected"][:start], out["masked"][:start])
    assert np.max(np.abs(out["corrected"][outer] - out["masked"][outer])) < 0.3


# -- masks ------------------------------------------------------------------------------------


def test_reference_masks_are_checked():
    box = 24
    sphere = reference_mask(box, 10.0, diameter=150.0)
    assert sphere.shape == (box,) * 3 and sphere[12, 12, 12] == 1.0 and sphere[0, 0, 0] == 0.0
    assert reference_mask(box, 10.0) is None
    with pytest.raises(ValueError, match="does not fit"):
        reference_mask(box, 10.0, diameter=250.0)
    with pytest.raises(ValueError, match=r"\(24, 24, 24\)"):
        reference_mask(box, 10.0, mask=np.ones((20, 20, 20)))
    with pytest.raises(ValueError, match="empty"):
        reference_mask(box, 10.0, mask=np.zeros((box,) * 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reference_mask(box, 10.0, mask=np.full((box,) * 3, 3.0))
    with pytest.raises(ValueError, match="not both"):
        reference_mask(box, 10.0, mask=np.ones((box,) * 3), diameter=100.0)


def test_evaluate_finds_dn_operators_of_a_moved_truth():
    from faml.evaluate.evaluation import _symmetry_setup

    truth = _blobs(40, "D3")
    moved = transform_volume(truth, random_rotations(1, 5)[0], np.array([1.0, 2.0, -1.0]), order=3)
    ops, order, label = _symmetry_setup("D3", moved[None])
    rots, shifts = ops[0]
    assert (order, label, len(rots)) == (3, "D3", 6)
    copies = transform_volume(moved, rots, shifts, order=3)
    assert min(np.corrcoef(c.ravel(), moved.ravel())[0, 1] for c in copies) > 0.97
