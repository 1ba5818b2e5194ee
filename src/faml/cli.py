"""The ``faml`` command line.

Subcommands:

``faml align PARTICLE AVERAGE``
    Candidate rigid transforms of one particle (MRC) against one average (MRC), printed as a
    table in RELION's conventions (Euler angles in degrees, origins in Angstrom).
``faml run PARTICLES --out DIR``
    Reference-free averaging (K = 1) or classification (K > 1) by FAML (or FA, the
    alignment-only baseline) of a RELION particles STAR file or a folder / glob of MRC files.
``faml prepare-stacks PARTICLES --out DIR``
    Reconstructs RELION 5 / WarpTools 2D tilt-stack particles into 3D subtomograms and
    weights in ``DIR/subtomograms`` (``faml run`` on such a set does it itself).
``faml simulate --structure PATH ... --n N --box B --voxel-size A --snr S --out DIR``
    Simulated subtomograms with known truth: tilt series with CTF, MTF and noise, reconstructed
    (``--mode realistic``), or the 3D wedge-and-noise model (``--mode fast``); ``--crowded``:
    subtomograms cut from crowded tomograms (neighbours, WBP streaks, dose, picking errors).
``faml evaluate RUN_DIR --truth SIM_DIR`` / ``faml evaluate --map MAP --truth TRUTH``
    Scores a run (or one map) against the truth of a simulation: correlation, FSC, pose
    errors, F1, the oracle average.
``faml report RUN_DIR [--truth PATH]``
    Rebuilds ``RUN_DIR/report.html``, the run's self-contained HTML report (a run writes it
    after every iteration).
``faml export RUN_DIR --to relion``
    Low-passed class maps, a particles STAR file and the ``relion_refine --ref`` command of
    a finished run.
``faml demo``
    Simulates a small data set, runs ``faml run`` on it and says how well the map matches the
    truth.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback

from faml import __version__

logger = logging.getLogger(__name__)


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


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from faml.geometry.masks import reference_mask
    from faml.io.mrc import read_volume
    from faml.io.particles import with_ctf_form
    from faml.ml.config import RunConfig, Tuning
    from faml.ml.engine import run
    from faml.ml.phase import iterations_in_all, random_starts
    from faml.parallel import make_executor
    from faml.report import ReportHook

    tilt = (float(args.tilt_range[0]), float(args.tilt_range[1]))
    if not -90.0 < tilt[0] < tilt[1] < 90.0:
        raise ValueError(
            f"--tilt-range {tilt[0]:g} {tilt[1]:g}: it must satisfy -90 < MIN < MAX < 90 degrees"
        )
    _check_out_writable(Path(args.out))
    table = _particles_table(args, tilt)
    table, ctf_source = with_ctf_form(table, getattr(args, "ctf_form", "auto"))
    table, dropped, weights = _validated(args, table)
    mask = reference_mask(
        table.box,
        table.voxel_size,
        mask=read_volume(args.mask)[0] if args.mask else None,
        diameter=args.particle_diameter,
    )
    tuning = Tuning(
        max_candidates=args.candidates,
        scan_step_deg=None if args.no_scan else args.scan_step,
        likelihood=args.likelihood,
        voronoi=args.voronoi,
        local_candidates=args.local_candidates,
        local_rings=args.local_rings,
        average_update=args.average_update,
        starts=args.starts,
        start_iterations=args.start_iterations,
        fa_iterations=args.fa_iterations,
        grid_iterations=args.grid_iterations,
        verify=not args.no_verify,
    )
    if args.paper_exact:
        paper = Tuning.paper()
        tuning = replace(
            tuning, **{k: getattr(paper, k) for k in (
                "scan_step_deg", "likelihood", "voronoi", "local_candidates", "average_update",
                "starts", "fa_iterations")},
        )  # fmt: skip
    config = RunConfig(
        classes=args.classes,
        method=args.method,
        iterations=args.iterations,
        seed=args.seed,
        max_shift=args.max_shift,
        gold_standard=args.gold_standard,
        symmetry=args.symmetry,
        particle_mask_radius=_particle_mask_radius(args, table),
        tuning=tuning,
    )
    _check_out(args, table, config)
    _record_inputs(Path(args.out), table, config, dropped)
    executor = make_executor(
        args.workers,
        scheduler=args.scheduler,
        cluster=args.cluster,
        cluster_config=args.cluster_config,
        progress=sys.stderr.isatty() and not args.quiet,
    )
    try:
        ctf_row = ctf_form_row(table, ctf_source, weights)
        for line in plan_lines(args, table, config, executor, ctf_form=ctf_row):
            logger.info("%s", line)
        executor.on_progress = IterationClock(
            iterations_in_all(config),
            max(1, executor.workers),
            starts_included=random_starts(config) > 1,
        )
        result = run(
            table,
            args.out,
            config,
            mask=mask,
            executor=executor,
            batch_size=args.batch_size,
            resume=args.resume,
            command_line=sys.argv if args.argv is None else args.argv,
            on_iteration=ReportHook(),
        )
    finally:
        executor.close()
    out = Path(args.out)
    print(f"faml run: {len(result.maps)} class average(s) in {out}/class_*.mrc")
    print(
        f"faml run: particles in {out / 'particles.star'}, log and parameters in {out / 'run.json'}"
    )
    if (out / "model.star").exists():
        print(f"faml run: FSC curves and resolution per class in {out / 'model.star'}")
    print(f"faml run: report in {out / 'report.html'}")
    if args.then_export:
        _export(out, args.then_export, None, None)
    return 0


# --- input checks before any work (faml.io.validate) and the output folder ---


class InputProblems(ValueError):
    """Several problems with the input: ``lines`` (one per problem) and a summary."""

    def __init__(self, summary: str, lines: list[str], droppable: int):
        super().__init__(summary)
        self.lines, self.droppable = lines, droppable


_MOST_LINES = 20


def _validated(args: argparse.Namespace, table):
    """The table after :func:`faml.io.validate.validate_table`, the dropped, the weights.

    The weights: what the checks read in them (:class:`~faml.io.validate.WeightSummary`).

    Without ``--skip-bad`` any problem stops the run (:class:`InputProblems`); with it the
    bad particles are dropped (a warning) and listed in ``OUT/dropped_particles.txt``.
    """
    from faml.io.validate import validate_table

    check_data = not args.no_data_check
    report = validate_table(table, classes=args.classes, mask=args.mask, check_data=check_data)
    logger.info(
        "input checked: %d particles, headers in %.2f s, %s",
        len(table), report.seconds_headers,
        f"data in {report.seconds_data:.2f} s" if check_data else "data not read (--no-data-check)",
    )  # fmt: skip
    if args.skip_bad and report.particles:
        good = report.good_indices()
        if len(good) == 0:
            raise ValueError(f"none of the {len(table)} particles passed the input checks")
        dropped = report.particles
        logger.warning(
            "--skip-bad: dropped %d of %d particles that failed the input checks (listed in "
            "%s/dropped_particles.txt)", len(table) - len(good), len(table), args.out,
        )  # fmt: skip
        table = table.subset(good)
        report.particles = []  # what is left: the global problems (they count good ones)
    else:
        dropped = []
    if report.ok:
        return table, dropped, report.weights
    lines = report.lines()
    bad = len(report.bad_indices())
    if len(lines) == 1:
        raise InputProblems(lines[0], [], bad)
    shown = [f"  {line}" for line in lines[:_MOST_LINES]]
    if len(lines) > _MOST_LINES:
        shown.append(f"  ... and {len(lines) - _MOST_LINES} more")
    raise InputProblems(f"{len(lines)} problems with the input (listed above)", shown, bad)


def _check_out_writable(out) -> None:
    """``--out`` must be a folder (or not exist yet) that can be written to."""
    import os

    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == out else f" ({probe} is a file)"
        raise ValueError(f"--out {out} is not a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(probe))


_INPUTS = "inputs.json"


def _fingerprint(table, config) -> dict:
    import hashlib
    import json

    digest = hashlib.sha256()
    for p, w in zip(table.paths, table.weight_paths, strict=True):
        digest.update(f"{p}\t{w}\n".encode())
    digest.update(json.dumps(table.tilt_ranges.tolist()).encode())
    form = {"ctf_premultiplied": True} if table.ctf_premultiplied else {}  # old runs: absent
    return {
        "particles": len(table),
        "particles_sha256": digest.hexdigest(),
        "box": table.box,
        "voxel_size": table.voxel_size,
        **form,
        "config": config.to_dict(),
    }


def _check_out(args: argparse.Namespace, table, config) -> None:
    """Refuse an ``--out`` among the inputs, or one that holds another run.

    faml never writes next to its input particles: ``--out`` must not be the folder of a
    particle or weight file. A folder that holds a run (``run.json``, ``iterations/``,
    ``starts/``) of other particles or settings is refused unless ``--continue`` (resume
    it) or ``--overwrite`` (its iterations and ``run.json`` are removed first).
    """
    import json
    import shutil
    from pathlib import Path

    out = Path(args.out).resolve()
    inputs = {Path(p).parent for p in table.paths}
    inputs |= {Path(w).parent for w in table.weight_paths if w is not None}
    if out in inputs:
        raise ValueError(
            f"--out {args.out} is the folder of the input particles: faml writes nothing "
            "beside its inputs; choose another output folder"
        )
    held = [n for n in ("run.json", "iterations", "starts", "verify") if (out / n).exists()]
    if not held or args.resume:
        return
    try:
        before = json.loads((out / _INPUTS).read_text())
    except (OSError, ValueError):
        before = None
    if before == json.loads(json.dumps(_fingerprint(table, config))):
        return  # the same run again
    if not args.overwrite:
        why = "other particles or settings" if before else f"no {_INPUTS} to compare with"
        raise FileExistsError(
            f"--out {args.out} holds another run ({', '.join(held)}; {why}): add --overwrite "
            "to replace it or --continue to resume it"
        )
    logger.warning("--overwrite: removing %s from %s", ", ".join(held), args.out)
    for name in held:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _record_inputs(out, table, config, dropped) -> None:
    """``OUT/inputs.json`` (what ``_check_out`` compares) and ``OUT/dropped_particles.txt``."""
    import json

    from faml.io.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / _INPUTS, json.dumps(_fingerprint(table, config), indent=2))
    if dropped:
        lines = ["# particle (1-based, as in the input)\tfile\treason"]
        lines += [f"{p.index + 1}\t{p.path}\t{p.reason}" for p in dropped]
        write_text_atomic(out / "dropped_particles.txt", "\n".join(lines) + "\n")


def _n(count: int, noun: str) -> str:
    """``1 iteration``, ``2 iterations``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _particle_mask_radius(args: argparse.Namespace, table) -> float | None:
    """``RunConfig.particle_mask_radius`` from the options.

    ``None`` without ``--particle-mask``; with ``--particle-diameter`` the sphere of that
    diameter (its soft edge outside, as the reference mask's); else the default reference
    mask's radius.
    """
    from faml.geometry.masks import DEFAULT_MASK_RADIUS
    from faml.ml.em import PARTICLE_MASK_EDGE

    if not args.particle_mask:
        return None
    if args.particle_diameter:
        edge = PARTICLE_MASK_EDGE
        share = (args.particle_diameter / 2.0 / table.voxel_size + edge) / table.box
        return float(min(max(share, 0.1), 0.6))
    return DEFAULT_MASK_RADIUS


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_WEIGHT_KINDS = {
    "signed": "signed CTF weights",
    "binary": "binary wedges",
    "abs": "|CTF| weights (phase-flipped data)",
}


