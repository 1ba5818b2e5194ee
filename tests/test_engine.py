"""The FAML / FA engine end to end on planted signals: map, poses, classes, resume, workers."""

import json
import logging
import shutil

import numpy as np
import pytest
import starfile

from conftest import make_dataset, transform_reference
from faml.align import fast_align
from faml.geometry.euler import euler_to_matrix
from faml.geometry.rotations import rotation_distance
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig, Tuning
from faml.ml.em import hard_chunk
from faml.ml.engine import run
from faml.ml.fourier import fsc
from faml.ml.mstep import compensated_mean
from faml.ml.tasks import split_halves


@pytest.fixture(scope="module")
def k1_data(tmp_path_factory, ribosome32):
    folder = tmp_path_factory.mktemp("k1") / "particles"
    truth = make_dataset(folder, [ribosome32], 40, 1.0, seed=11, voxel=21.0)
    return folder, truth


def align_map_to_truth(vol, truth):
    """The global transform G (rotation, shift) with vol ~ T_G(truth)."""
    ones = np.ones((vol.shape[0],) * 2 + (vol.shape[0] // 2 + 1,), np.float32)
    c = fast_align(vol, ones, truth, max_candidates=5)[0]
    return c.rotation, c.shift


def test_k1_recovers_map_and_poses(k1_data, ribosome32, tmp_path):
    folder, (rots, _, _) = k1_data
    table = from_mrc_files(folder)
    out = tmp_path / "run"
    result = run(
        table, out, RunConfig(classes=1, iterations=6, seed=1, tuning=Tuning(verify=False))
    )
    vol = result.maps[0]
    g_rot, g_shift = align_map_to_truth(vol, ribosome32)
    # FSC of the map against the truth placed the same way: > 0.9 up to half Nyquist.
    placed = transform_reference(ribosome32, g_rot, g_shift)
    curve = fsc(np.fft.rfftn(vol), np.fft.rfftn(placed))
    assert np.all(curve[1 : 32 // 4 + 1] > 0.9), np.round(curve, 3)
    # Every particle's rotation within 10 degrees, read back from the STAR file (RELION's
    # convention): particle = T_R(map) and map = T_G(truth), so R_truth = R_star @ G.
    parts = starfile.read(out / "particles.star", always_dict=True)["particles"]
    angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    err = rotation_distance(euler_to_matrix(angles) @ g_rot, rots)
    assert np.all(err < 10.0), np.sort(err)[-5:]
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["seed"] == 1 and info["iterations"][0]["iteration"] == 0
    assert abs(sum(info["iterations"][-1]["alpha"]) - 1.0) < 1e-9
    assert np.all((result.max_probability > 0) & (result.max_probability <= 1.0 + 1e-12))


def test_resume_after_kill_matches_uninterrupted(k1_data, tmp_path):
    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(24))
    cfg = RunConfig(
        classes=1,
        iterations=4,
        seed=4,
        tuning=Tuning(stop_pose_change_deg=0.0, starts=2, start_iterations=2),
    )
    full = run(table, tmp_path / "full", cfg)
    # Killed during iteration 4 (after the starts): 3 complete, 4 half-written.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    (part / "iterations" / "004" / "manifest.json").unlink()
    (part / "iterations" / "004" / "model.npz").write_bytes(b"truncated")
    resumed = run(table, part, cfg, resume=True)
    np.testing.assert_array_equal(resumed.maps, full.maps)
    np.testing.assert_array_equal(resumed.rotations, full.rotations)
    # Killed during the second start's second iteration: the starts resume, same answer.
    early = tmp_path / "early"
    shutil.copytree(tmp_path / "full", early)
    shutil.rmtree(early / "iterations")
    (early / "starts" / "02" / "iterations" / "002" / "manifest.json").unlink()
    resumed = run(table, early, cfg, resume=True)
    np.testing.assert_array_equal(resumed.maps, full.maps)
    np.testing.assert_array_equal(resumed.rotations, full.rotations)


def test_resume_skips_a_checkpoint_whose_checksum_fails_and_removes_temporaries(
    k1_data, tmp_path, caplog
):
    """One byte of the last iteration's model.npz changed: its manifest's sha256 no longer
    matches, so --continue warns, resumes from the iteration before and ends as the
    undisturbed run; a temporary file left by an interrupted write is removed."""
    import logging

    from faml.ml.rundir import last_complete_iteration

    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(16))
    cfg = RunConfig(
        classes=1, iterations=3, seed=2, tuning=Tuning(stop_pose_change_deg=0.0, starts=1)
    )
    full = run(table, tmp_path / "full", cfg)
    manifest = json.loads((tmp_path / "full" / "iterations" / "003" / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"model.npz", "particles.npz", "class_001.mrc"}
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    model = part / "iterations" / "003" / "model.npz"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    stale = part / "iterations" / "003" / ".class_001.mrc.abcd1234.tmp"
    stale.write_bytes(b"half a map")
    with caplog.at_level(logging.INFO, logger="faml"):
        assert last_complete_iteration(part) == part / "iterations" / "002"
        resumed = run(table, part, cfg, resume=True)
    assert "does not match its checksum" in caplog.text
    assert "continuing after iteration 2" in caplog.text
    assert "interrupted write" in caplog.text and not stale.exists()
    np.testing.assert_array_equal(resumed.maps, full.maps)
    np.testing.assert_array_equal(resumed.rotations, full.rotations)
    assert last_complete_iteration(part) == part / "iterations" / "003"


def test_the_best_fitting_start_continues(k1_data, tmp_path):
    """Three random starts: each is checkpointed, they differ, and the run continues from the
    one with the highest log-likelihood at the common band (recorded in run.json)."""
    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(24))
    cfg = RunConfig(
        iterations=3,
        seed=2,
        tuning=Tuning(starts=3, start_iterations=2, start_band=5, fa_iterations=0),
    )
    result = run(table, tmp_path / "run", cfg)
    out = tmp_path / "run"
    entries = json.loads((out / "run.json").read_text())["iterations"]
    chosen = [e for e in entries if "starts_fit" in e]
    assert len(chosen) == 1 and chosen[0]["iteration"] == 2
    fits = chosen[0]["starts_fit"]
    assert len(fits) == 3 and len(set(fits)) == 3
    assert chosen[0]["start_chosen"] == int(np.argmax(fits)) + 1
    averages = []
    for s in (1, 2, 3):
        start = out / "starts" / f"{s:02d}" / "iterations"
        assert (start / "002" / "manifest.json").exists()
        with np.load(start / "002" / "model.npz") as z:
            assert int(z["band"]) == 5  # held at start_band, whatever the FSC said
            averages.append(z["averages"])
            entry = json.loads((start / "002" / "manifest.json").read_text())["history"][-1]
            assert entry["fit"] == fits[s - 1]
            assert entry["log_likelihood"] == pytest.approx(fits[s - 1], rel=1e-9)
    assert not np.allclose(averages[0], averages[1])  # different random starts
    with np.load(out / "iterations" / "002" / "model.npz") as z:
        np.testing.assert_array_equal(z["averages"], averages[chosen[0]["start_chosen"] - 1])
    assert result.state.iteration == 3


def test_workers_give_the_same_answer(k1_data, tmp_path):
    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(16))
    cfg = RunConfig(classes=1, iterations=2, seed=3)
    serial = run(table, tmp_path / "s", cfg, workers=1, batch_size=4)
    parallel = run(table, tmp_path / "p", cfg, workers=2, batch_size=4)
    np.testing.assert_array_equal(serial.maps, parallel.maps)
    np.testing.assert_array_equal(serial.rotations, parallel.rotations)


def test_fa_runs_and_is_hard(k1_data, tmp_path, caplog):
    """FA's average is the wedge-compensated mean of the particles placed at their best
    poses, each with weight 1: recomputed from the returned poses, the same sums."""
    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(12))
    cfg = RunConfig(method="fa", iterations=2, seed=1, tuning=Tuning(starts=1))
    with caplog.at_level(logging.WARNING, logger="faml"):
        result = run(table, tmp_path / "fa", cfg)
    assert np.isfinite(result.maps).all()
    halves = split_halves(len(table), cfg.seed)
    items = [(i, 0, result.rotations[i], result.shifts[i]) for i in range(len(table))]
    _, stats = hard_chunk(table, items, 1, halves)
    S, W = stats.dense()
    hard = compensated_mean(S[:, 0].sum(0), W[:, 0].sum(0), stats.level[:, 0].sum(0))
    np.testing.assert_allclose(result.state.averages[0], hard, rtol=1e-9, atol=1e-9)
    # two iterations, too few to settle: the result says so, and so does the log
    assert not result.converged and result.n_iterations == 2
    assert "stopped at --iterations 2 before it converged" in caplog.text
    assert np.isnan(result.log_likelihood).all()  # FA: no likelihood


