"""A reference of the wrong resolution from an atomic model, against reference-free (issue 22 (b)).

Usage::

    PYTHONPATH=src python benchmarks/workflows/atomic_reference.py [--seeds 1,2]
        [--sim /work/bits/wf/sim] [--out /work/bits/wf-atomic] [--cached /work/bits/wf]
        [--no-relion] [--limit-s 900]

The reference: ``1u6g.pdb`` made into a density on the particles' grid (32^3 at 10 Å per
voxel) by faml's simulator code (:func:`faml.simulate.density.density_from_model` with
``resolution=10``: Chimera molmap's 10 Å Gaussian), low-passed to 60 Å
(:func:`faml.evaluate.maps.lowpass`), written as ``OUT/atomic_1u6g_60A.mrc``. Rows, on
``run.py``'s crowded simulation, scored as run.py scores faml (``run.score``):

- ``faml-atomic``: faml from that map, as ``faml run --reference`` reads it
  (:func:`faml.io.references.read_references`: resampled if need be, low-passed to 60 Å,
  masked by the default mask) and run.py's reference row's settings
  (``RunConfig(seed=S, particle_mask_radius=0.38, references=1)``), per seed;
- ``faml-global``: reference-free with run.py's global settings
  (``RunConfig(seed=S, particle_mask_radius=0.38)``); the row of ``--cached``'s
  ``results.json`` for a seed that run.py already ran there, else run here;
- ``relion-atomic``: RELION 3.1 (``relion_rows``: ``--K 1 --iter 10``, ``--j 2``) global
  search from the same map, ``relion.GLOBAL``: ``--ref atomic_1u6g_60A.mrc --ini_high 60
  --firstiter_cc --healpix_order 1 --oversampling 1 --offset_range 4 --offset_step 2``.

Rows go to ``benchmarks/workflows/atomic_rows.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from relion import GLOBAL
from relion_rows import HERE, LIMIT_S, relion_row, write_star
from run import BOX, MASK, SHARED, VOXEL, score

from faml.evaluate.maps import lowpass
from faml.io.mrc import write_volume
from faml.io.references import read_references
from faml.io.star import read_particles_star
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.simulate.dataset import read_truth
from faml.simulate.density import density_from_model

ROWS_JSON = HERE / "atomic_rows.json"
PDB = SHARED / "atomic" / "1u6g.pdb"


def atomic_reference(path: Path) -> Path:
    """The atomic model's 10 Å map on the particles' grid, low-passed to 60 Å, as MRC."""
    vol = density_from_model(PDB, VOXEL, BOX, resolution=10.0)
    write_volume(path, lowpass(vol, 60.0, VOXEL).astype(np.float32), VOXEL)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--sim", default="/work/bits/wf/sim")
    parser.add_argument("--out", default="/work/bits/wf-atomic")
    parser.add_argument("--cached", default="/work/bits/wf")
    parser.add_argument("--no-relion", action="store_true")
    parser.add_argument("--limit-s", type=float, default=LIMIT_S, help="RELION's wall limit")
    args = parser.parse_args()
    sim, out = Path(args.sim), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = read_truth(sim)
    table = read_particles_star(sim / "particles.star")
    ref_path = atomic_reference(out / "atomic_1u6g_60A.mrc")
    refs = read_references([ref_path], box=BOX, voxel_size=VOXEL, classes=1, lowpass=60.0,
                           mask=None)  # fmt: skip
    rows = json.loads(ROWS_JSON.read_text()) if ROWS_JSON.exists() else {}
    cached = Path(args.cached) / "results.json"
    cached_global = json.loads(cached.read_text())["global"] if cached.exists() else []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = {
            "faml-atomic": (RunConfig(seed=seed, particle_mask_radius=MASK, references=1), refs),
            "faml-global": (RunConfig(seed=seed, particle_mask_radius=MASK), None),
        }
        for name, (cfg, references) in runs.items():
            key = f"{name}-seed{seed}"
            if key in rows:
                continue
            if name == "faml-global" and seed == 1 and cached_global:
                # run.py --seeds 1 --out CACHED: the first global row is seed 1's
                rows[key] = dict(cached_global[0], seed=1, source=str(cached))
            else:
                t0 = time.perf_counter()
                result = run(table, out / key, cfg, workers=2, references=references)
                rows[key] = score(result, truth)
                rows[key].update(seed=seed, wall_s=time.perf_counter() - t0,
                                 iterations=result.n_iterations)  # fmt: skip
            print(key, rows[key], flush=True)
            ROWS_JSON.write_text(json.dumps(rows, indent=2) + "\n")
    if not args.no_relion and "relion-atomic" not in rows:
        star = write_star(sim, out / "particles.star")
        row = relion_row(star, ref_path, out / "relion-atomic", GLOBAL, truth, None, args.limit_s)
        rows["relion-atomic"] = dict(row, seed=1, reference=ref_path.name)
        print("relion-atomic", row, flush=True)
        ROWS_JSON.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
