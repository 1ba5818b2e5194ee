"""Build the demo structure shipped in ``src/faml/data/demo_structure.mrc``.

The map is computed from the atomic model of PDB 1U6G (Cand1-Cul1-Roc1, an asymmetric
complex; PDB coordinates are CC0) read from the project's shared folder: every non-hydrogen
atom is a 3D Gaussian weighted by its atomic number, on a 32^3 grid of 8 A voxels, centred
on the model's centre of mass and low-passed to about 20 A. numpy only, so that the package
needs no PDB reader for its demo.

    python tools/make_demo_structure.py ../shared/data/structures/atomic/1u6g.pdb
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from faml.io.mrc import write_volume

Z = {"C": 6, "N": 7, "O": 8, "S": 16, "P": 15, "SE": 34, "ZN": 30, "MG": 12}


def atoms(pdb: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, weight = [], []
    for line in pdb.read_text().splitlines():
        if not line.startswith(("ATOM", "HETATM")) or line[17:20] == "HOH":
            continue
        element = line[76:78].strip().upper() or line[12:14].strip().upper()
        if element == "H":
            continue
        xyz.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
        weight.append(Z.get(element, 6))
    return np.asarray(xyz), np.asarray(weight, dtype=np.float64)


def density(xyz, weight, box=32, voxel=8.0, sigma_angstrom=6.0) -> np.ndarray:
    centre = (xyz * weight[:, None]).sum(0) / weight.sum()
    grid = (xyz - centre) / voxel + box // 2  # (x, y, z) voxel coordinates
    vol = np.zeros((box,) * 3)
    idx = np.floor(grid).astype(int)
    frac = grid - idx
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (
                    (frac[:, 2] if dz else 1 - frac[:, 2])
                    * (frac[:, 1] if dy else 1 - frac[:, 1])
                    * (frac[:, 0] if dx else 1 - frac[:, 0])
                )
                np.add.at(vol, (idx[:, 2] + dz, idx[:, 1] + dy, idx[:, 0] + dx), weight * w)
    k = np.fft.fftfreq(box)
    kx = np.fft.rfftfreq(box)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    s = sigma_angstrom / voxel
    vol = np.fft.irfftn(
        np.fft.rfftn(vol) * np.exp(-2 * np.pi**2 * s**2 * k2), s=vol.shape, axes=(0, 1, 2)
    )
    return (vol / vol.max()).astype(np.float32)


def main() -> None:
    pdb = Path(sys.argv[1])
    out = Path(__file__).resolve().parents[1] / "src" / "faml" / "data" / "demo_structure.mrc"
    write_volume(out, density(*atoms(pdb)), 8.0)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
