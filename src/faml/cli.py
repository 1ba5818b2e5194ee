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
    (``--mode realistic``), or the 3D wedge-and-noise model (``--mode fast``).
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
import logging
import sys

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
        raise SystemExit(
            f"faml align: particle {args.particle} is {particle.shape} but average "
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
    from pathlib import Path

    from faml.geometry.masks import reference_mask
    from faml.io.mrc import read_volume
    from faml.ml.config import RunConfig
    from faml.ml.engine import run
    from faml.parallel import make_executor

    tilt = (float(args.tilt_range[0]), float(args.tilt_range[1]))
    table = _particles_table(args, tilt)
    mask = reference_mask(
        table.box,
        table.voxel_size,
        mask=read_volume(args.mask)[0] if args.mask else None,
        diameter=args.particle_diameter,
    )
    scan_step = None if args.no_scan else args.scan_step
    likelihood, voronoi, local = args.likelihood, args.voronoi, args.local_candidates
    update, starts, fa_iterations = args.average_update, args.starts, args.fa_iterations
    if args.paper_exact:
        scan_step, likelihood, voronoi, local = None, "plain", True, 0
        update, starts, fa_iterations = "paper", 1, 0
    config = RunConfig(
        classes=args.classes,
        method=args.method,
        iterations=args.iterations,
        seed=args.seed,
        max_candidates=args.candidates,
        max_shift=args.max_shift,
        scan_step_deg=scan_step,
        likelihood=likelihood,
        voronoi=voronoi,
        local_candidates=local,
        local_rings=args.local_rings,
        average_update=update,
        starts=starts,
        start_iterations=args.start_iterations,
        fa_iterations=fa_iterations,
        chunk_size=args.batch_size,
        gold_standard=args.gold_standard,
        symmetry=args.symmetry,
    )
    logger.info("%d particles, %d^3, %.3g A/voxel", len(table), table.box, table.voxel_size)
    executor = make_executor(
        args.workers,
        scheduler=args.scheduler,
        cluster=args.cluster,
        cluster_config=args.cluster_config,
        progress=sys.stderr.isatty(),
    )
    try:
        logger.info("map step on %s (%d worker(s) now)", _describe(executor), executor.workers)
        result = run(
            table,
            args.out,
            config,
            mask=mask,
            executor=executor,
            resume=args.resume,
            command_line=sys.argv if args.argv is None else args.argv,
        )
    finally:
        executor.close()
    out = Path(args.out)
    print(f"faml run: {len(result.maps)} class average(s) in {out}/class_*.mrc")
    print(
        f"faml run: particles in {out / 'particles.star'}, log and parameters in {out / 'run.json'}"
    )
    print(f"faml run: report in {out / 'report.html'}")
    if args.then_export:
        _export(out, args.then_export, None, None)
    return 0


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
        )
    table = from_mrc_files(args.particles, tilt_range=tilt, voxel_size=args.voxel_size)
    if getattr(args, "dynamo_table", None):
        from faml.io.dynamo import apply_dynamo_table, read_dynamo_table

        table, _, _ = apply_dynamo_table(table, read_dynamo_table(args.dynamo_table))
        logger.info("tilt ranges of %d particles from %s", len(table), args.dynamo_table)
    return table


