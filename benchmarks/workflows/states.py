"""Two similar states from a consensus: focused classification (issue 22, item 3, (c)).

Usage::

    PYTHONPATH=src python benchmarks/workflows/states.py [--seeds 1,2] [--out DIR]
        [--rows focused,random,nofocus,free] [--relion]

The set: the two 50S assembly states ``tomodrgn_10076_class{D,E}_32.mrc`` (32^3 at 13.1 Å,
correlation 0.91 with each other), 75 particles each, crowded (``faml.simulate.crowded``:
neighbours, tilt series with CTF, dose and noise, phase flip, back-projection, picking
errors), SNR 0.02, +-60 degrees, simulation seed 1. The two maps are given to the simulator
as they are (one grid, one frame): ``faml simulate --structure`` centres each map on its own
centre of mass, which moves the two states apart by about a voxel (their correlation in the
simulation fell to 0.73) and would make the benchmark easier than the states are.

Steps, each cached in ``OUT`` (a later call re-scores, it does not rerun):

1. ``sim``: the simulation;
2. ``consensus``: ``faml run sim/particles.star --particle-mask --particle-diameter 280
   --workers 2 --seed 1`` (K = 1, reference-free);
3. ``focus.mrc``: the focus mask, derived from the truths' difference as a user would draw it
   around the region that differs in ChimeraX: ``|D - E|`` smoothed (Gaussian, 1 voxel),
   thresholded at 0.3 of its maximum, its edge softened (Gaussian, 1 voxel, x2, clipped to
   1), then placed on the consensus map by the transform that fits truth D onto it
   (:func:`faml.evaluate.maps.align_map`);
4. the runs, scored against the truth classes (F1 after the best matching of class labels,
   confusion), each class map's correlation with each truth inside the focus mask (the
   truths placed on the class map by the transform that fits truth D onto it) and wall time:

   - ``focused``: ``faml run consensus/particles.star --reference consensus/class_001.mrc
     --local-search 15 --classes 2 --focus-mask focus.mrc --particle-mask
     --particle-diameter 280 --workers 2 --seed S`` (classes from the split,
     :mod:`faml.ml.split`);
   - ``random``: the same with the classes started from random subsets
     (``Tuning.class_start = "random"``: RELION's Class3D start);
   - ``nofocus``: the same as ``focused`` without ``--focus-mask`` (the split in the
     reference mask);
   - ``free``: reference-free ``--classes 2`` on the simulation's particles (global search);
   - ``relion`` (``--relion``; cached in ``OUT/relion/row.json``, printed without RELION):
     RELION 3.1 Class3D from the consensus poses, the command in ``README.md``.

Writes ``OUT/results.json`` and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from faml.evaluate.classes import match_classes
from faml.evaluate.maps import align_map, masked_correlation
from faml.geometry.transform import transform_volume
from faml.io.mrc import read_volume, write_volume
from faml.io.references import read_references
from faml.io.relion5 import star_priors
from faml.io.star import read_particles_star
from faml.ml.config import RunConfig, Tuning
from faml.ml.engine import run
from faml.simulate import CrowdedSettings, SimulationSettings, simulate_crowded
from faml.simulate.dataset import read_truth

HERE = Path(__file__).resolve().parent
MAPS = HERE.parents[2] / "shared" / "data" / "structures" / "maps" / "other"
STATES = ("tomodrgn_10076_classD_32.mrc", "tomodrgn_10076_classE_32.mrc")
VOXEL, N_EACH, SNR, DIAMETER, LOCAL_DEG = 13.1, 75, 0.02, 280.0, 15.0


def simulate(out: Path) -> Path:
    """The crowded two-state set (simulation seed 1), the maps in their common frame."""
    sim = out / "sim"
    if not (sim / "truth" / "truth.json").exists():
        maps = [read_volume(MAPS / name)[0].astype(np.float32) for name in STATES]
        simulate_crowded(
            maps, [n.removesuffix(".mrc") for n in STATES], N_EACH, sim,
            SimulationSettings(voxel_size=VOXEL, snr=SNR), CrowdedSettings(), seed=1,
            workers=2, overwrite=True,
        )  # fmt: skip
    return sim


def faml_cli(args: list[str], log: Path) -> float:
    """``faml ARGS`` in a subprocess (logged); its wall time."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "faml", *args], check=True, stdout=fh, stderr=fh)
    return time.perf_counter() - t0


def consensus(out: Path, sim: Path) -> Path:
    folder = out / "consensus"
    if not (folder / "run.json").exists():
        wall = faml_cli(
            ["run", str(sim / "particles.star"), "--out", str(folder), "--particle-mask",
             "--particle-diameter", f"{DIAMETER:g}", "--workers", "2", "--seed", "1",
             "--overwrite"], out / "consensus.log",
        )  # fmt: skip
        (folder / "wall_s.json").write_text(json.dumps(wall))
    return folder


def focus_mask(out: Path, truth, consensus_map: np.ndarray) -> np.ndarray:
    """The focus mask on the consensus (module docstring, step 3), written to focus.mrc."""
    path = out / "focus.mrc"
    if path.exists():
        return read_volume(path)[0]
    diff = gaussian_filter(np.abs(truth.maps[0] - truth.maps[1]).astype(np.float64), 1.0)
    region = gaussian_filter((diff > 0.3 * diff.max()).astype(np.float64), 1.0)
    region = np.clip(2.0 * region, 0.0, 1.0).astype(np.float32)
    fit = align_map(consensus_map, truth.maps[0], lowpass_angstrom=40.0, voxel_size=VOXEL)
    placed = np.clip(transform_volume(region, fit.rotation, fit.shift, order=1), 0.0, 1.0)
    write_volume(path, placed, VOXEL)
    return placed


