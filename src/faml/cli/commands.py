"""``faml align``, ``simulate``, ``evaluate``, ``report``, ``export``, ``demo``, ``prepare-stacks``.

Each command's function takes the parsed options and returns the exit status; errors are
raised and told by :func:`faml.cli.messages.explain`.

faml's modules are imported inside the functions: they load numpy, scipy, numba or dask,
and ``faml --help`` imports this module without running any command.
"""

from __future__ import annotations

import argparse


def _cmd_align(args: argparse.Namespace) -> int:
    from faml.align import fast_align
    from faml.geometry.euler import shift_to_origin_angst
    from faml.geometry.wedge import read_weight, wedge_mask
    from faml.io.mrc import read_volume

    particle, voxel = read_volume(args.particle)
    voxel = voxel or args.voxel_size
    if not voxel:
        raise ValueError(f"{args.particle} has no voxel size in its header: give --voxel-size")
    average, _ = read_volume(args.average)
    if particle.shape != average.shape:
        raise ValueError(
            f"particle {args.particle} is {particle.shape} but average "
            f"{args.average} is {average.shape}; they must be the same cubic box"
        )
    box = particle.shape[0]
    if args.weight:
        wedge = read_weight(args.weight, box)
    else:
        wedge = wedge_mask(box, tuple(args.tilt_range))
    cands = fast_align(
        particle,
        wedge,
        average,
        max_candidates=args.candidates,
        max_shift=args.max_shift,
        band_limit=args.band_limit,
    )
    print(f"# {len(cands)} candidates, best first; voxel size {voxel:g} A")
    print(
        f"{'rank':>4} {'rot':>8} {'tilt':>8} {'psi':>8} {'originX':>8} {'originY':>8} "
        f"{'originZ':>8} {'score':>8}"
    )
    for i, c in enumerate(cands, 1):
        rot, tilt, psi = c.euler
        ox, oy, oz = shift_to_origin_angst(c.shift, voxel)
        print(
            f"{i:>4} {rot:8.2f} {tilt:8.2f} {psi:8.2f} {ox:8.2f} {oy:8.2f} {oz:8.2f} {c.score:8.4f}"
        )
    return 0


