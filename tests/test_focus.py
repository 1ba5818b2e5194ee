"""Focused classification from a consensus: the focus mask and the split start.

Planted signal: two structures that differ only in a small region (a blob at one of two
places next to each other), particles at known poses; the focus mask is a sphere over that
region. The split of the
particles' differences from their consensus separates them, a focused run keeps them
apart with class averages equal outside the mask, and a bad ``--focus-mask`` stops
``faml run`` with exit status 2 and one line.
"""

import warnings
from dataclasses import replace

import mrcfile
import numpy as np
import pytest

from conftest import make_dataset, polnet_map
from faml.cli import main
from faml.evaluate.classes import match_classes
from faml.evaluate.maps import lowpass
from faml.geometry.masks import default_mask, soft_sphere
from faml.io.particles import from_mrc_files, with_weight_scale
from faml.ml.config import RunConfig, Tuning
from faml.ml.engine import run
from faml.ml.focus import check_focus_mask, focus_averages, focus_from_averages
from faml.ml.split import cluster_scores, principal_scores, split_classes, split_sample
from faml.ml.tasks import split_halves

BOX, VOXEL = 24, 10.0
CENTRE = np.array([12 + 5, 12 - 2, 12 + 1])  # (z, y, x) of the planted difference


def _blob(box: int, radius: float, offset) -> np.ndarray:
    z, y, x = np.indices((box,) * 3)
    c = CENTRE + np.asarray(offset)
    r2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
    return np.exp(-r2 / (2.0 * radius**2)).astype(np.float32)


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """20 particles of each state (SNR 0.5, +-60), their true poses as priors, the focus."""
    # one blob more in each state, 3 voxels apart: neither state has more density (with
    # more, the likelihood of the denser class wins some particles of the other by their pose)
    base = polnet_map("1bxn", BOX)
    one = base + 2.0 * _blob(BOX, 1.5, (0, 0, -1.5))
    other = base + 2.0 * _blob(BOX, 1.5, (0, 0, 1.5))
    folder = tmp_path_factory.mktemp("focus") / "particles"
    rots, shifts, classes = make_dataset(folder, [one, other], 20, 0.5, seed=41, voxel=VOXEL)
    table = from_mrc_files(folder)
    table = replace(table, prior_rotations=rots, prior_shifts=shifts)
    z, y, x = np.indices((BOX,) * 3)
    r = np.sqrt((z - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (x - CENTRE[2]) ** 2)
    focus = np.clip((6.0 - r) / 2.0, 0.0, 1.0).astype(np.float32)  # soft sphere, radius 5
    consensus = (lowpass(0.5 * (one + other), 60.0, VOXEL) * default_mask(BOX)).astype(np.float32)
    return table, classes, focus, consensus


def test_focus_averages_are_the_consensus_outside_and_the_class_inside():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(2, 16, 16, 16))
    m = soft_sphere(16, 4.0, edge=2.0)
    alpha = np.array([0.25, 0.75])
    out = np.fft.irfftn(focus_averages(np.fft.rfftn(vols, axes=(1, 2, 3)), alpha, m),
                        s=(16,) * 3, axes=(1, 2, 3))  # fmt: skip
    mean = np.tensordot(alpha, vols, axes=1)
    outside, inside = m == 0, m == 1
    np.testing.assert_allclose(out[0][outside], out[1][outside], atol=1e-10)
    np.testing.assert_allclose(out[0][outside], mean[outside], atol=1e-10)
    np.testing.assert_allclose(out[:, inside], vols[:, inside], atol=1e-10)
    np.testing.assert_allclose(np.tensordot(alpha, out, axes=1), mean, atol=1e-10)


def test_bad_focus_masks_are_refused():
    good = np.zeros((8, 8, 8))
    good[3:5, 3:5, 3:5] = 1.0
    check_focus_mask(good, 8)
    nan = good.copy()
    nan[0, 0, 0] = np.nan
    cases = ((good[:6], "must be a (8, 8, 8) volume"), (0 * good, "zero everywhere"),
             (nan, "1 NaN or infinite"), (2 * good, "values must lie in 0..1"))  # fmt: skip
    for volume, phrase in cases:
        with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
            check_focus_mask(volume, 8)


def test_scores_of_two_planted_clusters():
    rng = np.random.default_rng(3)
    centre = rng.normal(size=200)
    labels = np.repeat([0, 1], [30, 20])
    points = rng.normal(size=(50, 200)) + np.where(labels == 1, 2.0, -2.0)[:, None] * centre
    scores, explained = principal_scores(points, 1)
    assert explained[0] > 0.5
    found = cluster_scores(scores, 2)
    np.testing.assert_array_equal(found, labels)  # the larger cluster is 0
    three = np.concatenate([rng.normal(size=(10, 2)) + c for c in ([0, 9], [9, 0], [-9, -9])])
    got = cluster_scores(three, 3)
    assert len({tuple(np.unique(got[s : s + 10])) for s in (0, 10, 20)}) == 3
    assert all(len(np.unique(got[s : s + 10])) == 1 for s in (0, 10, 20))