def ctf_form_row(table, source: str, weights) -> str:
    """The plan's ``CTF form`` row: the form, how it is known, what the weights hold.

    ``source``: from :func:`faml.io.particles.with_ctf_form`; ``weights``: the
    :class:`~faml.io.validate.WeightSummary` the input checks read (no file is read again).
    """
    by_range = sum(w is None for w in table.weight_paths)
    if not weights.files:
        return "tilt ranges (binary wedges)"
    if table.ctf_premultiplied:
        row = f"premultiplied ({source}): CTF\u00b2 sums, weights up to {weights.high:.3g}"
    else:
        row = f"multiplied ({source}): {_WEIGHT_KINDS[weights.kind()]}"
    if by_range:
        row += f"; {_n(by_range, 'particle')} by tilt range (binary wedges)"
    return row


def plan_lines(
    args: argparse.Namespace, table, config, executor, ctf_form: str | None = None
) -> list[str]:
    """What ``faml run`` is about to do, one line per item (logged before iteration 1).

    ``ctf_form``: the ``CTF form`` row (:func:`ctf_form_row`), if known.
    """
    from pathlib import Path

    from faml.ml.phase import random_starts, start_iterations

    cfg = config
    if cfg.method == "fa":
        method = "fa (alignment only, hard assignments)"
    elif cfg.tuning.fa_iterations:
        warm_up = _n(min(cfg.tuning.fa_iterations, cfg.iterations), "iteration")
        method = f"faml, FA warm-up for the first {warm_up}"
    else:
        method = "faml (maximum likelihood from the first iteration)"
    if random_starts(cfg) > 1:
        each = _n(start_iterations(cfg), "iteration")
        starts = f"{random_starts(cfg)} random starts of {each} each, the best continues"
    else:
        starts = "1 random start"
    if args.mask:
        mask = f"{args.mask}"
    elif args.particle_diameter:
        mask = f"soft sphere, diameter {args.particle_diameter:g} A"
    else:
        mask = f"soft sphere, radius {cfg.mask_radius:g} of the box (default)"
    if cfg.particle_mask_radius is None:
        particles = "as stored (no --particle-mask)"
    else:
        particles = (
            f"background removed, soft sphere of radius {cfg.particle_mask_radius:.2f} of the "
            "box (neighbours and streaks outside it left out)"
        )
    gold = (
        "yes: halves refined independently after the common start"
        if cfg.gold_standard
        else "no: half-sets aligned to the joint average (their FSC is optimistic)"
    )
    workers = executor.workers
    if getattr(executor, "address", None) is None:
        where = "this process (1 worker)"
    elif args.cluster:
        where = f"{args.cluster} jobs via {_describe(executor)}; {workers} worker(s) so far"
    elif args.scheduler:
        where = f"{_describe(executor)}; {workers} worker(s) connected"
    else:
        where = f"local Dask cluster, {workers} worker processes"
    out = Path(args.out).resolve()
    rows = [
        ("particles", f"{len(table)}, from {args.particles}"),
        ("box", f"{table.box}^3 voxels, {table.voxel_size:.4g} A/voxel "
         f"({table.box * table.voxel_size:.4g} A)"),
        *([("CTF form", ctf_form)] if ctf_form else []),
        ("classes K", f"{cfg.classes}"),
        ("method", f"{method}; {starts}; at most {_n(cfg.iterations, 'iteration')}"),
        ("symmetry", cfg.symmetry),
        ("gold standard", gold),
        ("mask", mask),
        ("particle mask", particles),
        ("map step", f"{where}, {args.batch_size} particles per task"),
        ("output", f"{out}" + (" (--continue: after its last complete iteration)"
                               if args.resume else "")),
    ]  # fmt: skip
    return ["faml run plan:"] + [f"  {k:<14}{v}" for k, v in rows]