def truth_order(table, truth) -> np.ndarray:
    """Index into the truth of each particle of ``table`` (by file name)."""
    where = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    return np.array([where[Path(p).name] for p in table.paths])


def score(classes: np.ndarray, maps: np.ndarray, truth, order: np.ndarray) -> dict:
    """F1 (best matching), confusion, per class the focus-masked correlation with each truth."""
    true = truth.classes[order]
    c = match_classes(np.asarray(classes), true, maps.shape[0], 2)
    diff = gaussian_filter(np.abs(truth.maps[0] - truth.maps[1]).astype(np.float64), 1.0)
    region = np.clip(2.0 * gaussian_filter((diff > 0.3 * diff.max()).astype(float), 1.0), 0, 1)
    corr = []
    for vol in maps:
        fit = align_map(vol, truth.maps[0], lowpass_angstrom=40.0, voxel_size=VOXEL)
        placed = [transform_volume(t, fit.rotation, fit.shift, order=3) for t in truth.maps]
        where = np.clip(transform_volume(region.astype(np.float32), fit.rotation, fit.shift), 0, 1)
        corr.append([round(masked_correlation(vol, p, where), 3) for p in placed])
    return {"f1": float(c.mean_f1), "confusion": c.confusion.tolist(),
            "matched_true_class": [int(j) + 1 for j in c.matching],
            "focus_corr": corr}  # fmt: skip


def faml_row(name: str, out: Path, seed: int, truth, cons: Path, focus: np.ndarray, sim: Path):
    folder = out / f"{name}-seed{seed}"
    if name == "free":
        table = read_particles_star(sim / "particles.star")
        config = RunConfig(classes=2, seed=seed, particle_mask_radius=_radius(table))
        refs, mask_focus = None, None
    else:
        star = cons / "particles.star"
        table = read_particles_star(star)
        rotations, shifts = star_priors(str(star))
        from dataclasses import replace

        table = replace(table, prior_rotations=rotations, prior_shifts=shifts)
        refs = read_references([str(cons / "class_001.mrc")], box=table.box,
                               voxel_size=table.voxel_size, classes=2, lowpass=60.0,
                               mask=_default_mask(table.box))  # fmt: skip
        tuning = Tuning(class_start="random" if name == "random" else "split")
        config = RunConfig(classes=2, seed=seed, particle_mask_radius=_radius(table),
                           references=1, local_search_deg=LOCAL_DEG,
                           focused=name != "nofocus", tuning=tuning)  # fmt: skip
        mask_focus = None if name == "nofocus" else focus
    t0 = time.perf_counter()
    result = run(table, folder, config, workers=2, references=refs, focus_mask=mask_focus)
    wall = time.perf_counter() - t0
    row = score(result.classes, result.maps, truth, truth_order(table, truth))
    row.update(wall_s=round(wall, 1), iterations=result.n_iterations, seed=seed)
    return row


def _radius(table) -> float:
    """``--particle-diameter 280`` as the CLI turns it into the particle mask's radius."""
    return float(min(max((DIAMETER / 2 / table.voxel_size + 3.0) / table.box, 0.1), 0.6))


def _default_mask(box: int) -> np.ndarray:
    from faml.geometry.masks import reference_mask

    return reference_mask(box, VOXEL, mask=None, diameter=DIAMETER)


def table_md(results: dict) -> str:
    lines = ["| run | seed | F1 | confusion (pred x true) | focus corr. class 1 (D, E) | "
             "focus corr. class 2 (D, E) | wall (s) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results.items():
        for r in rows:
            corr = r.get("focus_corr") or [["-", "-"], ["-", "-"]]
            label = f"{name} ({r['variant']})" if "variant" in r else name
            lines.append(
                f"| {label} | {r.get('seed', '-')} | {r['f1']:.3f} | {r['confusion']} | "
                f"{corr[0]} | {corr[1]} | {r.get('wall_s', '-')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--rows", default="focused,random,nofocus,free")
    parser.add_argument("--relion", action="store_true", help="run RELION if not cached")
    parser.add_argument("--out", default=str(HERE / "results" / "states"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = simulate(out)
    truth = read_truth(sim)
    cons = consensus(out, sim)
    focus = focus_mask(out, truth, read_volume(cons / "class_001.mrc")[0])
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    for name in filter(None, args.rows.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            done = [r for r in results.get(name, []) if r.get("seed") == seed]
            if done:
                continue
            row = faml_row(name, out, seed, truth, cons, focus, sim)
            results.setdefault(name, []).append(row)
            print(name, row, flush=True)
            store.write_text(json.dumps(results, indent=2))
    relion = HERE / "relion_states_row.json"
    if args.relion:
        from relion_states import relion_row  # the sibling script

        relion_row(out, cons, truth, relion)
    if relion.exists():
        results["relion"] = json.loads(relion.read_text())
    (out / "table.md").write_text(table_md(results))
    print(table_md(results))


if __name__ == "__main__":
    main()