def test_more_classes_than_particles_is_refused(k1_data, tmp_path):
    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(3))
    with pytest.raises(ValueError, match="more than the 3 particles"):
        run(table, tmp_path / "x", RunConfig(classes=4))


def test_k2_separates_two_structures(tmp_path):
    """Two distinct structures (RuBisCO 1BXN, p97 3CF3), 20 particles each, SNR 1: F1 >= 0.98."""
    from conftest import polnet_map

    structures = [polnet_map("1bxn"), polnet_map("3cf3")]
    _, _, classes = make_dataset(tmp_path / "p", structures, 20, 1.0, seed=5)
    table = from_mrc_files(tmp_path / "p")
    cfg = RunConfig(classes=2, iterations=8, seed=2, tuning=Tuning(verify=False))
    result = run(table, tmp_path / "run", cfg)
    pred = result.classes
    if np.mean(pred == classes) < 0.5:  # the labels of classes are arbitrary
        pred = 1 - pred
    f1 = []
    for k in range(2):
        tp = np.sum((pred == k) & (classes == k))
        f1.append(2 * tp / (np.sum(pred == k) + np.sum(classes == k)))
    assert min(f1) >= 0.98, f1
    assert abs(result.state.alpha.sum() - 1.0) < 1e-9


def test_responsibilities_are_normalised_in_the_log_domain():
    from faml.ml.em import responsibilities

    log_e = np.array([-1.0e5, -1.0e5 - 3.0, -2.0e5, -1.0e5 - 0.5])
    g, total = responsibilities(log_e)
    assert np.isfinite(total) and np.all(np.isfinite(g))
    assert g.sum() == pytest.approx(1.0, abs=1e-12)
    assert g[2] == 0.0 and g[0] > g[3] > g[1]


