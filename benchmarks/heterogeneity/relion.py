"""RELION 3.1 Class3D rows beside ``run.py``'s scenarios, from faml's consensus.

Usage::

    PYTHONPATH=src python benchmarks/heterogeneity/relion.py --scenario states|three|junk
        [--out DIR]

Each row runs (unless ``OUT/relion-SCENARIO/run_it015_data.star`` exists; then it is
re-scored) RELION's usual classification of particles aligned to one consensus, on the
same particles and poses faml's run used::

    relion_refine --i CONS/particles.star --o OUT/relion-SCENARIO/run --ref CONS/class_001.mrc
        --K K --ini_high 60 --skip_align --tau2_fudge 4 --iter 15 --particle_diameter D
        --flatten_solvent --zero_mask --ctf --norm --scale --pad 2 --sym C1 --j 2
        --dont_combine_weights_via_disc --random_seed 1 [--solvent_mask FOCUS]

- ``states``: CONS = ``OUT/states_consensus/consensus`` (the K = 1 run of faml's
  ``--consensus``), K = 2, FOCUS = faml's ``focus_auto.mrc`` (the same focus faml used);
- ``three``: CONS = ``OUT/three_consensus/consensus``, K = 3, FOCUS its ``focus_auto.mrc``;
- ``junk``: CONS = ``OUT/junk_k1`` (faml K = 1 on all 150 picks), K = 3 (as faml's target
  class and two junk classes), no focus; scored as the share of the junk picks out of the
  class that holds most target particles.

``particles.star`` is faml's (RELION 3.1 layout, the consensus poses in
``rlnAngleRot/Tilt/Psi`` and ``rlnOrigin*Angst``, the weights in ``rlnCtfImage``), which
``benchmarks/relion_interop.py`` checks RELION reads. RELION 3.1's reference-free
classification (``--sgd --denovo_3dref --K 2``) accepted these subtomograms, but its first
SGD iteration projected 1.07 h on this machine (1 thread, 150 particles, 32^3, healpix
order 1): it is not run. Writes ``OUT/relion-SCENARIO/row.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import starfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "workflows"))  # after HERE: its run.py is not ours

from relion_states import run_once  # noqa: E402  (benchmarks/workflows)
from run import _scored_states  # noqa: E402  (run.py's scoring)

ITERATIONS = 15
DIAMETER = {"states": "280", "three": "280", "junk": "183"}


def command(cons: Path, out: Path, classes: int, diameter: str, focus: Path | None) -> list[str]:
    """The Class3D command of one row (module docstring)."""
    exe = shutil.which("relion_refine") or "relion_refine"
    cmd = [
        exe, "--i", str(cons / "particles.star"), "--o", str(out / "run"),
        "--ref", str(cons / "class_001.mrc"), "--K", str(classes), "--ini_high", "60",
        "--skip_align", "--tau2_fudge", "4", "--iter", str(ITERATIONS),
        "--particle_diameter", diameter, "--flatten_solvent", "--zero_mask", "--ctf", "--norm",
        "--scale", "--pad", "2", "--sym", "C1", "--j", "2",
        "--dont_combine_weights_via_disc", "--random_seed", "1",
    ]  # fmt: skip
    return cmd + (["--solvent_mask", str(focus)] if focus is not None else [])


def relion_row(scenario: str, out: Path) -> dict:
    if scenario == "junk":
        cons, classes, focus, sim = out / "junk_k1", 3, None, out / "sim_junk"
    else:
        run = out / f"{scenario}_consensus"
        cons, focus = run / "consensus", run / "focus_auto.mrc"
        classes = 2 if scenario == "states" else 3
        sim = out / "states" / "sim" if scenario == "states" else out / "sim_three"
    folder = out / f"relion-{scenario}"
    last = folder / f"run_it{ITERATIONS:03d}_data.star"
    cmd = command(cons, folder, classes, DIAMETER[scenario], focus)
    run_once(cmd, folder, last)
    wall = json.loads((folder / "wall_s.json").read_text())
    shown = " ".join("relion_refine" if c == cmd[0] else c for c in cmd)
    if scenario == "junk":
        row = _junk_score(last, sim)
    else:
        names = _state_names(scenario)
        row = _scored_states(folder, sim, classes, names, star=last)
    row.update(wall_s=round(wall, 1), iterations=ITERATIONS, command=shown)
    (folder / "row.json").write_text(json.dumps(row, indent=2))
    return row


def _state_names(scenario: str) -> list[str]:
    names = ["tomodrgn_10076_classD_32", "tomodrgn_10076_classE_32"]
    return names + (["classD_less_domain"] if scenario == "three" else [])


def _junk_score(star: Path, sim: Path) -> dict:
    from faml.simulate.dataset import read_truth

    truth = read_truth(sim)
    where = {Path(n).name: i for i, n in enumerate(truth.image_names)}
    got = starfile.read(star, always_dict=True)["particles"]
    order = np.array([where[Path(n).name] for n in got["rlnImageName"]])
    is_target = np.asarray(truth.classes)[order] < 7
    klass = got["rlnClassNumber"].to_numpy()
    target_class = int(np.bincount(klass[is_target]).argmax())
    return {
        "target_class": target_class,
        "junk_out_of_target": float(np.mean(klass[~is_target] != target_class)),
        "target_in_target": float(np.mean(klass[is_target] == target_class)),
        "class_sizes": np.bincount(klass, minlength=4)[1:].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("states", "three", "junk"), required=True)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    print(json.dumps(relion_row(args.scenario, Path(args.out)), indent=2))


if __name__ == "__main__":
    main()
