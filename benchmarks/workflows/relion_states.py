"""RELION 3.1's row of ``states.py``: Class3D K = 2 from the consensus, with the focus mask.

``relion_row(out, consensus, truth, store)`` runs (unless ``OUT/relion-NAME`` holds its last
iteration) and scores, for each variant in :data:`VARIANTS`::

    relion_refine --i consensus/particles.star --o OUT/relion-NAME/run --ref consensus/class_001.mrc
        --K 2 --ini_high 60 --solvent_mask focus.mrc --sigma_ang 5 --healpix_order 3
        --offset_range 3 --offset_step 1 --tau2_fudge 4 --iter 15
        --dont_combine_weights_via_disc --ctf --particle_diameter 280 --zero_mask --norm
        --scale --pad 2 --j 2 --random_seed 1 [EXTRA]

``consensus/particles.star`` is faml's (RELION 3.1 layout, the consensus poses in
``rlnAngleRot/Tilt/Psi`` and ``rlnOrigin*Angst``, the weights in ``rlnCtfImage``, as
``benchmarks/relion_interop.py`` checks RELION reads them); the scores are those of
``states.py`` (F1 after the best matching, confusion, focus-masked correlation with each
truth). The rows go to ``store`` (JSON), which ``states.py`` prints without RELION.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import starfile

from faml.io.mrc import read_volume

ITERATIONS = 15
VARIANTS = {
    # RELION's usual focused classification from a consensus: no alignment at all
    "skip_align": ["--skip_align"],
    # focused Class3D with local searches around the consensus poses, the offsets searched
    # within 2 pixels (3 pixels cost 8 minutes per iteration on 2 cores from the second
    # iteration on: two hours for 15), 10 iterations
    "local": ["--offset_range", "2", "--iter", "10"],
}


def command(exe: str, out: Path, consensus: Path, focus: Path, extra: list[str]) -> list[str]:
    """The Class3D command; an option in ``extra`` replaces the default one of that name."""
    given = dict(zip(extra[::2], extra[1::2], strict=False))
    flags = [e for e in extra if e.startswith("--") and e not in given or e == "--skip_align"]
    base = [
        exe, "--i", str(consensus / "particles.star"), "--o", str(out / "run"),
        "--ref", str(consensus / "class_001.mrc"), "--K", "2", "--ini_high", "60",
        "--solvent_mask", str(focus), "--sigma_ang", "5", "--healpix_order", "3",
        "--offset_range", "3", "--offset_step", "1", "--tau2_fudge", "4",
        "--iter", str(ITERATIONS), "--dont_combine_weights_via_disc", "--ctf",
        "--particle_diameter", "280", "--zero_mask", "--norm", "--scale", "--pad", "2",
        "--j", "2", "--random_seed", "1",
    ]  # fmt: skip
    for i, word in enumerate(base):
        if word in given and i + 1 < len(base) and not base[i + 1].startswith("--"):
            base[i + 1] = given[word]
    return base + [f for f in flags if f not in base]


def iterations_of(extra: list[str]) -> int:
    return int(extra[extra.index("--iter") + 1]) if "--iter" in extra else ITERATIONS


def run_once(cmd: list[str], folder: Path, last: Path) -> None:
    """Run ``cmd`` in ``folder`` (log in ``log.txt``, wall time in ``wall_s.json``) unless its
    ``last`` output exists."""
    if last.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=fh, cwd=folder)
    (folder / "wall_s.json").write_text(json.dumps(time.perf_counter() - t0))


def relion_row(out: Path, consensus: Path, truth, store: Path) -> list[dict]:
    from states import score  # the sibling script

    rows = json.loads(store.read_text()) if store.exists() else []
    rows = rows if isinstance(rows, list) else [rows]
    for name, extra in VARIANTS.items():
        folder = out / f"relion-{name}"
        n_it = iterations_of(extra)
        last = folder / f"run_it{n_it:03d}_data.star"
        cmd = command(shutil.which("relion_refine") or "relion_refine", folder, consensus,
                      out / "focus.mrc", extra)  # fmt: skip
        run_once(cmd, folder, last)
        parts = starfile.read(last, always_dict=True)["particles"]
        where = {Path(n).name: i for i, n in enumerate(truth.image_names)}
        order = np.array([where[Path(n).name] for n in parts["rlnImageName"]])
        classes = parts["rlnClassNumber"].to_numpy() - 1
        maps = np.stack([read_volume(folder / f"run_it{n_it:03d}_class{k:03d}.mrc")[0]
                         for k in (1, 2)])  # fmt: skip
        row = score(classes, maps, truth, order)
        wall = folder / "wall_s.json"
        seconds = round(json.loads(wall.read_text()), 1) if wall.exists() else None
        shown = " ".join(c if c != cmd[0] else "relion_refine" for c in cmd)
        row.update(variant=name, seed=1, iterations=n_it, wall_s=seconds, command=shown)
        rows = [r for r in rows if r.get("variant") != name] + [row]
        print("relion", row, flush=True)
    store.write_text(json.dumps(rows, indent=2))
    return rows