def test_components_from_a_half_place_every_point():
    """Two planted clusters: the components of a random half (split_sample) still separate
    all the points; the half differs by seed, and share 1 is every particle."""
    rng = np.random.default_rng(4)
    centre = rng.normal(size=300)
    labels = np.repeat([0, 1], [40, 30])
    points = rng.normal(size=(70, 300)) + np.where(labels == 1, 2.0, -2.0)[:, None] * centre
    halves = [split_sample(70, RunConfig(seed=s).tuned(split_share=0.5)) for s in (1, 2)]
    assert all(h.size == 35 and np.unique(h).size == 35 for h in halves)
    assert not np.array_equal(halves[0], halves[1])
    assert split_sample(70, RunConfig(seed=1)) is None
    for half in halves:
        scores, _ = principal_scores(points, 1, half)
        assert scores.shape == (70, 1)
        np.testing.assert_array_equal(cluster_scores(scores, 2), labels)
    full, _ = principal_scores(points, 1)
    np.testing.assert_allclose(principal_scores(points, 1, np.arange(70))[0], full, atol=1e-8)


def test_the_split_separates_two_states_at_their_poses(two_states):
    table, classes, focus, _ = two_states
    table = with_weight_scale(table)
    split = split_classes(table, table.prior_rotations, table.prior_shifts, 2, focus, None,
                          split_halves(len(table), 1))  # fmt: skip
    assert match_classes(split.labels, classes, 2, 2).mean_f1 >= 0.9


def test_a_focused_run_separates_the_states_and_the_classes_agree_outside(two_states, tmp_path):
    table, classes, focus, consensus = two_states
    quick = Tuning(scan_step_deg=None, max_candidates=4, local_candidates=1, local_rings=1)
    cfg = RunConfig(classes=2, iterations=2, seed=1, references=1, local_search_deg=10.0,
                    focused=True, tuning=quick)  # fmt: skip
    result = run(table, tmp_path / "run", cfg, references=consensus[None], focus_mask=focus)
    assert match_classes(result.classes, classes, 2, 2).mean_f1 >= 0.9
    maps = np.fft.irfftn(result.state.averages, s=(BOX,) * 3, axes=(1, 2, 3))
    outside, inside = focus == 0, focus == 1
    assert np.abs(maps[0] - maps[1])[outside].max() < 1e-6 * np.abs(maps).max()
    assert np.abs(maps[0] - maps[1])[inside].max() > 0.1 * np.abs(maps).max()
    with pytest.raises(ValueError, match="needs a focus mask"):
        run(table, tmp_path / "again", cfg, references=consensus[None])


def _mrc(path, data, voxel=VOXEL):
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN in the data
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = voxel
    return path


def test_a_bad_focus_mask_is_one_line(tmp_path, capsys):
    from importlib import resources

    with resources.as_file(resources.files("faml.data") / "demo_structure.mrc") as structure:
        assert main(["-q", "simulate", "--structure", str(structure), "--n", "4", "--box", "24",
                     "--voxel-size", "10", "--snr", "1", "--mode", "fast", "--seed", "4",
                     "--out", str(tmp_path / "sim")]) == 0  # fmt: skip
    ones = np.ones((BOX,) * 3, np.float32)
    nan = ones.copy()
    nan[1, 2, 3] = np.nan
    cases = {
        "shape": (_mrc(tmp_path / "small.mrc", ones[:20, :20, :20]), "2",
                  "--focus-mask must be a (24, 24, 24) volume (the particles' box), got (20, 20, "
                  "20)"),
        "zero": (_mrc(tmp_path / "zero.mrc", 0 * ones), "2",
                 "--focus-mask is zero everywhere: it must mark the region to classify"),
        "nan": (_mrc(tmp_path / "nan.mrc", nan), "2",
                "--focus-mask holds 1 NaN or infinite voxels"),
        "one class": (_mrc(tmp_path / "ok.mrc", ones), "1",
                      "--focus-mask decides between classes: give --classes 2 or more"),
        "auto": ("auto", "2", "--focus-mask auto needs --local-search or --consensus: it "
                 "classifies from a consensus's poses"),
    }  # fmt: skip
    for name, (path, k, sentence) in cases.items():
        capsys.readouterr()
        rc = main(["run", str(tmp_path / "sim" / "particles.star"), "--out",
                   str(tmp_path / f"out_{name.replace(' ', '_')}"), "--classes", k,
                   "--focus-mask", str(path), "--no-data-check"])  # fmt: skip
        assert rc == 2, name
        errors = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
        suffix = "" if name in ("one class", "auto") else f" ({path})"
        assert errors == [f"faml: error: {sentence}{suffix}"], name


def test_the_automatic_focus_is_where_the_class_maps_differ():
    """Two maps that differ by a blob at one of two places: the mask holds both places (and
    little else: under 3% of the box), nothing far from them; one map is refused."""
    base = polnet_map("1bxn", BOX)
    maps = np.stack([base + 2.0 * _blob(BOX, 1.5, (0, 0, -1.5)),
                     base + 2.0 * _blob(BOX, 1.5, (0, 0, 1.5))])  # fmt: skip
    focus = focus_from_averages(maps)
    for dx in (-1.5, 1.5):
        z, y, x = np.rint(CENTRE + np.array([0, 0, dx])).astype(int)
        assert focus[z, y, x] > 0.9
    assert np.mean(focus > 0.5) < 0.03
    z, y, x = np.indices((BOX,) * 3)
    far = (z - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (x - CENTRE[2]) ** 2 > 8.0**2
    assert focus[far].max() < 1e-3
    with pytest.raises(ValueError, match="K >= 2"):
        focus_from_averages(maps[:1])
