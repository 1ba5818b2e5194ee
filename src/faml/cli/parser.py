"""The ``faml`` argument parser: the commands and their options in groups.

Only argparse: ``faml --help`` and ``faml COMMAND --help`` build this parser and nothing
else, so that they answer at once (the commands' own modules load numpy, numba and dask).
"""

from __future__ import annotations

import argparse

from faml import __version__
from faml.cli.formatter import (
    EXAMPLES,
    RUN_EXAMPLES,
    HelpFormatter,
    _add_messages,
    _add_output_flags,
    _add_tilt_range,
    _command,
)


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

    _add_align(sub)
    _add_run(sub)
    _add_prepare_stacks(sub)
    _add_simulate(sub)
    _add_evaluate(sub)
    _add_report_export(sub)
    _add_demo(sub)
    return parser


def _add_align(sub) -> None:
    """The ``align`` subcommand."""
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


def _add_run(sub) -> None:
    """The ``run`` subcommand, its options in groups.

    In the order a user decides them (and so in the usage line): input, output, the model,
    where it runs, messages; then one group of the tuning options, the measured departures
    from the published method.
    """
    r = _command(
        sub, "run", "average (K = 1) or classify (K > 1) particles",
        "Reference-free averaging (K = 1) or classification (K > 1) of subtomograms by FAML "
        "(or FA, alignment only), or from reference maps (--reference). Prints a short plan, "
        "a progress bar per iteration (on a terminal) and the expected time per iteration; "
        "writes the maps, a RELION particles STAR file, model.star and report.html into "
        "--out, with a checkpoint per iteration.",
        RUN_EXAMPLES, messages=False,
    )  # fmt: skip
    r.add_argument("particles", help="RELION particles STAR file, or a folder / glob of MRC files")
    _add_run_input(r.add_argument_group("input"))
    _add_run_output(r.add_argument_group("output"))
    _add_run_model(r.add_argument_group("model"))
    _add_run_parallel(
        r.add_argument_group(
            "parallel", "Where the map step runs; the results do not depend on it."
        )
    )
    _add_messages(r)
    _add_run_advanced(
        r.add_argument_group(
            "advanced (tuning; measured departures from the paper, see the README)"
        )
    )


def _add_run_input(i) -> None:
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


def _add_run_output(o) -> None:
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


def _add_run_model(m) -> None:
    m.add_argument("--classes", type=int, default=1, metavar="K", help="number of classes K")
    m.add_argument(
        "--reference", action="append", default=None, metavar="MRC",
        help="start from this map (RELION's --ref) instead of random starts and the FA "
        "warm-up: give it once for every class or once per class; resampled to the "
        "particles' voxel size and box about its centre voxel if need be, low-passed to "
        "--initial-lowpass and masked",
    )  # fmt: skip
    m.add_argument(
        "--initial-lowpass", type=float, default=60.0, metavar="A",
        help="resolution the references are trusted to at the start, Angstrom (default 60, "
        "RELION's --ini_high)",
    )  # fmt: skip
    m.add_argument(
        "--local-search", type=float, default=None, metavar="DEG",
        help="search only within DEG degrees of each particle's pose in the STAR file or "
        "--dynamo-table (and "
        "within --max-shift of its offset), with a Gaussian prior of DEG/3 on the deviation "
        "(RELION's --sigma_ang); starts from the average at those poses unless --reference "
        "is given; no random starts, no FA warm-up",
    )  # fmt: skip
    m.add_argument(
        "--consensus", action="store_true",
        help="with --classes K > 1 and no poses: a K = 1 run first (OUT/consensus, "
        "reference-free), then the K classes from its map and poses with a local search "
        "(--local-search DEG, default 15) and the classes started from a split of the "
        "particles' differences: the way to separate similar states in one command",
    )  # fmt: skip
    m.add_argument(
        "--method", choices=("faml", "fa"), default="faml",
        help="faml: candidates + maximum likelihood; fa: alignment only",
    )  # fmt: skip
    m.add_argument("--iterations", type=int, default=15, metavar="N", help="most iterations")
    m.add_argument(
        "--junk", type=int, default=0, metavar="J",
        help="J more classes, after the --classes K, for picks that are not the target "
        "(other proteins, membrane, ice): the iterations refine the targets, then the picks "
        "whose correlation with them is a second, lower population (a tested two-component "
        "mixture) move to the junk classes; drop them with --select-classes 1..K in the next "
        "run",
    )  # fmt: skip
    m.add_argument(
        "--stability", type=int, default=0, metavar="N",
        help="with --classes K > 1: run the classification N more times with other seeds "
        "(OUT/replicates) and report how stable its classes are (adjusted Rand index, the "
        "share of each class's particles kept together, each particle's consistency in "
        "OUT/stability.star) and a suggested K; N + 1 times the work",
    )  # fmt: skip
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
        "--focus-mask", metavar="MRC",
        help="focused classification (K > 1): values 0..1, the particles' box, the region "
        "whose differences decide the classes (RELION's focused Class3D mask); the class "
        "averages are kept equal outside it, poses still use the whole particle (--mask). "
        "With --local-search the classes start from a split of the particles' differences "
        "from their consensus inside it. 'auto' (with --local-search): classify without a "
        "focus first (OUT/unfocused), then focus where its class maps differ most "
        "(OUT/focus_auto.mrc)",
    )  # fmt: skip
    m.add_argument(
        "--particle-diameter", type=float, default=None, metavar="A",
        help="soft spherical mask of this diameter in Angstrom instead",
    )  # fmt: skip
    m.add_argument(
        "--particle-mask", action="store_true",
        help="remove each particle's background and multiply it by a soft sphere (the "
        "reference mask's, or --particle-diameter), as RELION's --zero_mask: neighbours and "
        "streaks stay out of the alignment and the noise estimate (crowded data: give "
        "--particle-diameter just above the particle's size)",
    )  # fmt: skip
    m.add_argument("--seed", type=int, default=0, help="the seed of every random choice")
    m.add_argument(
        "--max-shift", type=float, default=None, metavar="VOXELS",
        help="largest translation (default box/4)",
    )  # fmt: skip