class IterationClock:
    """Progress hook of the executor: logs the expected time per iteration once.

    After the first tasks of the first iteration (one per worker, so that every worker has
    delivered, or the whole iteration), the particles per second so far give the expected
    map-step time of an iteration (particles / rate) and of the whole run.
    """

    def __init__(self, iterations: int, workers: int, starts_included: bool = False):
        self.iterations, self.workers = iterations, workers
        self.starts_included = starts_included
        self.calls, self.done = 0, False

    def __call__(self, label: str, done: int, total: int, seconds: float) -> None:
        """After each task of the executor (:data:`faml.parallel.executor.ProgressHook`)."""
        if self.done or not label.startswith("iteration"):
            return
        self.calls += 1
        if (self.calls < self.workers and done < total) or seconds <= 0:
            return
        self.done = True
        rate = done / seconds
        per_iteration = total / rate
        logger.info(
            "%s: %.3g particles/s after %d of %d particles: about %s per iteration "
            "(map step), up to %s for %s%s",
            label, rate, done, total, _duration(per_iteration),
            _duration(per_iteration * self.iterations), _n(self.iterations, "iteration"),
            " (the random starts' included)" if self.starts_included else "",
        )  # fmt: skip


# --- RELION 5 / Dynamo inputs (faml.io.relion5, faml.io.tiltstacks, faml.io.dynamo) ---


