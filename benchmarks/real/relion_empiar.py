"""RELION 3.1 reference-free on the 40 real EMPIAR-10499 ribosomes, scored as faml's runs.

Usage::

    PYTHONPATH=src python benchmarks/real/relion_empiar.py --seeds 1,2 [--iterations 15]
        [--out benchmarks/real/results/relion-empiar]

The particles are faml's 3D reconstructions of the 2D tilt stacks (:mod:`faml.io.tiltstacks`),
given to RELION whitened, as the issue that asked for this comparison did: each particle
``X * sqrt(W)`` (in Fourier space) with ``sqrt(W)`` as its ``rlnCtfImage`` (FFTW half layout),
a RELION 3.1 STAR with ``_rlnImageDimensionality 3``. The command::

    relion_refine --ref None --K 1 --iter 15 --healpix_order 1 --oversampling 1
        --offset_range 5 --offset_step 2 --ini_high 60 --tau2_fudge 4 --particle_diameter 330
        --flatten_solvent --zero_mask --ctf --norm --scale --pad 2 --j 2 --random_seed S

Each run is kept in ``OUT/seedS`` and re-scored without rerunning when its last iteration is
there. Scores (:func:`benchmarks.real.empiar._score`): masked correlation with the set's own
reconstruction, FSC 0.5 with it, the share of particles within 15 degrees of the set's own
refined poses, wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
import starfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from empiar import VOXEL, _score  # noqa: E402

from empiar10499 import SET, STEM  # noqa: E402
from faml.geometry.euler import euler_to_matrix  # noqa: E402
from faml.io.mrc import read_volume, write_volume  # noqa: E402
from faml.io.relion5 import star_poses  # noqa: E402
from faml.io.star import read_particles_star  # noqa: E402


def write_particles(folder: Path) -> Path:
    """The whitened particles and weights, and their RELION 3.1 STAR file."""
    table = read_particles_star(
        SET / f"{STEM}_optimisation_set.star", cache_dir=folder / "faml_subtomograms"
    )
    images, weights = [], []
    for i in range(len(table)):
        vol, w = table.load(i)
        root = np.sqrt(np.maximum(w, 0.0)).astype(np.float32)
        white = scipy.fft.irfftn(scipy.fft.rfftn(vol) * root, s=vol.shape).astype(np.float32)
        images.append(folder / f"particle_{i:03d}.mrc")
        weights.append(folder / f"weight_{i:03d}.mrc")
        write_volume(images[-1], white, VOXEL)
        write_volume(weights[-1], root, VOXEL)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [VOXEL],
            "rlnImageSize": [table.box],
            "rlnImageDimensionality": [3],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    parts = pd.DataFrame(
        {
            "rlnImageName": [str(p.resolve()) for p in images],
            "rlnCtfImage": [str(p.resolve()) for p in weights],
            "rlnOpticsGroup": [1] * len(images),
        }
    )
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": parts}, star)
    star.write_text(star.read_text().replace("\ndata_", "\n# version 30001\ndata_"))
    return star


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--out", default=str(HERE / "results" / "relion-empiar"))
    args = parser.parse_args()
    exe = shutil.which("relion_refine")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "relion"], check=True)
        exe = shutil.which("relion_refine")
    out = Path(args.out)
    data = out / "particles"
    data.mkdir(parents=True, exist_ok=True)
    star = data / "particles.star"
    if not star.exists():
        star = write_particles(data)
    ref, _ = read_volume(SET / "warptools_test_box-32_angpix-12_reconstruct.mrc")
    true_rot, true_shift = star_poses(SET / f"{STEM}.star")
    for seed in (int(s) for s in args.seeds.split(",")):
        folder = out / f"seed{seed}"
        last = folder / f"run_it{args.iterations:03d}_data.star"
        wall = None
        if not last.exists():
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [
                exe, "--i", str(star), "--o", str(folder / "run"), "--ref", "None", "--K", "1",
                "--iter", str(args.iterations), "--healpix_order", "1", "--oversampling", "1",
                "--offset_range", "5", "--offset_step", "2", "--ini_high", "60",
                "--tau2_fudge", "4", "--particle_diameter", "330", "--flatten_solvent",
                "--zero_mask", "--ctf", "--norm", "--scale", "--pad", "2", "--j", "2",
                "--random_seed", str(seed),
            ]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            wall = time.perf_counter() - t0
            (folder / "wall_s.json").write_text(json.dumps(wall))
        elif (folder / "wall_s.json").exists():
            wall = json.loads((folder / "wall_s.json").read_text())
        parts = starfile.read(last, always_dict=True)["particles"]
        names = [Path(n).name for n in parts["rlnImageName"]]
        order = np.argsort(names)
        angles = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[order]
        origins = parts[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
        shifts = -origins[order] / VOXEL
        vol, _ = read_volume(folder / f"run_it{args.iterations:03d}_class001.mrc")
        row = _score(vol, ref, euler_to_matrix(angles), shifts, true_rot, true_shift)
        row.update(seed=seed, wall_s=wall)
        (folder / "row.json").write_text(json.dumps(row))
        print(
            f"| RELION | {seed} | {row['corr']:.3f} | {row['fsc05']:.1f} | "
            f"{100 * row['within15']:.0f}% | {wall if wall is None else round(wall)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
