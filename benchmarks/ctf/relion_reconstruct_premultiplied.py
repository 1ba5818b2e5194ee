"""RELION 3.1 rebuilds faml's average of a CTF-premultiplied set from faml's export.

Usage::

    PYTHONPATH=src python benchmarks/ctf/relion_reconstruct_premultiplied.py RUN_DIR PROJECT

``RUN_DIR`` is a finished ``faml run`` on CTF-premultiplied particles (e.g.
``benchmarks/ctf/forms.py``'s ``OUT/premultiplied-seed1``, RELION 4/5 pseudo-subtomograms
written by ``faml simulate --ctf-form premultiplied``); ``PROJECT`` the folder its image names
are relative to (RELION's project folder; ``forms.py``'s ``OUT/sim-premultiplied``), where
the export and RELION run. The run is exported with ``faml export
--to relion --relion-version 3.1`` (a RELION 3.1 STAR, ``rlnCtfDataAreCtfPremultiplied 1``,
each ``rlnCtfImage`` the square root of the particle's CTF² sum, because RELION 3.1 squares
a premultiplied 3D CTF image: ``benchmarks/relion31_premultiplied.py``), and
``relion_reconstruct --ctf --3d_rot`` (Debian's ``relion`` 3.1.3, installed with ``apt-get``
when missing) rebuilds the map at faml's poses. Printed: the masked correlation of RELION's
map with faml's ``class_001.mrc``, as written and both low-passed to faml's band.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from faml.io.mrc import read_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from relion_reconstruct import against_run, ensure_relion  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("project")
    args = parser.parse_args()
    run_dir = Path(args.run_dir).resolve()
    exe = ensure_relion()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        subprocess.run(
            [sys.executable, "-m", "faml", "export", str(run_dir), "--to", "relion",
             "--relion-version", "3.1", "--out", str(out), "--quiet"],
            check=True, cwd=args.project,
        )  # fmt: skip
        subprocess.run(
            [exe, "--i", str(out / "particles.star"), "--o", str(Path(tmp) / "relion.mrc"),
             "--ctf", "--3d_rot"],
            check=True, capture_output=True, cwd=args.project,
        )  # fmt: skip
        relion, _ = read_volume(Path(tmp) / "relion.mrc")
    raw, low, band = against_run(relion, run_dir)
    print(
        f"relion_reconstruct (3.1) of faml's premultiplied export vs faml's average: masked "
        f"correlation {raw:.3f} (both low-passed to faml's band of {band} shells: {low:.3f})"
    )


if __name__ == "__main__":
    main()
