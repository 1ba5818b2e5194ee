"""RELION reads faml's poses as faml means them: ``relion_reconstruct`` at the true poses.

Usage::

    python benchmarks/relion_interop.py [--particles 100] [--snr 0.05]

Simulates the demo structure (``faml.simulate.fast``: random poses and shifts, ±60° wedge,
with the truth), writes the *true* poses through faml's STAR writer
(:func:`faml.io.star.write_particles_star`, RELION 3.1 layout, the wedge as
``rlnCtfImage``), runs ``relion_reconstruct --ctf --3d_rot`` (RELION 3.1.3 here) and scores
RELION's reconstruction, with no alignment, against faml's own average at the same poses
(:func:`faml.evaluate.oracle.oracle_average`, unfiltered) and against the truth: masked
correlation and the FSC's 0.5 / 0.143 resolutions. The same poses mirrored (``A^T``) give the
baseline a wrong reading of the poses would give. ``relion_reconstruct.py`` does the same
for the poses of a faml run.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import scipy.fft
import starfile

from faml.demo import demo_structure
from faml.evaluate.maps import masked_correlation
from faml.evaluate.oracle import oracle_average
from faml.geometry.wedge import wedge_mask
from faml.io.mrc import read_volume, write_volume
from faml.io.particles import from_mrc_files
from faml.io.star import write_particles_star
from faml.ml.fourier import fsc
from faml.simulate.fast import simulate_fast
from relion_reconstruct import ensure_relion


def _resolution(curve: np.ndarray, level: float, box: int, voxel: float) -> float:
    below = np.flatnonzero(curve[1:] < level)
    shell = (below[0] + 1) if below.size else box // 2
    return box * voxel / max(shell, 1)


def _score(name: str, a: np.ndarray, b: np.ndarray, voxel: float) -> str:
    box = a.shape[0]
    curve = fsc(scipy.fft.rfftn(a), scipy.fft.rfftn(b))
    return (
        f"| {name} | {masked_correlation(a, b):.3f} | {_resolution(curve, 0.5, box, voxel):.1f} "
        f"| {_resolution(curve, 0.143, box, voxel):.1f} |"
    )


def _relion(exe: str, table, rotations, shifts, folder: Path, wedge: str) -> np.ndarray:
    n = len(table)
    star = folder / "particles.star"
    write_particles_star(star, table, rotations, shifts, np.ones(n, int), np.ones(n))
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"]["rlnCtfImage"] = wedge
    starfile.write(blocks, star, overwrite=True)
    star.write_text(star.read_text().replace("\ndata_", "\n# version 30001\ndata_"))
    out = folder / "relion.mrc"
    subprocess.run(
        [exe, "--i", str(star), "--o", str(out), "--ctf", "--3d_rot"],
        check=True,
        capture_output=True,
    )
    return read_volume(out)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=100)
    parser.add_argument("--snr", type=float, default=0.05)
    args = parser.parse_args()
    exe = ensure_relion()
    structure, voxel = demo_structure()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = simulate_fast([structure], args.particles, tmp / "p", snr=args.snr,
                              voxel_size=voxel)  # fmt: skip
        table = from_mrc_files(tmp / "p")
        where = {Path(p).name: i for i, p in enumerate(truth.paths)}
        order = [where[Path(p).name] for p in table.paths]
        rot, shift = truth.rotations[order], truth.shifts[order]
        wedge = tmp / "wedge.mrc"
        write_volume(wedge, wedge_mask(table.box, (-60, 60), layout="full"), voxel)
        zeros = np.zeros(len(table), dtype=np.int64)
        faml = oracle_average(table, rot, shift, zeros, filtered=False).maps[0]
        relion = _relion(exe, table, rot, shift, tmp, str(wedge))
        mirrored = _relion(exe, table, rot.transpose(0, 2, 1), shift, tmp, str(wedge))
        print(f"{len(table)} particles, SNR {args.snr}, {table.box}^3 at {voxel} Å, true poses")
        print("| maps (no alignment) | masked corr. | FSC 0.5 (Å) | FSC 0.143 (Å) |")
        print("|---|---|---|---|")
        print(_score("RELION vs faml's average", relion, faml, voxel))
        print(_score("RELION vs truth", relion, structure, voxel))
        print(_score("faml's average vs truth", faml, structure, voxel))
        print(_score("RELION at A^T (wrong reading) vs truth", mirrored, structure, voxel))


if __name__ == "__main__":
    main()
