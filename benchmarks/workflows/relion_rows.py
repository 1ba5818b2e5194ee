"""RELION 3.1 ``relion_refine`` rows for the workflow benchmarks, scored as ``run.py`` scores faml.

Shared by ``relion.py`` (issue 22 (a): priors, a 60 Å reference, a featureless start) and
``atomic_reference.py`` (issue 22 (b): a reference from an atomic model). The particles are
the simulation's own (``sim/particles.star``: phase-flipped subtomograms, each tomogram's 3D
``|CTF| x MTF x exposure`` weight as ``rlnCtfImage``), written again by faml's STAR writer
(:func:`faml.io.star.write_particles_star`, RELION 3.1 layout, absolute paths) as
``benchmarks/real/crowded.py`` gives them to RELION. Poses, when given, go in as
``rlnAngleRot/Tilt/Psi`` + ``rlnOrigin*Angst`` and again as RELION's priors
(``rlnAngle*Prior``, ``rlnOrigin*PriorAngst``) so that ``--sigma_ang`` centres each
particle's local search and its Gaussian prior on them.

RELION 3.1's auto-refine (``--auto_refine --split_random_halves``) stops at once without MPI
("Cannot split data into random halves without using MPI!"), and these machines run RELION
without MPI, so every row is the Refine3D-like run RELION 3.1 allows in one process: 3D
classification with one class (``--K 1``) for ``ITERATIONS`` iterations at a fixed angular
sampling (``COMMON``). Each run goes into ``OUT/NAME`` with a wall limit; a run past the
limit is stopped and scored at its last complete iteration, which the row says
(``finished: false``). A run already there is re-scored, not rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import starfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import BOX, MASK, VOXEL, score  # noqa: E402  (the workflow benchmark's scoring)

from faml.geometry.euler import euler_to_matrix  # noqa: E402
from faml.io.mrc import read_volume  # noqa: E402
from faml.io.star import read_particles_star, write_particles_star  # noqa: E402
from relion_reconstruct import ensure_relion  # noqa: E402

#: RELION's particle mask: the diameter of faml's particle mask (0.38 of the box, radius).
DIAMETER_A = round(2 * MASK * BOX * VOXEL)
LIMIT_S = 900.0  # the most wall time one relion_refine run gets

ITERATIONS = 10  # fixed: no auto-refine (below); the faml rows ended after 10-15
#: Options every row shares (no MPI, so no auto-refine: 3D classification with K = 1,
#: ``benchmarks/real/crowded.py``'s RELION settings; 2 threads; everything in memory).
COMMON = [
    "--K", "1", "--iter", str(ITERATIONS), "--tau2_fudge", "4",
    "--particle_diameter", str(DIAMETER_A), "--flatten_solvent", "--zero_mask", "--ctf",
    "--norm", "--scale", "--pad", "2", "--sym", "C1",
    "--j", "2", "--pool", "10", "--dont_combine_weights_via_disc", "--random_seed", "1",
]  # fmt: skip

_POSE = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
         "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]  # fmt: skip
_PRIOR = ["rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior",
          "rlnOriginXPriorAngst", "rlnOriginYPriorAngst", "rlnOriginZPriorAngst"]  # fmt: skip


def write_star(sim: Path, path: Path, rotations=None, shifts=None) -> Path:
    """The simulation's particles as a RELION 3.1 STAR; with poses, also as priors."""
    table = read_particles_star(sim / "particles.star")
    n = len(table)
    rot = np.tile(np.eye(3), (n, 1, 1)) if rotations is None else rotations
    shift = np.zeros((n, 3)) if shifts is None else shifts
    path.parent.mkdir(parents=True, exist_ok=True)
    write_particles_star(path, table, rot, shift, np.ones(n, int), np.ones(n))
    blocks = starfile.read(path, always_dict=True)
    parts = blocks["particles"].drop(columns=["rlnClassNumber", "rlnMaxValueProbDistribution"])
    if rotations is None:
        parts = parts.drop(columns=_POSE)
    else:
        for pose, prior in zip(_POSE, _PRIOR, strict=True):
            parts[prior] = parts[pose]
    blocks["particles"] = parts
    starfile.write(blocks, path, overwrite=True)
    path.write_text(path.read_text().replace("\ndata_", "\n# version 30001\ndata_"))
    return path


def reconstruct(star: Path, out: Path) -> Path:
    """``relion_reconstruct --ctf --3d_rot`` at the STAR file's poses (the average at them)."""
    exe = ensure_relion()
    subprocess.run([exe, "--i", str(star), "--o", str(out), "--ctf", "--3d_rot"],
                   check=True, capture_output=True)  # fmt: skip
    return out


def refine(star: Path, ref: Path, folder: Path, options: list[str], limit_s: float = LIMIT_S):
    """``relion_refine`` (``COMMON`` + ``options``) into ``folder/run``: wall s, finished."""
    done = folder / f"run_it{ITERATIONS:03d}_class001.mrc"
    record = folder / "wall_s.json"
    if done.exists() or record.exists():
        kept = json.loads(record.read_text()) if record.exists() else {}
        return kept.get("wall_s"), kept.get("finished", done.exists()), kept.get("command")
    ensure_relion()
    exe = shutil.which("relion_refine")
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--i", str(star), "--o", str(folder / "run"), "--ref", str(ref), *COMMON,
           *options]  # fmt: skip
    t0 = time.perf_counter()
    with open(folder / "relion.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            rc = None
    wall = time.perf_counter() - t0
    if rc not in (0, None):
        raise RuntimeError(f"relion_refine failed ({rc}); see {folder / 'relion.log'}")
    finished = done.exists()
    command = " ".join(Path(c).name if c == exe else c for c in cmd)
    record.write_text(json.dumps({"wall_s": wall, "finished": finished, "command": command}))
    return wall, finished, command


def _last_iteration(folder: Path) -> int:
    maps = {p.name[:9] for p in folder.glob("run_it[0-9][0-9][0-9]_class001.mrc")}
    stars = {p.name[:9] for p in folder.glob("run_it[0-9][0-9][0-9]_data.star")}
    its = sorted(int(name[6:9]) for name in maps & stars)
    if not its or its[-1] == 0:
        raise RuntimeError(f"{folder}: no complete relion_refine iteration")
    return its[-1]


def result_of(folder: Path, truth) -> tuple[SimpleNamespace, int]:
    """The run's last complete iteration: its map and poses in the truth's particle order,
    as ``run.score`` takes them."""
    last = _last_iteration(folder)
    vol = read_volume(folder / f"run_it{last:03d}_class001.mrc")[0]
    parts = starfile.read(folder / f"run_it{last:03d}_data.star", always_dict=True)["particles"]
    position = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    order = np.argsort([position[Path(n).name] for n in parts["rlnImageName"]])
    angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[order]
    origins = parts[_POSE[3:]].to_numpy()[order]
    result = SimpleNamespace(
        maps=[vol.astype(np.float32)],
        rotations=euler_to_matrix(angles),
        shifts=-origins / truth.voxel_size,
        verdict=SimpleNamespace(trusted=None),
    )
    return result, last


def relion_row(star, ref, folder: Path, options, truth, subsets=None, limit_s=LIMIT_S) -> dict:
    """Run (or re-score) one RELION row: ``run.score``'s figures, wall time, the command."""
    wall, finished, command = refine(star, ref, folder, options, limit_s)
    result, last = result_of(folder, truth)
    row = score(result, truth, subsets)
    row.update(wall_s=wall, iterations=last, finished=finished, command=command)
    return row