def _particles_table(args: argparse.Namespace, tilt: tuple[float, float]):
    """The particle table of ``faml run``.

    A STAR file (RELION 3.1-5, optimisation set, 2D stacks reconstructed into
    ``OUT/subtomograms``) or MRC files (tilt ranges from ``--dynamo-table``).
    """
    from pathlib import Path

    from faml.io.particles import from_mrc_files
    from faml.io.star import read_particles_star

    source = Path(args.particles)
    if source.suffix == ".star":
        if getattr(args, "dynamo_table", None):
            raise ValueError("--dynamo-table goes with MRC particle files, not a STAR file")
        return read_particles_star(
            source,
            tilt_range=tilt,
            voxel_size=args.voxel_size,
            cache_dir=Path(args.out) / "subtomograms",
            tomograms_star=getattr(args, "tomograms", None),
            strict=False,
        )
    table = from_mrc_files(
        args.particles, tilt_range=tilt, voxel_size=args.voxel_size, strict=False
    )
    if getattr(args, "dynamo_table", None):
        from faml.io.dynamo import apply_dynamo_table, read_dynamo_table

        table, _, _ = apply_dynamo_table(table, read_dynamo_table(args.dynamo_table))
        logger.info("tilt ranges of %d particles from %s", len(table), args.dynamo_table)
    return table


def _add_interop_options(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--tomograms",
        default=None,
        metavar="STAR",
        help="RELION 5 tomograms STAR file of a 2D tilt-stack particle set (default: from "
        "the optimisation set, or the *tomograms.star beside the particles file)",
    )
    r.add_argument(
        "--dynamo-table",
        default=None,
        metavar="TBL",
        help="Dynamo .tbl giving each MRC particle's tilt range (columns 14-15), matched by "
        "the tag in the file name",
    )


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


def _add_prepare_stacks(sub) -> None:
    ps = _command(
        sub,
        "prepare-stacks",
        "reconstruct RELION 5 / WarpTools 2D tilt-stack particles into 3D (faml run does it too)",
    )
    ps.add_argument("particles", help="RELION 5 particles STAR (2D stacks) or optimisation set")
    ps.add_argument("--out", required=True, help="output folder (subtomograms/ inside it)")
    ps.add_argument("--tomograms", default=None, help="tomograms STAR file (default: found)")
    ps.set_defaults(func=_cmd_prepare_stacks)


def _describe(executor) -> str:
    address = getattr(executor, "address", None)
    if address is None:
        return "this process"
    dashboard = getattr(executor, "dashboard", None)
    return f"Dask scheduler {address}" + (f", dashboard {dashboard}" if dashboard else "")


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


def _add_report_export(sub) -> None:
    """The ``report`` and ``export`` subcommands."""
    p = _command(sub, "report", "rebuild a run's HTML report (RUN_DIR/report.html)")
    p.add_argument("run_dir", help="a faml run directory (finished or in progress)")
    p.add_argument(
        "--truth", default=None,
        help="simulation directory or true map (MRC): also plot the FSC against the truth",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="the page (default RUN_DIR/report.html)")
    p.set_defaults(func=_cmd_report)
    x = _command(sub, "export", "a finished run as the initial model of a refinement (RELION)")
    x.add_argument("run_dir", help="a finished faml run directory")
    x.add_argument("--to", choices=("relion",), default="relion", help="target program")
    x.add_argument(
        "--lowpass", type=float, default=None, metavar="ANGSTROM",
        help="low-pass of the maps (default: each class's half-set FSC 0.143 resolution)",
    )  # fmt: skip
    x.add_argument("--out", default=None, help="output folder (default RUN_DIR/relion)")
    x.add_argument(
        "--relion-version", choices=("3.1", "4", "5"), default="5",
        help="the RELION that reads the export: 3.1 gets a CTF-premultiplied set's weights "
        "as sqrt(CTF^2 sum) (it squares them) and a RELION 3.1 STAR file",
    )  # fmt: skip
    x.set_defaults(func=_cmd_export)


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


def _add_tilt_range(parser, help_text: str) -> None:
    """The ``--tilt-range MIN MAX`` option (degrees, default -60 60) on a parser or group."""
    parser.add_argument(
        "--tilt-range",
        nargs=2,
        type=float,
        default=(-60.0, 60.0),
        metavar=("MIN", "MAX"),
        help=help_text,
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text as written (examples keep their lines) with each option's default.

    The default is added unless the help already says it, or it is ``None`` / ``False``
    (unset options and switches); ``-60 60`` rather than ``(-60.0, 60.0)``.
    """

    def __init__(self, prog: str, **kwargs):
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Wrap one-line paragraphs; keep those of several lines (examples) as written."""
        import textwrap

        paragraphs = []
        for para in text.split("\n\n"):
            if "\n" in para.strip():
                paragraphs.append(textwrap.indent(para, indent))
            else:
                paragraphs.append(
                    textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                  subsequent_indent=indent)
                )  # fmt: skip
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            return text
        if isinstance(default, (tuple, list)):
            default = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        return text + f" (default: {default})".replace("%", "%%")


EXAMPLES = """\
examples:
  faml run particles.star --out run1 --classes 2 --workers 8
  faml run "subtomos/*.mrc" --out run2 --tilt-range -60 60 --gold-standard
  faml run particles.star --out run1 --continue      # after an interruption
  faml report run1                                    # rebuild run1/report.html
  faml demo                                           # a small simulated run, end to end

'faml COMMAND --help' describes each command and its options.
"""

