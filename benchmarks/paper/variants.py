"""E1 and E3 of the paper suite again with ``--gold-standard`` and (E1, GroEL) ``--symmetry D7``.

Usage::

    python benchmarks/paper/variants.py [--workers 2] [--seed 1] [--out benchmarks/paper/results]

The particles are the suite's own (``run.py`` simulates them into ``OUT/full/E1/64`` and
``OUT/full/E3/64`` if they are not there yet). Rows (FAML, the default configuration plus):

- ``gold``: ``gold_standard=True``. The half-map FSC at 0.143 (mask-corrected, from the
  run's ``model.star``) against the FSC with the truth at 0.5 (the two criteria describe the
  same signal-to-noise: a half map's FSC ``F`` gives ``sqrt(2F / (1 + F))`` for the full map
  against the truth, 0.5 at ``F = 0.143``), in Å and in Fourier shells;
- ``D7`` and ``D7 + gold`` (E1 only): the masked Pearson correlation with the truth, beside
  the default run's from ``results.json``.

Writes ``OUT/full/variants.json`` and ``benchmarks/paper/VARIANTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import starfile  # noqa: E402
from run import EXPERIMENTS, run_method, simulate_set  # noqa: E402

VARIANTS = {
    "E1": {"gold": {"gold_standard": True}, "D7": {"symmetry": "D7"},
           "D7 + gold": {"symmetry": "D7", "gold_standard": True}},
    "E3": {"gold": {"gold_standard": True}},
}  # fmt: skip


def _half_map_resolution(run_dir: Path) -> list[float]:
    model = starfile.read(run_dir / "model.star")
    return [float(x) for x in model["model_classes"]["rlnEstimatedResolution"]]


def _fsc_figures(run_dir: Path, box: int, voxel: float) -> dict:
    """From the run's files: the half-map FSC 0.143 crossings (unmasked and mask-corrected,
    per class) and the FSC with the truth at 0.143 (``evaluation.json``)."""
    from faml.ml.fourier import fsc_resolution

    model = starfile.read(run_dir / "model.star")
    classes = [k for k in model if k.startswith("model_class_")]
    unmasked = [
        fsc_resolution(model[k]["rlnGoldStandardFsc"].to_numpy(), box, voxel, 0.143)
        for k in sorted(classes)
    ]
    ev = json.loads((run_dir / "evaluation.json").read_text())
    truth0143 = [c["map"]["fsc0143_angstrom"] for c in ev["classes"]]
    out = {"half_unmasked_0143_A": unmasked, "truth_0143_A": truth0143}
    # The run's class maps are cut at its own (unmasked) FSC 0.143 band, so their FSC with
    # the truth cannot pass it: the unfiltered mean of the half maps is scored too.
    halves = sorted(run_dir.glob("class_*_half1_unfil.mrc"))
    if halves:
        from faml.evaluate import score_map
        from faml.io.mrc import read_volume

        unfiltered = []
        for c, h1 in zip(ev["classes"], halves, strict=True):
            full = read_volume(h1)[0] + read_volume(str(h1).replace("half1", "half2"))[0]
            truth = read_volume(run_dir.parent / "truth" / f"class_{c['truth_class']:03d}.mrc")[0]
            unfiltered.append(score_map(full, truth, voxel).resolution_05)
        out["unfiltered_truth_05_A"] = unfiltered
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--experiments", default="E1,E3")
    parser.add_argument(
        "--variants", default=None, help="comma-separated variant names to run (default: all)"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rebuild VARIANTS.md from the saved runs"
    )
    args = parser.parse_args()
    root = Path(args.out) / "full"
    store = root / "variants.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    suite = root / "results.json"
    base = json.loads(suite.read_text()) if suite.exists() else {}
    for exp in EXPERIMENTS:
        if exp.name not in args.experiments.split(","):
            continue
        folder = root / exp.name / f"{exp.box}"
        if args.render_only:
            for name, row in results.get(exp.name, {}).items():
                tag = "faml-" + name.replace(" + ", "-").lower()
                if (folder / tag / "model.star").exists():
                    row.update(_fsc_figures(folder / tag, exp.box, exp.voxel_size))
            continue
        if not (folder / "particles.star").exists():
            simulate_set(exp, folder, exp.box, exp.voxel_size, exp.n_each, args.seed)
        rows = results.setdefault(exp.name, {})
        for name, options in VARIANTS[exp.name].items():
            if args.variants and name not in args.variants.split(","):
                continue
            tag = "faml-" + name.replace(" + ", "-").lower()
            row = run_method(folder, "faml", len(exp.structures), args.workers, args.seed,
                             name=tag, **options)  # fmt: skip
            if options.get("gold_standard"):
                row["half_map_0143_A"] = _half_map_resolution(folder / tag)
            row.update(_fsc_figures(folder / tag, exp.box, exp.voxel_size))
            rows[name] = row
            print(exp.name, name, row, flush=True)
            store.write_text(json.dumps(results, indent=1))
        default = base.get(exp.name, {}).get(f"{exp.box}^3", {}).get("faml")
        if default is not None:
            rows["default"] = default
    store.write_text(json.dumps(results, indent=1))
    (HERE / "VARIANTS.md").write_text(render(results, args))
    print(render(results, args))


def render(results: dict, args) -> str:
    lines = [
        "# E1 and E3 with --gold-standard and --symmetry D7",
        "",
        f"Command: `python benchmarks/paper/variants.py` ({datetime.date.today()}, "
        f"{platform.machine()}, {args.workers} worker processes). FAML, faml's default "
        "configuration plus the variant; the suite's particles (RESULTS.md). Half-map FSC: "
        "0.143 crossing of the mask-corrected FSC between the independently refined halves "
        "(`model.star`); truth FSC: the 0.5 crossing of the FSC between the map and the "
        "aligned true map (the criterion that matches 0.143 between half maps). Shells: "
        "box x voxel / resolution.",
        "",
        "| set | variant | Pearson (per class) | truth FSC 0.5 / 0.143 (A) | unfiltered map: "
        "truth FSC 0.5 (A) | half-map FSC 0.143 corrected / unmasked (A) | corrected - "
        "unfiltered truth 0.5 (shells) | within 15 deg | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for exp in EXPERIMENTS:
        if exp.name not in results:
            continue
        for name in ("default", *VARIANTS[exp.name]):
            row = results[exp.name].get(name)
            if row is None:
                continue
            per_class = "/".join(f"{c:.3f}" for c in row["pearson_per_class"])
            half = row.get("half_map_0143_A")
            truth = row["fsc05_A"]
            t143 = row.get("truth_0143_A")
            truth_txt = f"{truth:.1f}" + (
                "" if not t143 else " / " + "/".join(f"{t:.1f}" for t in t143)
            )
            unfiltered = row.get("unfiltered_truth_05_A")
            unf_txt = "" if not unfiltered else "/".join(f"{u:.1f}" for u in unfiltered)
            if half and unfiltered:
                shells = "/".join(
                    f"{exp.box * exp.voxel_size * (1 / h - 1 / u):+.1f}"
                    for h, u in zip(half, unfiltered, strict=True)
                )
                half_txt = (
                    "/".join(f"{h:.1f}" for h in half)
                    + " / "
                    + "/".join(f"{h:.1f}" for h in row.get("half_unmasked_0143_A", []))
                )
                diff = shells
            else:
                half_txt, diff = "", ""
            lines.append(
                f"| {exp.name} | {name} | {row['pearson']:.3f} ({per_class}) | {truth_txt} | "
                f"{unf_txt} | {half_txt} | {diff} | {row['within15']:.2f} | {row['wall_s']:.0f} |"
            )
    lines += [
        "",
        "Within 15 deg counts a pose off by a symmetry operation as wrong (as RESULTS.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