def _add_run_parallel(par) -> None:
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


def _add_run_advanced(adv) -> None:
    """Search and likelihood, random starts, verification: each measured (the README)."""
    adv.add_argument(
        "--candidates", type=int, default=20, metavar="N",
        help="candidates per particle and class",
    )  # fmt: skip
    adv.add_argument(
        "--scan-step", type=float, default=15.0, metavar="DEG",
        help="rotation step of the phase-aware scan that adds candidates",
    )  # fmt: skip
    adv.add_argument(
        "--no-scan", action="store_true", help="magnitude-only candidate search (the paper)"
    )
    adv.add_argument(
        "--likelihood", choices=("scaled", "plain"), default="scaled",
        help="scaled: the reference's amplitude fitted per candidate; plain: the paper's",
    )  # fmt: skip
    adv.add_argument(
        "--local-candidates", type=int, default=2, metavar="N",
        help="best candidates per class that get six neighbours per ring (0: none)",
    )  # fmt: skip
    adv.add_argument(
        "--local-rings", type=int, default=2, metavar="N",
        help="rings of neighbours, at 5, 10, ... degrees from the candidate",
    )  # fmt: skip
    adv.add_argument(
        "--voronoi", action="store_true",
        help="weigh candidates by their Voronoi cells (the paper; off: see the docs)",
    )  # fmt: skip
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
        "--average-update", choices=("compensated", "paper"), default="compensated",
        help="M-step average: S / max(W, 0.1 L) (L: n for binary wedges), or the paper's eq. 10",
    )  # fmt: skip
    adv.add_argument(
        "--paper-exact", action="store_true",
        help="the published method's choices: --no-scan --likelihood plain --voronoi "
        "--local-candidates 0 --average-update paper --starts 1 --fa-iterations 0 (the "
        "random-pose start and FSC filtering stay)",
    )  # fmt: skip


def _add_interop_options(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--tomograms",
        default=None,
        metavar="STAR",
        help="RELION 5 tomograms STAR file of a 2D tilt-stack particle set (default: from "
        "the optimisation set, or the *tomograms.star beside the particles file)",
    )
    r.add_argument(
        "--select-classes", default=None, metavar="LIST",
        help="only the particles of these classes of the input STAR file (rlnClassNumber, "
        "e.g. 1,3): a run on the classes kept from another run (faml's or RELION's)",
    )  # fmt: skip
    r.add_argument(
        "--dynamo-table",
        default=None,
        metavar="TBL",
        help="Dynamo .tbl giving each MRC particle's tilt range (columns 14-15), matched by "
        "the tag in the file name, and with --local-search its pose (the priors)",
    )


def _add_prepare_stacks(sub) -> None:
    ps = _command(
        sub,
        "prepare-stacks",
        "reconstruct RELION 5 / WarpTools 2D tilt-stack particles into 3D (faml run does it too)",
    )
    ps.add_argument("particles", help="RELION 5 particles STAR (2D stacks) or optimisation set")
    ps.add_argument("--out", required=True, help="output folder (subtomograms/ inside it)")
    ps.add_argument("--tomograms", default=None, help="tomograms STAR file (default: found)")


def _add_simulate(sub) -> None:
    """The ``simulate`` subcommand."""
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


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand."""
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


def _add_report_export(sub) -> None:
    """The ``report`` and ``export`` subcommands."""
    p = _command(sub, "report", "rebuild a run's HTML report (RUN_DIR/report.html)")
    p.add_argument("run_dir", help="a faml run directory (finished or in progress)")
    p.add_argument(
        "--truth", default=None,
        help="simulation directory or true map (MRC): also plot the FSC against the truth",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="the page (default RUN_DIR/report.html)")
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


def _add_demo(sub) -> None:
    """The ``demo`` subcommand."""
    d = _command(
        sub, "demo", "simulate a small data set, run FAML, score the map against the truth"
    )
    d.add_argument("--out", default="demo_out", help="output directory")
    d.add_argument("--particles", type=int, default=100, help="particles to simulate")
    d.add_argument("--snr", type=float, default=0.05, help="signal variance / noise variance")
    d.add_argument("--iterations", type=int, default=15, help="most iterations")
    d.add_argument("--workers", type=int, default=2, help="local worker processes")
    d.add_argument("--seed", type=int, default=0, help="seed of the simulation and the run")
