"""How RELION 3.1's ``relion_reconstruct`` reads a CTF-premultiplied 3D particle set.

Usage::

    python benchmarks/relion31_premultiplied.py [--particles 20] [--box 24] [--noise 0]

Builds a planted premultiplied set: a blob at known poses, each particle
``D = C * T(blob) (+ noise of variance ∝ C)`` with a made-up CTF² sum ``C >= 0`` of its own
(a wedge times a CTF²-like radial modulation, up to about 30), and writes it in faml's
``particles.star`` (:func:`faml.io.star.write_particles_star`, RELION 3.1 layout). Then
``relion_reconstruct --ctf --3d_rot`` rebuilds the blob from several ways of giving the pair
to RELION, and the masked correlation with the blob says which one RELION 3.1 means:

- ``C, flag 1``: ``rlnCtfImage = C`` with ``rlnCtfDataAreCtfPremultiplied 1`` (RELION 4/5's
  meaning of a pseudo-subtomogram's weight);
- ``sqrt(C), flag 1``: the weight given as ``sqrt(C)``;
- ``C, flag 0``: the premultiplied data read as not premultiplied;
- ``sqrt(C), flag 0``: the same with ``sqrt(C)`` (does RELION read the flag at all?);
- ``D/C, C, flag 0``: CTF-corrected data ``D / C`` (where ``C > 0.01 max C``) with ``C``;
- ``D/C, sqrt(C), flag 0``.

RELION is Debian's ``relion`` package (3.1), installed as ``benchmarks/relion_reconstruct.py``
does when ``relion_reconstruct`` is not on the PATH (root needed).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import scipy.fft
from scipy.spatial.transform import Rotation

from faml.geometry.masks import soft_sphere
from faml.geometry.transform import transform_volume
from faml.geometry.wedge import wedge_mask
from faml.io.mrc import read_volume, write_volume
from faml.io.particles import ParticleTable
from faml.io.star import write_particles_star
from relion_reconstruct import ensure_relion, masked_correlation  # the sibling benchmark

VARIANTS = {  # name: (data, weight, flag)
    "C, flag 1": ("D", "C", 1),
    "sqrt(C), flag 1": ("D", "sqrtC", 1),
    "C, flag 0": ("D", "C", 0),
    "sqrt(C), flag 0": ("D", "sqrtC", 0),
    "D/C, C, flag 0": ("X", "C", 0),
    "D/C, sqrt(C), flag 0": ("X", "sqrtC", 0),
}


def blob(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:n, :n, :n]
    vol = np.zeros((n, n, n), dtype=np.float32)
    for _ in range(10):
        c = rng.uniform(n * 0.3, n * 0.7, 3)
        vol += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 3.0)
    return vol * soft_sphere(n, 0.4 * n, edge=2.0)


def ctf2_sum(n: int, rng: np.random.Generator) -> np.ndarray:
    """`(n, n, n//2+1)` a made-up CTF² sum: a random wedge times a CTF²-like modulation.

    Even in ``k`` (``C(k) = C(-k)``), so that no layout convention can hide in it.
    """
    lo, hi = rng.uniform(-65, -40), rng.uniform(40, 65)
    s2 = (
        np.fft.fftfreq(n)[:, None, None] ** 2
        + np.fft.fftfreq(n)[None, :, None] ** 2
        + np.fft.rfftfreq(n)[None, None, :] ** 2
    )
    modulation = 0.02 + np.cos(np.pi * rng.uniform(6, 14) * s2) ** 2
    return (rng.uniform(10, 30) * wedge_mask(n, (lo, hi)) * modulation).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=20)
    parser.add_argument("--box", type=int, default=24)
    parser.add_argument("--noise", type=float, default=0.0, help="noise sigma (per sqrt C)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    exe = ensure_relion()
    n, count, voxel = args.box, args.particles, 5.0
    rng = np.random.default_rng(args.seed)
    truth = blob(n, args.seed)
    rotations = Rotation.random(count, random_state=args.seed).as_matrix()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files: dict[str, list[str]] = {"D": [], "X": [], "C": [], "sqrtC": []}
        for i in range(count):
            c = ctf2_sum(n, rng)
            spectrum = scipy.fft.rfftn(transform_volume(truth, rotations[i], np.zeros(3)))
            d_ft = c * spectrum
            if args.noise:
                noise = scipy.fft.rfftn(rng.normal(size=(n, n, n)))
                d_ft = d_ft + args.noise * np.sqrt(c) * noise
            seen = c > 0.01 * c.max()
            x_ft = np.where(seen, d_ft / np.where(seen, c, 1.0), 0.0)
            for key, vol in (("D", d_ft), ("X", x_ft)):
                files[key].append(str(tmp / f"{key}_{i:03d}.mrc"))
                write_volume(files[key][-1], scipy.fft.irfftn(vol, s=(n, n, n)), voxel)
            for key, w in (("C", c), ("sqrtC", np.sqrt(c))):
                files[key].append(str(tmp / f"{key}_{i:03d}.mrc"))
                write_volume(files[key][-1], w, voxel)
        mask = soft_sphere(n, 0.45 * n - 2.0, edge=2.0)
        print(f"{count} particles {n}^3, noise {args.noise:g}; relion_reconstruct --ctf --3d_rot")
        for name, (data, weight, flag) in VARIANTS.items():
            table = ParticleTable(
                paths=tuple(files[data]),
                names=tuple(files[data]),
                box=n,
                voxel_size=voxel,
                tilt_ranges=np.zeros((count, 2)),
                weight_paths=(None,) * count,
                extra={"rlnCtfImage": tuple(files[weight])},
                ctf_premultiplied=bool(flag),
            )
            star = tmp / "set.star"
            write_particles_star(star, table, rotations, np.zeros((count, 3)), np.ones(count, int),
                                 np.ones(count))  # fmt: skip
            out = tmp / "relion.mrc"
            subprocess.run([exe, "--i", str(star), "--o", str(out), "--ctf", "--3d_rot"],
                           check=True, capture_output=True)  # fmt: skip
            rebuilt, _ = read_volume(out)
            score = masked_correlation(rebuilt, truth, mask)
            print(f"  {name:<22} correlation with the blob {score:.4f}")


if __name__ == "__main__":
    main()