RUN_EXAMPLES = """\
examples:
  faml run particles.star --out run1 --classes 2 --workers 8
  faml run "subtomos/*.mrc" --out run2 --voxel-size 4.2 --tilt-range -54 60 --method fa
  faml run particles.star --out run3 --gold-standard --symmetry C6 --particle-diameter 250
  faml run particles.star --out run1 --continue       # resume after the last saved iteration
  faml run particles.star --out run4 --scheduler tcp://head:8786

outputs in --out: class_KKK.mrc, particles.star, model.star, run.json, report.html and a
checkpoint per iteration (iterations/NNN/).
"""


def _output_options() -> argparse.ArgumentParser:
    """``--quiet``, ``--verbose`` and ``--debug``, accepted before or after the command.

    On the commands their default is ``SUPPRESS``, so that ``faml -q run ...`` is not undone
    by the command's own (unset) option.
    """
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("messages")
    _add_output_flags(g, argparse.SUPPRESS)
    return parent


def _add_output_flags(group, default) -> None:
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default,
        help="only warnings and errors; no plan, no progress bar",
    )  # fmt: skip
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default,
        help="debug messages, Dask's included",
    )  # fmt: skip
    group.add_argument(
        "--debug", action="store_true", default=default,
        help="on an error, the full traceback as well",
    )  # fmt: skip


def _command(sub, name: str, help_text: str, description: str = "", epilog: str = ""):
    """A subcommand with faml's help formatter and the message options."""
    return sub.add_parser(
        name,
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog or None,
        formatter_class=HelpFormatter,
        parents=[_output_options()],
    )