def _cmd_prepare_stacks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from faml.io.star import read_particles_star

    table = read_particles_star(
        args.particles,
        cache_dir=Path(args.out) / "subtomograms",
        tomograms_star=args.tomograms,
    )
    print(
        f"faml prepare-stacks: {len(table)} subtomograms {table.box}^3 at "
        f"{table.voxel_size:g} A and their weights in {Path(args.out) / 'subtomograms'}"
    )
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from faml.simulate import (
        CrowdedSettings,
        SimulationSettings,
        load_structure,
        simulate,
        simulate_crowded,
    )

    crowd_only = ("tomograms", "crowd_structure", "write_tomograms")
    if not args.crowded:
        given = [o for o in crowd_only if getattr(args, o) not in (None, False)]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} needs --crowded")
    elif args.mode != "realistic":
        raise ValueError("--crowded makes its own tilt series; it does not take --mode fast")
    ctf_form = args.ctf_form or ("signed" if args.no_phase_flip else "flipped")
    if args.no_phase_flip and ctf_form != "signed":
        raise ValueError(f"--no-phase-flip means --ctf-form signed, not {ctf_form}")
    if args.mode == "fast" and ctf_form != "flipped":
        raise ValueError(f"--ctf-form {ctf_form} needs the CTF of --mode realistic or --crowded")
    crowd = None
    if args.crowded:  # checked before any structure is read
        crowd = CrowdedSettings(
            tomograms=args.tomograms,
            crowding=args.crowding,
            pick_error=args.pick_error,
            dose_per_tilt=args.dose,
            tomogram_size=tuple(args.tomogram_size),
            write_tomograms=args.write_tomograms,
        )
    settings = SimulationSettings(
        voxel_size=args.voxel_size,
        snr=args.snr,
        tilt_range=tuple(args.tilt_range),
        tilt_step=args.tilt_step,
        defocus_um=args.defocus,
        defocus_jitter_um=args.defocus_jitter,
        ctf=not args.no_ctf,
        ctf_form=ctf_form,
        mtf=not args.no_ctf,
        rotation_axis=args.rotation_axis,
        max_shift=args.max_shift,
    )
    structures = [
        load_structure(path, args.voxel_size, args.box, resolution=args.resolution)
        for path in args.structure
    ]
    names = [Path(p).name for p in args.structure]
    # the bar on a terminal only (tqdm's disable=None), never with --quiet
    with tqdm(total=args.n * len(structures), unit="particle", desc="faml simulate",
              disable=True if args.quiet else None) as bar:  # fmt: skip
        if crowd is not None:
            others = None
            if args.crowd_structure:
                others = [
                    load_structure(path, args.voxel_size, args.box, resolution=args.resolution)
                    for path in args.crowd_structure
                ]
            truth = simulate_crowded(
                structures, names, args.n, args.out, settings, crowd, crowd_structures=others,
                crowd_names=[Path(p).name for p in args.crowd_structure or ()] or None,
                seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                progress=lambda done, total: bar.update(done - bar.n),
            )  # fmt: skip
        else:
            truth = simulate(
                structures, names, args.n, args.out, settings, mode=args.mode, seed=args.seed,
                workers=args.workers, overwrite=args.overwrite,
                progress=lambda done, total: bar.update(done - bar.n),
            )  # fmt: skip
    print(f"faml simulate: {len(truth.classes)} particles and {truth.star_path}")
    print(f"faml simulate: truth (maps, poses, classes) in {Path(args.out) / 'truth'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from faml.evaluate import evaluate_map, evaluate_run
    from faml.io.atomic import write_text_atomic

    if args.map is not None:
        if args.run_dir is not None:
            raise ValueError("give either RUN_DIR or --map MAP, not both")
        result = evaluate_map(
            args.map, args.truth, voxel_size=args.voxel_size, symmetry=args.symmetry
        )
    elif args.run_dir is not None:
        result = evaluate_run(
            args.run_dir, args.truth, oracle=not args.no_oracle, symmetry=args.symmetry,
            seed=args.seed,
        )  # fmt: skip
    else:
        raise ValueError("give a run directory (RUN_DIR --truth SIM_DIR) or --map MAP")
    print(result.to_table())
    if args.json:
        write_text_atomic(args.json, json.dumps(result.to_dict(), indent=1))
        print(f"faml evaluate: figures in {args.json}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from faml.report import write_report

    path = write_report(args.run_dir, truth=args.truth, out=args.out)
    print(f"faml report: {path}")
    return 0


def _export(
    run_dir, to: str, lowpass: float | None, out: str | None, relion_version: str = "5"
) -> None:
    """``faml export`` and ``faml run --then-export``: the run's results for ``to``."""
    from faml.report import export_relion

    if to != "relion":  # pragma: no cover - argparse allows only relion
        raise ValueError(f"unknown export target {to!r}")
    done = export_relion(run_dir, out, lowpass_angstrom=lowpass, relion_version=relion_version)
    res = ", ".join(f"{r:.1f}" for r in done.resolutions)
    print(f"faml export: maps low-passed to {res} A and particles.star in {done.folder}")
    print(f"faml export: relion_refine command in {done.commands}")


def _cmd_export(args: argparse.Namespace) -> int:
    _export(args.run_dir, args.to, args.lowpass, args.out, args.relion_version)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from faml.demo import run_demo

    f = run_demo(
        args.out,
        particles=args.particles,
        snr=args.snr,
        iterations=args.iterations,
        workers=args.workers,
        seed=args.seed,
    )
    print(f"faml demo: map      {f['map']}")
    print(f"faml demo: STAR     {f['star']}")
    print(f"faml demo: log      {f['log']}  (truth: {f['truth']})")
    print(f"faml demo: report   {f['report']}")
    print(
        f"faml demo: the map against the true structure: correlation "
        f"{f['correlation_with_truth']:.3f}, FSC 0.5 at {f['fsc05_resolution_angstrom']:.1f} A; "
        f"{100 * f['poses_within_15deg']:.0f}% of poses within 15 degrees "
        f"(median error {f['median_pose_error_deg']:.1f})"
    )
    return 0
