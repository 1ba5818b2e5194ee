"""``faml run``: the input checks, the run's settings from the options, the run itself.

The output folder's checks are in :mod:`faml.cli.out_folder`, the plan and the clock in
:mod:`faml.cli.plan`. faml's numerical modules (:mod:`faml.ml`, :mod:`faml.io`,
:mod:`faml.parallel`, :mod:`faml.geometry`) are imported inside the functions: they load
numpy, numba and dask, and ``faml --help`` imports this module without running anything.
"""

from __future__ import annotations

import argparse
import logging
import sys

from faml.cli.commands import _export
from faml.cli.out_folder import _check_out, _check_out_writable, _record_inputs
from faml.cli.plan import IterationClock, ctf_form_row, plan_lines

logger = logging.getLogger("faml.cli")


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace
    from pathlib import Path

    from faml.geometry.masks import reference_mask
    from faml.io.mrc import read_volume
    from faml.io.particles import with_ctf_form
    from faml.io.references import read_references
    from faml.ml.config import RunConfig, Tuning
    from faml.ml.engine import run
    from faml.ml.phase import iterations_in_all, random_starts
    from faml.ml.stability import run_replicates, write_stability
    from faml.parallel import make_executor
    from faml.report import ReportHook

    if args.junk < 0:
        raise ValueError(f"--junk {args.junk}: give a number of junk classes >= 0")
    if args.stability < 0 or (args.stability and args.classes + args.junk < 2):
        raise ValueError(
            f"--stability {args.stability}: it needs a number of replicates >= 1 and "
            f"--classes 2 or more (got --classes {args.classes})"
        )
    tilt = (float(args.tilt_range[0]), float(args.tilt_range[1]))
    if not -90.0 < tilt[0] < tilt[1] < 90.0:
        raise ValueError(
            f"--tilt-range {tilt[0]:g} {tilt[1]:g}: it must satisfy -90 < MIN < MAX < 90 degrees"
        )
    consensus = _check_consensus(args)
    _check_out_writable(Path(args.out))
    table = _particles_table(args, tilt)
    if args.local_search is not None and not consensus:
        table = _with_priors(args, table)
    if args.select_classes:
        table = _selected_classes(args, table)
    table, ctf_source = with_ctf_form(table, getattr(args, "ctf_form", "auto"))
    table, dropped, weights = _validated(args, table)
    mask = reference_mask(
        table.box,
        table.voxel_size,
        mask=read_volume(args.mask)[0] if args.mask else None,
        diameter=args.particle_diameter,
    )
    focus = _focus_mask(args, table)  # None for --focus-mask auto: made after a first run
    auto = getattr(args, "focus_mask", None) == AUTO
    references = None
    if args.reference:
        references = read_references(
            args.reference,
            box=table.box,
            voxel_size=table.voxel_size,
            classes=args.classes,
            lowpass=args.initial_lowpass,
            mask=mask,
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
    if args.paper_exact:  # the fields the paper's preset sets, over the options given
        paper, default = Tuning.paper(), Tuning()
        tuning = replace(tuning, **{
            f.name: getattr(paper, f.name) for f in fields(Tuning)
            if getattr(paper, f.name) != getattr(default, f.name)
        })  # fmt: skip
    config = RunConfig(
        classes=args.classes + args.junk,
        junk_classes=args.junk,
        method=args.method,
        iterations=args.iterations,
        seed=args.seed,
        max_shift=args.max_shift,
        gold_standard=args.gold_standard,
        symmetry=args.symmetry,
        particle_mask_radius=_particle_mask_radius(args, table),
        references=1 if consensus else 0 if references is None else len(references),
        initial_lowpass=args.initial_lowpass,
        local_search_deg=CONSENSUS_LOCAL_DEG
        if consensus and args.local_search is None
        else args.local_search,
        focused=focus is not None or auto,
        tuning=tuning,
    )
    _check_out(args, table, config, mask, references, focus)
    _record_inputs(Path(args.out), table, config, dropped, mask, references, focus)
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
        first = _consensus_config(config) if consensus else None
        executor.on_progress = IterationClock(
            iterations_in_all(config) * (1 + args.stability)
            + (iterations_in_all(first) if consensus else 0),
            max(1, executor.workers),
            starts_included=random_starts(first or config) > 1,
        )
        if consensus:
            table, references = _run_consensus(
                table, first, Path(args.out), args, mask=mask, executor=executor,
                batch_size=args.batch_size, resume=args.resume,
            )  # fmt: skip
        if auto:
            focus = _auto_focus(
                table, config, Path(args.out), mask=mask, executor=executor,
                batch_size=args.batch_size, resume=args.resume, references=references,
            )  # fmt: skip
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
            references=references,
            focus_mask=focus,
        )
        if args.stability:
            found = run_replicates(
                table, args.out, config, result, args.stability, mask=mask, executor=executor,
                batch_size=args.batch_size, resume=args.resume, references=references,
                focus_mask=focus,
            )  # fmt: skip
            write_stability(args.out, found, table, result.classes)
            ReportHook()(Path(args.out), None)
    finally:
        executor.close()
    import numpy as np

    out = Path(args.out)
    print(f"faml run: {len(result.maps)} class average(s) in {out}/class_*.mrc")
    print(
        f"faml run: particles in {out / 'particles.star'}, log and parameters in {out / 'run.json'}"
    )
    if (out / "model.star").exists():
        print(f"faml run: FSC curves and resolution per class in {out / 'model.star'}")
    if args.junk:
        share = np.mean(result.classes >= args.classes)
        first = args.classes + 1
        junk = f"{first}" if args.junk == 1 else f"{first}-{args.classes + args.junk}"
        kept = ",".join(str(k) for k in range(1, args.classes + 1))
        print(
            f"faml run: junk class(es) {junk} hold {100 * share:.1f}% of the particles; a run "
            f"without them: faml run {out / 'particles.star'} --select-classes {kept} ..."
        )
    if args.stability:
        print(f"faml run: class stability in {out / 'run.json'} and {out / 'stability.star'}")
    print(f"faml run: report in {out / 'report.html'}")
    if args.then_export:
        _export(out, args.then_export, None, None)
    return 0


