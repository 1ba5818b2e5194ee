"""faml's particles.star in RELION: ``relion_reconstruct`` rebuilds faml's average.

Usage::

    python benchmarks/relion_reconstruct.py [--particles 100] [--snr 0.05]

Simulates the demo data set, runs ``faml run`` (K = 1), writes the +-60 degree wedge as a
full-cube, centred 3D CTF image, adds it to faml's ``particles.star`` as ``rlnCtfImage``, runs
``relion_reconstruct --ctf --3d_rot`` and reports the masked correlation between RELION's
reconstruction and faml's class average (as written, and both low-passed to faml's band).
RELION is Debian's ``relion`` package: the script installs it with ``apt-get`` when
``relion_reconstruct`` is not on the PATH (root needed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import scipy.fft
import starfile

from faml.demo import demo_structure
from faml.geometry.masks import soft_sphere
from faml.geometry.wedge import wedge_mask
from faml.io.mrc import read_volume, write_volume
from faml.io.particles import from_mrc_files
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.ml.fourier import shell_index
from faml.simulate.fast import simulate_fast


def ensure_relion() -> str:
    exe = shutil.which("relion_reconstruct")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "relion"], check=True)
        exe = shutil.which("relion_reconstruct")
    if exe is None:
        raise SystemExit("relion_reconstruct is not available")
    return exe


def masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a = (a - a[mask > 0.5].mean()) * mask
    b = (b - b[mask > 0.5].mean()) * mask
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def against_run(relion: np.ndarray, run_dir: Path) -> tuple[float, float, int]:
    """Masked correlation of a RELION map with a faml run's ``class_001.mrc``: as written and
    both low-passed to the run's last band; and that band (shells)."""
    faml, _ = read_volume(run_dir / "class_001.mrc")
    box = faml.shape[0]
    band = json.loads((run_dir / "run.json").read_text())["iterations"][-1]["band_shells"]
    mask = soft_sphere(box, 0.45 * box - 3.0, edge=3.0)

    def lowpass(v):
        f = scipy.fft.rfftn(v)
        f[shell_index(box) > band] = 0
        return scipy.fft.irfftn(f, s=v.shape)

    raw = masked_correlation(relion, faml, mask)
    return raw, masked_correlation(lowpass(relion), lowpass(faml), mask), band


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=100)
    parser.add_argument("--snr", type=float, default=0.05)
    args = parser.parse_args()
    exe = ensure_relion()
    structure, voxel = demo_structure()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        simulate_fast([structure], args.particles, tmp / "p", snr=args.snr, voxel_size=voxel)
        table = from_mrc_files(tmp / "p")
        run(table, tmp / "run", RunConfig(seed=0), workers=2)
        box = table.box
        write_volume(tmp / "wedge.mrc", wedge_mask(box, (-60, 60), layout="full"), voxel)
        blocks = starfile.read(tmp / "run" / "particles.star", always_dict=True)
        blocks["particles"]["rlnCtfImage"] = str(tmp / "wedge.mrc")
        star = tmp / "with_ctf.star"
        starfile.write(blocks, star)
        star.write_text(star.read_text().replace("\ndata_", "\n# version 30001\ndata_"))
        subprocess.run(
            [exe, "--i", str(star), "--o", str(tmp / "relion.mrc"), "--ctf", "--3d_rot"],
            check=True,
            capture_output=True,
        )
        relion, _ = read_volume(tmp / "relion.mrc")
        raw, low, band = against_run(relion, tmp / "run")
        print(
            f"relion_reconstruct of faml's particles.star vs faml's average: masked correlation "
            f"{raw:.3f} (both low-passed to faml's band of {band} shells: {low:.3f})"
        )


if __name__ == "__main__":
    main()