def _add_run(sub) -> None:
    """The ``run`` subcommand, its options in groups."""
    r = _command(
        sub, "run", "average (K = 1) or classify (K > 1) particles",
        "Reference-free averaging (K = 1) or classification (K > 1) of subtomograms by FAML "
        "(or FA, alignment only). Prints a short plan, a progress bar per iteration (on a "
        "terminal) and the expected time per iteration; writes the maps, a RELION particles "
        "STAR file, model.star and report.html into --out, with a checkpoint per iteration.",
        RUN_EXAMPLES,
    )  # fmt: skip
    r.add_argument("particles", help="RELION particles STAR file, or a folder / glob of MRC files")

    i = r.add_argument_group("input")
    _add_tilt_range(i, "tilt range (degrees, about Y) of particles without a rlnCtfImage weight")
    i.add_argument(
        "--voxel-size", type=float, default=None, metavar="A",
        help="Angstrom per voxel when the files do not say",
    )  # fmt: skip
    i.add_argument(
        "--skip-bad", action="store_true",
        help="drop particles that fail the input checks (listed in OUT/dropped_particles.txt) "
        "instead of stopping",
    )  # fmt: skip
    i.add_argument(
        "--ctf-form", choices=("auto", "multiplied", "premultiplied"), default="auto",
        help="how the rlnCtfImage weights relate to the data: auto, as the STAR file's "
        "rlnCtfDataAreCtfPremultiplied says (absent: multiplied); multiplied, the weight "
        "multiplies the reference (wedge, |CTF| or signed CTF, in [-1, 1]); premultiplied, "
        "CTF-premultiplied data with CTF\u00b2 sums (RELION 4/5 pseudo-subtomograms)",
    )  # fmt: skip
    i.add_argument(
        "--no-data-check", action="store_true",
        help="check the particles' headers only, not their voxels (NaN, Inf, constant): "
        "saves one read of the data set",
    )  # fmt: skip
    _add_interop_options(i)

    o = r.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    o.add_argument(
        "--continue", dest="resume", action="store_true",
        help="continue after the last complete iteration in --out",
    )  # fmt: skip
    o.add_argument(
        "--overwrite", action="store_true",
        help="replace a run of other particles or settings in --out",
    )  # fmt: skip
    o.add_argument(
        "--then-export", choices=("relion",), default=None,
        help="at the end, also export the maps and particles for RELION (see faml export)",
    )  # fmt: skip

    m = r.add_argument_group("model")
    m.add_argument("--classes", type=int, default=1, metavar="K", help="number of classes K")
    m.add_argument(
        "--method", choices=("faml", "fa"), default="faml",
        help="faml: candidates + maximum likelihood; fa: alignment only",
    )  # fmt: skip
    m.add_argument("--iterations", type=int, default=15, metavar="N", help="most iterations")
    m.add_argument(
        "--symmetry", default="C1", metavar="GROUP",
        help="point group of the averages: C1, Cn or Dn (RELION's axes: n-fold about z)",
    )  # fmt: skip
    m.add_argument(
        "--gold-standard", action="store_true",
        help="refine the two random halves independently after the common start (RELION's "
        "gold standard): honest half-map FSC, mask-corrected, in model.star",
    )  # fmt: skip
    m.add_argument(
        "--mask", metavar="MRC",
        help="reference mask, values 0..1, the particles' box (used for alignment, "
        "likelihood and the maps; default: a soft sphere of radius 0.45 box)",
    )  # fmt: skip
    m.add_argument(
        "--particle-diameter", type=float, default=None, metavar="A",
        help="soft spherical mask of this diameter in Angstrom instead",
    )  # fmt: skip
    m.add_argument("--seed", type=int, default=0, help="the seed of every random choice")

    a = r.add_argument_group("search and likelihood")
    a.add_argument(
        "--candidates", type=int, default=20, metavar="N",
        help="candidates per particle and class",
    )  # fmt: skip
    a.add_argument(
        "--max-shift", type=float, default=None, metavar="VOXELS",
        help="largest translation (default box/4)",
    )  # fmt: skip
    a.add_argument(
        "--scan-step", type=float, default=15.0, metavar="DEG",
        help="rotation step of the phase-aware scan that adds candidates",
    )  # fmt: skip
    a.add_argument(
        "--no-scan", action="store_true", help="magnitude-only candidate search (the paper)"
    )
    a.add_argument(
        "--likelihood", choices=("scaled", "plain"), default="scaled",
        help="scaled: the reference's amplitude fitted per candidate; plain: the paper's",
    )  # fmt: skip
    a.add_argument(
        "--local-candidates", type=int, default=2, metavar="N",
        help="best candidates per class that get six neighbours per ring (0: none)",
    )  # fmt: skip
    a.add_argument(
        "--local-rings", type=int, default=2, metavar="N",
        help="rings of neighbours, at 5, 10, ... degrees from the candidate",
    )  # fmt: skip
    a.add_argument(
        "--voronoi", action="store_true",
        help="weigh candidates by their Voronoi cells (the paper; off: see the docs)",
    )  # fmt: skip

    par = r.add_argument_group(
        "parallel", "Where the map step runs; the results do not depend on it."
    )
    par.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="local worker processes (more than 1: a Dask LocalCluster)",
    )  # fmt: skip
    par.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="run the map step on a running Dask scheduler (tcp://HOST:PORT or a scheduler "
        "JSON file) and its workers",
    )  # fmt: skip
    par.add_argument(
        "--cluster", choices=("slurm",), default=None,
        help="start Dask workers as batch jobs (needs faml[cluster] and --cluster-config)",
    )  # fmt: skip
    par.add_argument(
        "--cluster-config", default=None, metavar="FILE",
        help="YAML: jobs and the SLURM options (see the README's SLURM section)",
    )  # fmt: skip
    par.add_argument(
        "--batch-size", type=int, default=8, metavar="N",
        help="particles per task of the map step",
    )  # fmt: skip

    adv = r.add_argument_group(
        "advanced", "Departures from the published FAML, each measured (see the README)."
    )
    adv.add_argument(
        "--starts", type=int, default=3, metavar="N",
        help="random starts, each run for --start-iterations iterations; the best-fitting "
        "one continues (1: a single start)",
    )  # fmt: skip
    adv.add_argument(
        "--start-iterations", type=int, default=3, metavar="N",
        help="iterations of each start before the choice",
    )  # fmt: skip
    adv.add_argument(
        "--fa-iterations", type=int, default=6, metavar="N",
        help="FAML: first iterations (the starts' included) run as FA, by the best "
        "correlation, before the likelihood takes over (0: FAML throughout)",
    )  # fmt: skip
    adv.add_argument(
        "--grid-iterations", type=int, default=0, metavar="N",
        help="FAML: first iterations whose candidates are the most probable poses of the "
        "whole rotation x shift grid of the scan (soft search over all orientations at low "
        "resolution) instead of the fast alignment's",
    )  # fmt: skip
    adv.add_argument(
        "--no-verify", action="store_true",
        help="skip the verification (the runner-up start continued to the end and compared "
        "with the result; the verdict then rests on the other checks only)",
    )  # fmt: skip
    adv.add_argument(
        "--particle-mask", action="store_true",
        help="remove each particle's background and multiply it by a soft sphere (the "
        "reference mask's, or --particle-diameter), as RELION's --zero_mask: neighbours and "
        "streaks stay out of the alignment and the noise estimate (crowded data: give "
        "--particle-diameter just above the particle's size)",
    )  # fmt: skip
    adv.add_argument(
        "--average-update", choices=("compensated", "paper"), default="compensated",
        help="M-step average: S / max(W, 0.1 L) (L: n for binary wedges), or the paper's eq. 10",
    )  # fmt: skip
    adv.add_argument(
        "--paper-exact", action="store_true",
        help="the published method's choices: --no-scan --likelihood plain --voronoi "
        "--local-candidates 0 --average-update paper --starts 1 --fa-iterations 0 (the "
        "random-pose start and FSC filtering stay)",
    )  # fmt: skip
    r.set_defaults(func=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``faml`` command."""
    parser = argparse.ArgumentParser(
        prog="faml",
        description="Reference-free subtomogram averaging (K = 1) and classification (K > 1) "
        "for cryo-electron tomography by FAML: fast rotational alignment proposes candidate "
        "poses, maximum likelihood integrates over them. RELION conventions (STAR, MRC).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"faml {__version__}")
    _add_output_flags(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    p = _command(
        sub, "align", "candidate poses of one particle against one average",
        "Candidate rigid transforms of one particle (MRC) against one average (MRC), best "
        "first, in RELION's conventions (ZYZ Euler angles in degrees, origins in Angstrom).",
    )  # fmt: skip
    p.add_argument("particle", help="particle MRC (cubic)")
    p.add_argument("average", help="average MRC (same box)")
    wedge = p.add_mutually_exclusive_group()
    _add_tilt_range(wedge, "tilt range (degrees) about Y")
    wedge.add_argument(
        "--weight", help="3D Fourier weight MRC (RELION rlnCtfImage layout) instead of --tilt-range"
    )
    p.add_argument(
        "--voxel-size", type=float, default=None, help="Angstrom per voxel if the header has none"
    )
    p.add_argument("--candidates", type=int, default=20, help="most candidates returned")
    p.add_argument(
        "--max-shift",
        type=float,
        default=None,
        help="largest shift searched, voxels (default box/4)",
    )
    p.add_argument(
        "--band-limit",
        type=int,
        default=None,
        help="outermost Fourier shell used, voxels (default box/2 - 1)",
    )
    p.set_defaults(func=_cmd_align)

    _add_run(sub)
    _add_prepare_stacks(sub)

    s = _command(
        sub, "simulate", "simulated subtomograms with known truth (tilt series, CTF, noise)"
    )
    s.add_argument(
        "--structure", action="append", required=True, metavar="PATH",
        help="atomic model (PDB/mmCIF, .gz too) or density map (MRC); repeat for K classes",
    )  # fmt: skip
    s.add_argument("--n", type=int, required=True, help="particles per structure")
    s.add_argument("--box", type=int, required=True, help="box size, voxels")
    s.add_argument("--voxel-size", type=float, required=True, help="Angstrom per voxel")
    s.add_argument(
        "--snr", type=float, required=True,
        help="signal variance / noise variance of each final subtomogram",
    )  # fmt: skip
    _add_tilt_range(s, "tilt range (degrees, about Y; may be asymmetric)")
    s.add_argument("--tilt-step", type=float, default=2.0, help="tilt increment, degrees")
    s.add_argument("--defocus", type=float, default=3.0, help="defocus, um (underfocus > 0)")
    s.add_argument(
        "--defocus-jitter", type=float, default=0.0, help="per-particle defocus spread, um (s.d.)"
    )
    s.add_argument("--no-ctf", action="store_true", help="no CTF and no detector MTF")
    s.add_argument(
        "--ctf-form", choices=("flipped", "signed", "premultiplied"), default=None,
        help="how particles carry the CTF: flipped (default; phase-flipped images, weight the "
        "mean |CTF x MTF|), signed (not flipped, weight the mean signed CTF x MTF in [-1, 1]) "
        "or premultiplied (RELION 4/5 pseudo-subtomograms: images times CTF x MTF, weight "
        "their CTF^2 sum, Subtomograms/<tomo>/<N>_data.mrc and _weights.mrc); realistic and "
        "--crowded modes; the same poses, noise and noise level in every form",
    )  # fmt: skip
    s.add_argument("--no-phase-flip", action="store_true", help="the same as --ctf-form signed")
    s.add_argument(
        "--rotation-axis", choices=("x", "y", "z"), default=None,
        help="rotate about this axis only (preferred orientation); default uniform on SO(3)",
    )  # fmt: skip
    s.add_argument("--max-shift", type=float, default=2.0, help="largest shift per axis, voxels")
    s.add_argument(
        "--resolution", type=float, default=None,
        help="low-pass of atomic-model densities, Angstrom (default: the voxel grid's)",
    )  # fmt: skip
    s.add_argument(
        "--mode", choices=("realistic", "fast"), default="realistic",
        help="realistic: tilt series + CTF + reconstruction; fast: 3D wedge and noise",
    )  # fmt: skip
    c = s.add_argument_group(
        "crowded tomograms",
        "subtomograms cut from simulated crowded tomograms: targets and other proteins packed "
        "in a slab, tilt series with CTF, MTF, dose and noise, phase flip (--ctf-form) and "
        "weighted back-projection, boxes cut at picks with an error (faml.simulate.crowded)",
    )
    c.add_argument(
        "--crowded", action="store_true",
        help="simulate crowded tomograms and cut the particles from them",
    )  # fmt: skip
    c.add_argument(
        "--tomograms", type=int, default=None,
        help="number of tomograms (default: enough for the targets to fill ~10%% of each)",
    )  # fmt: skip
    c.add_argument(
        "--crowding", type=float, default=0.25,
        help="share of the specimen filled by the proteins' bounding spheres, 0-0.35",
    )  # fmt: skip
    c.add_argument(
        "--crowd-structure", action="append", default=None, metavar="PATH",
        help="other protein (model or map, fits the box) placed around the targets; repeat; "
        "default four blob-shaped pseudo-proteins",
    )  # fmt: skip
    c.add_argument(
        "--pick-error", type=float, default=1.0,
        help="picking error, voxels (s.d. per axis); the true shift includes it",
    )  # fmt: skip
    c.add_argument("--dose", type=float, default=3.0, help="exposure per tilt, e/A^2 (0: none)")
    c.add_argument(
        "--tomogram-size", nargs=2, type=float, default=(4.5, 2.0), metavar=("XY", "Z"),
        help="tomogram side in x and y and thickness, in boxes",
    )  # fmt: skip
    c.add_argument(
        "--write-tomograms", action="store_true", help="also write tomograms/tomogram_NNN.mrc"
    )
    s.add_argument("--seed", type=int, default=0, help="the seed of every random draw")
    s.add_argument("--workers", type=int, default=1, help="local worker processes")
    s.add_argument("--out", required=True, help="simulation directory (created)")
    s.add_argument("--overwrite", action="store_true", help="replace a simulation in --out")
    s.set_defaults(func=_cmd_simulate)

    e = _command(sub, "evaluate", "score a run (or one map) against the truth of a simulation")
    e.add_argument("run_dir", nargs="?", default=None, help="a faml run directory")
    e.add_argument(
        "--truth", required=True,
        help="the simulation directory (with RUN_DIR) or the true map MRC (with --map)",
    )  # fmt: skip
    e.add_argument("--map", default=None, help="one map MRC to score against --truth MRC")
    e.add_argument("--json", default=None, help="also write the figures to this JSON file")
    e.add_argument(
        "--symmetry", default=None, help="Cn or Dn: pose errors modulo this symmetry (e.g. C7, D7)"
    )
    e.add_argument("--no-oracle", action="store_true", help="skip the true-pose average")
    e.add_argument(
        "--voxel-size", type=float, default=None, help="Angstrom per voxel (--map, if unset)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the oracle's half split")
    e.set_defaults(func=_cmd_evaluate)

    _add_report_export(sub)

    d = _command(
        sub, "demo", "simulate a small data set, run FAML, score the map against the truth"
    )
    d.add_argument("--out", default="demo_out", help="output directory")
    d.add_argument("--particles", type=int, default=100, help="particles to simulate")
    d.add_argument("--snr", type=float, default=0.05, help="signal variance / noise variance")
    d.add_argument("--iterations", type=int, default=15, help="most iterations")
    d.add_argument("--workers", type=int, default=2, help="local worker processes")
    d.add_argument("--seed", type=int, default=0, help="seed of the simulation and the run")
    d.set_defaults(func=_cmd_demo)
    return parser


class _StderrHandler(logging.Handler):
    """Log records to the current ``sys.stderr``.

    Through ``tqdm.write``, so that a progress bar on the terminal is redrawn below the
    message instead of being torn.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    """``12:03:04 message``; warnings and errors say so; ``--verbose`` adds the logger."""

    def __init__(self, verbose: bool):
        super().__init__(datefmt="%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            self._style._fmt = "%(asctime)s %(name)s %(levelname)s: %(message)s"
        elif record.levelno >= logging.WARNING:
            self._style._fmt = "%(asctime)s %(levelname)s: %(message)s"
        else:
            self._style._fmt = "%(asctime)s %(message)s"
        return super().format(record)


@contextlib.contextmanager
def _logging(args: argparse.Namespace):
    """Show faml's messages on stderr for one command; the logger is restored afterwards.

    Only the ``faml`` logger gets a handler (the CLI owns it; the library never configures
    logging). Records still propagate, so an application's own handlers see them too.
    """
    log = logging.getLogger("faml")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _StderrHandler(level)
    handler.setFormatter(_Formatter(args.verbose))
    saved = log.level
    log.addHandler(handler)
    log.setLevel(level)
    if not args.verbose:  # Dask's own start-up and shut-down chatter only with --verbose
        import dask.config  # read by distributed when it is imported (later, if at all)

        dask.config.set({"logging.distributed": "warning", "logging.dask_jobqueue": "warning"})
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved)


def _saved_iteration(out) -> str:
    """What ``--continue`` would resume from in the run folder ``out``."""
    from pathlib import Path

    from faml.ml.rundir import last_complete_iteration

    out = Path(out)
    done = last_complete_iteration(out)
    if done is not None:
        return f"iteration {int(done.name)} is saved in {out}"
    starts = sorted(p for p in (out / "starts").glob("[0-9][0-9]") if last_complete_iteration(p))
    if starts:
        return f"random starts up to start {int(starts[-1].name)} are saved in {out}"
    return f"no iteration was complete in {out}"


def explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, str | None, int]:
    """An error as ``(message, hint or None, exit status)`` for a person at the terminal.

    2: bad input or usage (the user can fix the command or the files); 3: the Dask cluster
    went away; 130: interrupted; 1: anything else.
    """
    import errno

    from faml.parallel import ExecutorLost

    command = getattr(args, "command", "")
    help_hint = f"see 'faml {command} --help'"
    out = getattr(args, "out", None)
    if isinstance(exc, KeyboardInterrupt):
        if command == "run" and out is not None:
            return (
                f"interrupted; {_saved_iteration(out)}",
                "run the same command with --continue to resume from it",
                130,
            )
        return "interrupted", None, 130
    if isinstance(exc, ExecutorLost):  # the message says what is saved and how to go on
        return str(exc), "check that the scheduler and its workers are up", 3
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or str(exc)
        return f"no such file or folder: {name}", "check the path; " + help_hint, 2
    if isinstance(exc, FileExistsError):
        hint = "choose another output folder" + (
            " or add --overwrite" if getattr(args, "overwrite", None) is False else ""
        )
        return str(exc) if exc.filename is None else f"already exists: {exc.filename}", hint, 2
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return f"{exc.strerror}: {exc.filename}", "check the path; " + help_hint, 2
    if isinstance(exc, PermissionError):
        where = f" (--out {out})" if out is not None else ""
        return (
            f"permission denied: {exc.filename or exc}",
            f"choose a file or folder you can write to{where}",
            2,
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        hint = "free some space or choose another --out"
        if command == "run":
            hint += "; the saved iterations are kept and --continue resumes"
        return f"no space left on the device writing {exc.filename or out or '?'}", hint, 1
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        return (f"{text}: {exc.filename}" if exc.filename else text), None, 1
    if isinstance(exc, ValueError):  # faml's own checks: already a sentence for the user
        text = str(exc)
        if isinstance(exc, InputProblems) and exc.droppable:
            some = "it" if exc.droppable == 1 else f"the {exc.droppable} bad particles"
            hint = f"--skip-bad drops {some} and runs on the rest"
        elif "not a readable MRC file" in text:
            hint = "is it a complete MRC volume? (e.g. 'header FILE' in IMOD)"
        elif "not a readable STAR file" in text:
            hint = "is it a RELION STAR file? (data_ blocks and loop_ tables)"
        else:
            hint = help_hint
        return text, hint, 2
    return (
        f"{type(exc).__name__}: {exc}",
        "run again with --debug for the full traceback (and please report it)",
        1,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``faml`` console script.

    Errors are one line ``faml: error: ...`` and a ``hint: ...`` line on stderr (the full
    traceback too with ``--debug``); the exit status says what kind (:func:`explain`).
    """
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else ["faml", *argv]
    with _logging(args):
        try:
            return int(args.func(args))
        except (Exception, KeyboardInterrupt) as exc:
            message, hint, status = explain(exc, args)
            if args.debug:
                traceback.print_exc(file=sys.stderr)
            for line in getattr(exc, "lines", None) or ():
                print(line, file=sys.stderr)
            print(f"faml: error: {message}", file=sys.stderr)
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
            return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
