"""RELION 3.1 beside faml's workflow rows: the same priors, the same 60 Å reference.

Usage::

    PYTHONPATH=src python benchmarks/workflows/relion.py [--sim /work/bits/wf/sim]
        [--out /work/bits/wf-relion] [--rows priors,relion-local,relion-reference,relion-global]
        [--limit-s 900]

On ``run.py``'s crowded simulation (``--sim``; made as ``run.py`` makes it when missing),
``relion_refine`` (RELION 3.1.3, ``--j 2``, no MPI, hence no auto-refine: 3D classification
with ``--K 1 --iter 10``, see ``relion_rows``) with ``relion_rows.COMMON`` (particle mask
``--particle_diameter 243`` = faml's particle mask of radius 0.38 of the box, ``--zero_mask
--flatten_solvent --ctf --norm --scale --tau2_fudge 4``) and, per row:

- ``relion-local``: run.py's template-matching priors (``template_matching_priors(truth, 1)``:
  true pose turned by ``|N(0, 10 deg)|``, shift ``+ N(0, 2 voxels)``, 5% random) as the
  particles' poses and priors; ``--ref`` the average at the priors (``relion_reconstruct
  --ctf --3d_rot`` of that STAR, as faml's local row starts from the average at the priors),
  ``--ini_high 60 --sigma_ang 10 --healpix_order 3 --oversampling 0 --offset_range 6
  --offset_step 2``: local searches (7.5 degrees and 2 voxels, no finer pass: with the finer
  pass one iteration took ~10 min on the shared 2 cores) within +-3 sigma of the priors in
  every iteration (``relion-local-hp2``: ``--healpix_order 2 --oversampling 1``, 15 degrees
  coarse and 7.5 fine, otherwise the same). The share
  within 15 degrees is also given for the particles whose prior lies within 30 degrees of the
  truth and for the random 5%;
- ``relion-reference``: a global search from run.py's reference (the truth's density
  low-passed to 60 Å and masked by faml's default mask), ``--ini_high 60 --firstiter_cc
  --healpix_order 1 --oversampling 1 --offset_range 4 --offset_step 2`` (30 degrees, 15 after
  RELION's adaptive oversampling: ``benchmarks/real/crowded.py``'s global sampling; finer
  global sampling costs hours per run here. The offsets: the true ones are within 3 voxels
  of the box centre, and each iteration searches about the last one;
  ``relion-reference-hp2``: ``--healpix_order 2``, 15 degrees coarse and 7.5 fine);
- ``relion-global``: reference-free as RELION 3.1 allows it: ``--ref None`` (3D
  classification's start, the particles averaged at random poses; auto-refine would need a
  reference), with ``relion-reference``'s options but ``--firstiter_cc``. Measured: too slow
  here (RELION estimated 18 min for the first iteration alone), no row kept.

``priors`` scores the input itself (no refinement): the priors, and the average at them
(``relion_reconstruct``) as the map.

Each row is scored as run.py scores faml (``run.score``: within 15 degrees after the
map-to-truth transform, FSC 0.5, masked correlation) with its wall time, and kept in
``benchmarks/workflows/relion_rows.json`` (rows already there are kept unless rerun).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from relion_rows import HERE, LIMIT_S, reconstruct, relion_row, write_star
from run import BOX, RANGE_DEG, VOXEL, score, simulate, template_matching_priors

from faml.evaluate.maps import lowpass
from faml.geometry.masks import default_mask
from faml.geometry.rotations import rotation_distance
from faml.io.mrc import read_volume, write_volume
from faml.simulate.dataset import read_truth

ROWS_JSON = HERE / "relion_rows.json"
GLOBAL = ["--ini_high", "60", "--firstiter_cc", "--healpix_order", "1", "--oversampling", "1",
          "--offset_range", "4", "--offset_step", "2"]  # fmt: skip
GLOBAL_HP2 = ["--ini_high", "60", "--firstiter_cc", "--healpix_order", "2", "--oversampling", "1",
              "--offset_range", "4", "--offset_step", "2"]  # fmt: skip
LOCAL = ["--ini_high", "60", "--sigma_ang", "10", "--healpix_order", "3", "--oversampling", "0",
         "--offset_range", "6", "--offset_step", "2"]  # fmt: skip
LOCAL_HP2 = ["--ini_high", "60", "--sigma_ang", "10", "--healpix_order", "2", "--oversampling",
             "1", "--offset_range", "6", "--offset_step", "2"]  # fmt: skip


def save_row(name: str, row: dict) -> None:
    rows = json.loads(ROWS_JSON.read_text()) if ROWS_JSON.exists() else {}
    rows[name] = row
    ROWS_JSON.write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", default="/work/bits/wf/sim")
    parser.add_argument("--out", default="/work/bits/wf-relion")
    parser.add_argument("--rows", default="relion-local,relion-reference,relion-global")
    parser.add_argument("--limit-s", type=float, default=LIMIT_S)
    args = parser.parse_args()
    sim, out = Path(args.sim), Path(args.out)
    if not (sim / "truth" / "truth.json").exists():
        sim = simulate(sim.parent)
    out.mkdir(parents=True, exist_ok=True)
    truth = read_truth(sim)
    plain = write_star(sim, out / "particles.star")
    for name in args.rows.split(","):
        folder, subsets = out / name, None
        if name in ("relion-local", "relion-local-hp2"):
            priors, prior_shifts, wild = template_matching_priors(truth, 1)
            inside = (rotation_distance(priors, truth.rotations) <= RANGE_DEG) & ~wild
            subsets = {"prior_inside": inside, "prior_random": wild}
            star = write_star(sim, out / "priors.star", priors, prior_shifts)
            ref = out / "average_at_priors.mrc"
            if not ref.exists():
                reconstruct(star, ref)
            options = LOCAL if name == "relion-local" else LOCAL_HP2
        elif name == "priors":  # the input itself: the priors and the average at them
            priors, prior_shifts, wild = template_matching_priors(truth, 1)
            ref = out / "average_at_priors.mrc"
            if not ref.exists():
                reconstruct(write_star(sim, out / "priors.star", priors, prior_shifts), ref)
            result = SimpleNamespace(
                maps=[read_volume(ref)[0]], rotations=priors, shifts=prior_shifts,
                verdict=SimpleNamespace(trusted=None),
            )  # fmt: skip
            inside = (rotation_distance(priors, truth.rotations) <= RANGE_DEG) & ~wild
            row = score(result, truth, {"prior_inside": inside, "prior_random": wild})
            save_row(name, dict(row, seed=1, iterations=0, reference=ref.name))
            print(name, row, flush=True)
            continue
        elif name in ("relion-reference", "relion-reference-hp2"):
            star, options = plain, GLOBAL if name == "relion-reference" else GLOBAL_HP2
            ref = out / "truth_60A_masked.mrc"
            write_volume(ref, (lowpass(truth.maps[0], 60.0, VOXEL) * default_mask(BOX))
                         .astype(np.float32), VOXEL)  # fmt: skip
        elif name == "relion-global":
            star, ref = plain, Path("None")
            options = [o for o in GLOBAL if o != "--firstiter_cc"]
        else:
            raise SystemExit(f"unknown row {name}")
        row = relion_row(star, ref, folder, options, truth, subsets, args.limit_s)
        row.update(seed=1, reference=ref.name)
        save_row(name, row)
        print(name, {k: v for k, v in row.items() if k != "command"}, flush=True)


if __name__ == "__main__":
    main()