# --- input checks before any work (faml.io.validate) ---


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
    report = validate_table(
        table, classes=args.classes + args.junk, mask=args.mask, check_data=check_data
    )
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


CONSENSUS_LOCAL_DEG = 15.0
"""``--consensus``: the local search's range (degrees) around the consensus poses, unless
``--local-search`` gives another. On the two-state 50S set the consensus put 99% of the
poses within 15 degrees of the truth (``benchmarks/workflows/STATES.md``)."""


def _check_consensus(args: argparse.Namespace) -> bool:
    """Whether ``--consensus`` is on; its conflicts with other options, each in one line."""
    if not getattr(args, "consensus", False):
        return False
    if args.classes < 2:
        raise ValueError("--consensus starts K > 1 classes from a consensus: give --classes 2 "
                         "or more")  # fmt: skip
    if args.reference:
        raise ValueError(
            "--consensus runs reference-free: without --reference, or give the reference and "
            "the consensus run's particles.star with --local-search instead"
        )
    if getattr(args, "focus_mask", None) not in (None, AUTO):
        raise ValueError(
            "--consensus makes its map in a frame of its own, which a focus mask drawn "
            "before cannot fit: use --focus-mask auto, or draw the mask on a consensus run's "
            "class_001.mrc and classify its particles.star with --local-search"
        )
    if getattr(args, "dynamo_table", None) and args.local_search is not None:
        raise ValueError(
            "--consensus makes its own poses: --local-search DEG then only sets the range, "
            "and the Dynamo table's poses would be ignored; leave one of them out"
        )
    return True


def _consensus_config(config):
    """The ``RunConfig`` of ``--consensus``'s first run: K = 1, reference-free, no focus."""
    from dataclasses import replace

    return replace(config, classes=1, junk_classes=0, references=0, local_search_deg=None,
                   focused=False)  # fmt: skip


def _run_consensus(table, config, out, args, **run_options):
    """``--consensus``: the K = 1 run in ``OUT/consensus``, then what the classes start from.

    Returns the table with the consensus's poses as priors and its map as the
    classification's reference (low-passed and masked as ``--reference``). A finished
    consensus (its ``run.json``) is reused with ``--continue``.
    """
    from dataclasses import replace

    from faml.io.references import read_references
    from faml.io.relion5 import star_priors
    from faml.ml.engine import run

    folder = out / "consensus"
    if not (run_options.get("resume") and (folder / "run.json").exists()):
        logger.info("--consensus: the K = 1 run first (%s)", folder)
        run(table, folder, config, **run_options)
    rotations, shifts = star_priors(str(folder / "particles.star"))
    if len(rotations) != len(table):
        raise ValueError(
            f"--consensus: {folder / 'particles.star'} holds {len(rotations)} particles, the "
            f"run {len(table)}: remove {folder} and run again"
        )
    references = read_references(
        [str(folder / "class_001.mrc")], box=table.box, voxel_size=table.voxel_size,
        classes=args.classes, lowpass=args.initial_lowpass, mask=run_options["mask"],
    )  # fmt: skip
    logger.info("--consensus: the classes start from %s and its particles' poses",
                folder / "class_001.mrc")  # fmt: skip
    return replace(table, prior_rotations=rotations, prior_shifts=shifts), references


AUTO = "auto"
"""``--focus-mask auto``: the mask comes from an unfocused run first (:func:`_auto_focus`)."""