def test_voronoi_weights():
    from faml.geometry.rotations import random_rotations as rr
    from faml.ml.voronoi import rng_for, voronoi_weights

    rots = rr(5, 1)
    shifts = np.zeros((5, 3))
    w = voronoi_weights(rots, shifts, rng_for(0, 1, 2, 0), 20000)
    assert w.sum() == pytest.approx(1.0) and np.all(w > 0)
    # the same seed key gives the same weights, whatever else ran before
    np.testing.assert_array_equal(w, voronoi_weights(rots, shifts, rng_for(0, 1, 2, 0), 20000))
    # two candidates alone: each owns about half of SO(3)
    w2 = voronoi_weights(np.stack([np.eye(3), rots[0]]), np.zeros((2, 3)), rng_for(0, 0, 0, 0))
    assert abs(w2[0] - 0.5) < 0.05


def test_sigkill_mid_run_then_continue(k1_data, tmp_path):
    """A `faml run` killed (SIGKILL) during its first start, then `--continue`: same maps and poses
    as an uninterrupted run; no temporary file left in the output folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from faml.io.mrc import read_volume

    folder, _ = k1_data
    args = [str(folder), "--iterations", "3", "--seed", "6", "--candidates", "10", "--starts",
            "2", "--start-iterations", "2", "--no-verify"]  # fmt: skip
    cmd = [sys.executable, "-m", "faml.cli", "run"]
    subprocess.run([*cmd, *args, "--out", str(tmp_path / "full")], check=True,
                   capture_output=True)  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, *args, "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (killed / "starts" / "01" / "iterations" / "001" / "manifest.json").exists():
        assert time.time() < deadline and proc.poll() is None, "run ended before iteration 1"
        time.sleep(0.02)
    # the first start's iteration 1 is saved: the run is inside its iteration 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "particles.star").exists()
    subprocess.run([*cmd, *args, "--out", str(killed), "--continue"], check=True,
                   capture_output=True)  # fmt: skip
    a, _ = read_volume(tmp_path / "full" / "class_001.mrc")
    b, _ = read_volume(killed / "class_001.mrc")
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "full" / "particles.star").read_text().split("\n")[3:] == (
        killed / "particles.star"
    ).read_text().split("\n")[3:]
    assert not list(killed.rglob("*.tmp"))


def test_fa_iterations_come_first_then_the_likelihood(k1_data, tmp_path):
    """With fa_iterations=2 the first two iterations are FA (hard, no likelihood), the third
    is FAML (a log-likelihood); no early stop during the FA ones."""
    folder, _ = k1_data
    table = from_mrc_files(folder).subset(np.arange(16))
    cfg = RunConfig(
        iterations=3, seed=1, tuning=Tuning(starts=1, fa_iterations=2, stop_pose_change_deg=180.0)
    )
    result = run(table, tmp_path / "run", cfg)
    entries = json.loads((tmp_path / "run" / "run.json").read_text())["iterations"]
    assert [e["iteration"] for e in entries] == [0, 1, 2, 3]
    assert entries[1]["log_likelihood"] is None and entries[2]["log_likelihood"] is None
    assert entries[3]["log_likelihood"] < 0.0
    assert result.state.iteration == 3
    with pytest.raises(ValueError, match="fa_iterations"):
        RunConfig(tuning=Tuning(fa_iterations=-1))


@pytest.mark.slow
def test_kill_trials_then_continue_match_the_undisturbed_run(tmp_path):
    """Three trials of benchmarks/reliability/kill_trials.py: `faml run` SIGKILLed at a seeded
    random moment, then --continue: no half-written file, no temporary file left, same maps
    and particles.star as the undisturbed run."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability" / "kill_trials.py"
    spec = importlib.util.spec_from_file_location("kill_trials", script)
    kill_trials = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_trials)
    rows = kill_trials.trials(3, seed=1, work=tmp_path, log=lambda line: None)
    for row in rows:
        assert row["equal"], row
        assert not row["half_written"], row
        assert not row["temp_files_after_continue"], row