def _add_interop_options(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--tomograms",
        default=None,
        help="RELION 5 tomograms STAR file of a 2D tilt-stack particle set (default: from "
        "the optimisation set, or the *tomograms.star beside the particles file)",
    )
    r.add_argument(
        "--dynamo-table",
        default=None,
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
    ps = sub.add_parser(
        "prepare-stacks",
        help="reconstruct RELION 5 / WarpTools 2D tilt-stack particles into 3D (faml run "
        "does it too)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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

    from faml.simulate import SimulationSettings, load_structure, simulate

    settings = SimulationSettings(
        voxel_size=args.voxel_size,
        snr=args.snr,
        tilt_range=tuple(args.tilt_range),
        tilt_step=args.tilt_step,
        defocus_um=args.defocus,
        defocus_jitter_um=args.defocus_jitter,
        ctf=not args.no_ctf,
        phase_flip=not args.no_phase_flip,
        mtf=not args.no_ctf,
        rotation_axis=args.rotation_axis,
        max_shift=args.max_shift,
    )
    structures = [
        load_structure(path, args.voxel_size, args.box, resolution=args.resolution)
        for path in args.structure
    ]
    names = [Path(p).name for p in args.structure]
    with tqdm(total=args.n * len(structures), unit="particle", desc="faml simulate") as bar:
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


def _export(run_dir, to: str, lowpass: float | None, out: str | None) -> None:
    """``faml export`` and ``faml run --then-export``: the run's results for ``to``."""
    from faml.report import export_relion

    if to != "relion":  # pragma: no cover - argparse allows only relion
        raise ValueError(f"unknown export target {to!r}")
    done = export_relion(run_dir, out, lowpass_angstrom=lowpass)
    res = ", ".join(f"{r:.1f}" for r in done.resolutions)
    print(f"faml export: maps low-passed to {res} A and particles.star in {done.folder}")
    print(f"faml export: relion_refine command in {done.commands}")


def _cmd_export(args: argparse.Namespace) -> int:
    _export(args.run_dir, args.to, args.lowpass, args.out)
    return 0


def _add_report_export(sub) -> None:
    """The ``report`` and ``export`` subcommands."""
    p = sub.add_parser(
        "report",
        help="rebuild a run's HTML report (RUN_DIR/report.html)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a faml run directory (finished or in progress)")
    p.add_argument(
        "--truth", default=None,
        help="simulation directory or true map (MRC): also plot the FSC against the truth",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="the page (default RUN_DIR/report.html)")
    p.set_defaults(func=_cmd_report)
    x = sub.add_parser(
        "export",
        help="a finished run as the initial model of a refinement (RELION)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    x.add_argument("run_dir", help="a finished faml run directory")
    x.add_argument("--to", choices=("relion",), default="relion", help="target program")
    x.add_argument(
        "--lowpass", type=float, default=None, metavar="ANGSTROM",
        help="low-pass of the maps (default: each class's half-set FSC 0.143 resolution)",
    )  # fmt: skip
    x.add_argument("--out", default=None, help="output folder (default RUN_DIR/relion)")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``faml`` command."""
    parser = argparse.ArgumentParser(
        prog="faml",
        description="Reference-free subtomogram averaging and classification (FAML).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"faml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "align",
        help="candidate transforms of one particle against one average",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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

    r = sub.add_parser(
        "run",
        help="average (K = 1) or classify (K > 1) particles",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("particles", help="RELION particles STAR file, or a folder / glob of MRC files")
    r.add_argument("--out", required=True, help="output folder")
    _add_interop_options(r)
    r.add_argument("--classes", type=int, default=1, help="number of classes K")
    r.add_argument(
        "--method",
        choices=("faml", "fa"),
        default="faml",
        help="faml: candidates + maximum likelihood; fa: alignment only",
    )
    r.add_argument("--iterations", type=int, default=15, help="most iterations")
    _add_tilt_range(r, "tilt range (degrees, about Y) of particles without a rlnCtfImage weight")
    r.add_argument(
        "--max-shift", type=float, default=None, help="largest translation, voxels (default box/4)"
    )
    r.add_argument("--candidates", type=int, default=20, help="candidates per particle and class")
    r.add_argument(
        "--scan-step",
        type=float,
        default=15.0,
        help="rotation step (degrees) of the phase-aware scan that adds candidates",
    )
    r.add_argument(
        "--no-scan", action="store_true", help="magnitude-only candidate search (the paper)"
    )
    r.add_argument(
        "--likelihood",
        choices=("scaled", "plain"),
        default="scaled",
        help="scaled: the reference's amplitude fitted per candidate; plain: the paper's",
    )
    r.add_argument(
        "--voronoi",
        action="store_true",
        help="weigh candidates by their Voronoi cells (the paper; off by default, see docs)",
    )
    r.add_argument(
        "--local-candidates",
        type=int,
        default=2,
        help="best candidates per class that get six neighbours per ring (0: none)",
    )
    r.add_argument(
        "--local-rings",
        type=int,
        default=2,
        help="rings of neighbours, at 5, 10, ... degrees from the candidate",
    )
    r.add_argument(
        "--average-update",
        choices=("compensated", "paper"),
        default="compensated",
        help="M-step average: S / max(W, 0.1 n), or the paper's eq. 10",
    )
    r.add_argument(
        "--starts",
        type=int,
        default=3,
        help="random starts, each run for --start-iterations iterations; the best-fitting "
        "one continues (1: a single start)",
    )
    r.add_argument(
        "--start-iterations",
        type=int,
        default=3,
        help="iterations of each start before the choice",
    )
    r.add_argument(
        "--fa-iterations",
        type=int,
        default=6,
        help="FAML: first iterations (the starts' included) run as FA, by the best "
        "correlation, before the likelihood takes over (0: FAML throughout)",
    )
    r.add_argument(
        "--paper-exact",
        action="store_true",
        help="the published method's choices: --no-scan --likelihood plain --voronoi "
        "--local-candidates 0 --average-update paper --starts 1 --fa-iterations 0 (the "
        "random-pose start and FSC filtering stay)",
    )
    r.add_argument("--seed", type=int, default=0, help="the seed of every random choice")
    r.add_argument(
        "--workers", type=int, default=1,
        help="local worker processes (more than 1: a Dask LocalCluster)",
    )  # fmt: skip
    r.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="run the map step on a running Dask scheduler (tcp://HOST:PORT or a scheduler "
        "JSON file) and its workers",
    )  # fmt: skip
    r.add_argument(
        "--cluster", choices=("slurm",), default=None,
        help="start Dask workers as batch jobs (needs faml[cluster] and --cluster-config)",
    )  # fmt: skip
    r.add_argument(
        "--cluster-config", default=None, metavar="FILE",
        help="YAML: jobs and the SLURM options (see the README's SLURM section)",
    )  # fmt: skip
    r.add_argument(
        "--batch-size", type=int, default=8,
        help="particles per task of the map step (results do not depend on it)",
    )  # fmt: skip
    r.add_argument(
        "--mask",
        help="reference mask MRC, values 0..1, the particles' box (used for alignment, "
        "likelihood and the maps; default: a soft sphere of 0.45 box)",
    )
    r.add_argument(
        "--particle-diameter", type=float, default=None, metavar="A",
        help="soft spherical mask of this diameter in Angstrom instead",
    )  # fmt: skip
    r.add_argument(
        "--gold-standard", action="store_true",
        help="refine the two random halves independently after the common start (RELION's "
        "gold standard): honest half-map FSC, mask-corrected, in model.star",
    )  # fmt: skip
    r.add_argument(
        "--symmetry", default="C1", metavar="GROUP",
        help="point group of the averages: C1, Cn or Dn (RELION's axes: n-fold about z)",
    )  # fmt: skip
    r.add_argument(
        "--voxel-size",
        type=float,
        default=None,
        help="Angstrom per voxel when the files do not say",
    )
    r.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="continue after the last complete iteration in --out",
    )
    r.add_argument(
        "--then-export", choices=("relion",), default=None,
        help="at the end, also export the maps and particles for RELION (see faml export)",
    )  # fmt: skip
    r.set_defaults(func=_cmd_run)

    _add_prepare_stacks(sub)

    s = sub.add_parser(
        "simulate",
        help="simulated subtomograms with known truth (tilt series, CTF, noise)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--no-phase-flip", action="store_true",
        help="particles keep the signed CTF (weights CTF^2) instead of phase-flipped images",
    )  # fmt: skip
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
    s.add_argument("--seed", type=int, default=0, help="the seed of every random draw")
    s.add_argument("--workers", type=int, default=1, help="local worker processes")
    s.add_argument("--out", required=True, help="simulation directory (created)")
    s.add_argument("--overwrite", action="store_true", help="replace a simulation in --out")
    s.set_defaults(func=_cmd_simulate)

    e = sub.add_parser(
        "evaluate",
        help="score a run (or one map) against the truth of a simulation",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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

    d = sub.add_parser(
        "demo",
        help="simulate a small data set, run FAML, score the map against the truth",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--out", default="demo_out", help="output directory")
    d.add_argument("--particles", type=int, default=100, help="particles to simulate")
    d.add_argument("--snr", type=float, default=0.05, help="signal variance / noise variance")
    d.add_argument("--iterations", type=int, default=15, help="most iterations")
    d.add_argument("--workers", type=int, default=2, help="local worker processes")
    d.add_argument("--seed", type=int, default=0, help="seed of the simulation and the run")
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``faml`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else ["faml", *argv]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not args.verbose:  # Dask's own start-up and shut-down chatter only with --verbose
        import dask.config  # read by distributed when it is imported (later, if at all)

        dask.config.set({"logging.distributed": "warning", "logging.dask_jobqueue": "warning"})
    from faml.parallel import ExecutorLost

    try:
        return int(args.func(args))
    except ExecutorLost as exc:  # the cluster went away: say how to go on
        print(f"faml {args.command}: {exc}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as exc:  # bad input: one clear sentence, no traceback
        print(f"faml {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