def _auto_focus(table, config, out, **run_options):
    """The focus mask of ``--focus-mask auto``.

    The classification without a focus in ``OUT/unfocused``, then
    :func:`faml.ml.focus.focus_from_averages` of its class maps (``OUT/focus_auto.mrc``).
    """
    from dataclasses import replace

    import numpy as np

    from faml.io.mrc import write_volume
    from faml.ml.engine import run
    from faml.ml.focus import focus_from_averages

    logger.info("--focus-mask auto: the classification without a focus first (%s)",
                out / "unfocused")  # fmt: skip
    first = run(table, out / "unfocused", replace(config, focused=False), **run_options)
    focus = focus_from_averages(first.maps)
    write_volume(out / "focus_auto.mrc", focus, table.voxel_size)
    logger.info(
        "--focus-mask auto: %d voxels where the class maps differ most (%s)",
        int(np.sum(focus > 0.5)), out / "focus_auto.mrc",
    )  # fmt: skip
    return focus


def _focus_mask(args: argparse.Namespace, table):
    """``--focus-mask`` read and checked (:func:`faml.ml.focus.check_focus_mask`), or ``None``.

    ``None`` also for ``auto``: that mask is made from a first run, not read. Needs
    ``--classes`` 2 or more. Every problem is one line (a ``ValueError``).
    """
    from faml.io.mrc import read_volume
    from faml.ml.focus import check_focus_mask

    if not getattr(args, "focus_mask", None):
        return None
    if args.classes < 2:
        raise ValueError("--focus-mask decides between classes: give --classes 2 or more")
    if args.focus_mask == AUTO:
        if args.local_search is None and not getattr(args, "consensus", False):
            raise ValueError(
                "--focus-mask auto needs --local-search or --consensus: it classifies from a "
                "consensus's poses"
            )
        return None
    try:
        volume = read_volume(args.focus_mask)[0]
    except (OSError, ValueError) as exc:
        raise ValueError(f"--focus-mask {args.focus_mask}: cannot read it as MRC ({exc})") from exc
    try:
        focus = check_focus_mask(volume, table.box).astype("float32")
    except ValueError as exc:
        raise ValueError(f"{exc} ({args.focus_mask})") from exc
    if args.local_search is None and not getattr(args, "consensus", False):
        logger.warning(
            "--focus-mask without --local-search: the classes start from random subsets, "
            "which did not separate two similar states in faml's measurements (F1 0.50); give "
            "the consensus run's particles.star with --local-search to start from a split"
        )
    return focus


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

        table, rotations, shifts = apply_dynamo_table(table, read_dynamo_table(args.dynamo_table))
        logger.info("tilt ranges of %d particles from %s", len(table), args.dynamo_table)
        if getattr(args, "local_search", None) is not None:
            from dataclasses import replace

            table = replace(table, prior_rotations=rotations, prior_shifts=shifts)
            logger.info("the priors of --local-search: the poses of %s", args.dynamo_table)
    return table


def _selected_classes(args: argparse.Namespace, table):
    """The particles of the classes ``--select-classes`` names (``rlnClassNumber``)."""
    import numpy as np

    from faml.io.relion5 import star_classes

    try:
        wanted = sorted({int(c) for c in str(args.select_classes).split(",") if c.strip()})
    except ValueError:
        wanted = []
    if not wanted or min(wanted) < 1:
        raise ValueError(
            f"--select-classes {args.select_classes}: give class numbers from 1, e.g. 1,3"
        )
    source = str(args.particles)
    classes = star_classes(source) if source.endswith(".star") else None
    if classes is None or len(classes) != len(table):
        raise ValueError(
            f"--select-classes needs rlnClassNumber in the input: {source} gives none (give a "
            "faml or RELION run's particles.star)"
        )
    keep = np.flatnonzero(np.isin(classes, wanted))
    if keep.size == 0:
        raise ValueError(
            f"--select-classes {args.select_classes}: {source} has no particle in those "
            f"classes (it has classes {', '.join(str(c) for c in np.unique(classes))})"
        )
    logger.info(
        "--select-classes %s: %d of %d particles", ",".join(map(str, wanted)), keep.size,
        len(table),
    )  # fmt: skip
    return table.subset(keep)


def _with_priors(args: argparse.Namespace, table):
    """The table with the priors of ``--local-search``: its STAR file's or Dynamo table's poses."""
    from dataclasses import replace

    from faml.io.relion5 import star_priors

    if table.prior_rotations is not None:  # a Dynamo table's poses
        return table
    source = str(args.particles)
    priors = star_priors(source) if source.endswith(".star") else None
    if priors is None:
        raise ValueError(
            f"--local-search needs poses in the input: {source} gives no rlnAngleRot/Tilt/Psi "
            "(give a RELION particles STAR file with poses, e.g. a faml or RELION run's, or "
            "MRC particles with --dynamo-table)"
        )
    rotations, shifts = priors
    if len(rotations) != len(table):
        raise ValueError(
            f"--local-search: {source} gives {len(rotations)} poses for {len(table)} particles"
        )
    return replace(table, prior_rotations=rotations, prior_shifts=shifts)
