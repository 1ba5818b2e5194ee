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

Modules: :mod:`~faml.cli.parser` (the options), :mod:`~faml.cli.formatter` (how the help
reads), :mod:`~faml.cli.run` (``faml run``), :mod:`~faml.cli.out_folder` (its output folder
and ``--continue``), :mod:`~faml.cli.plan` (its plan and clock), :mod:`~faml.cli.commands`
(the other commands), :mod:`~faml.cli.messages` (logging and errors). None of them imports
numpy, numba or dask at import time, so that ``faml --help`` answers at once.
"""

from __future__ import annotations

import sys
import traceback

from faml.cli.commands import (
    _cmd_align,
    _cmd_demo,
    _cmd_evaluate,
    _cmd_export,
    _cmd_prepare_stacks,
    _cmd_report,
    _cmd_simulate,
)
from faml.cli.formatter import HelpFormatter
from faml.cli.messages import _logging, explain
from faml.cli.parser import build_parser
from faml.cli.plan import IterationClock, ctf_form_row, plan_lines
from faml.cli.run import (
    InputProblems,
    _cmd_run,
    _particle_mask_radius,  # noqa: F401 - the tests import it from here
)

__all__ = [
    "HelpFormatter",
    "InputProblems",
    "IterationClock",
    "build_parser",
    "ctf_form_row",
    "explain",
    "main",
    "plan_lines",
]


def _commands() -> dict:
    """Each command's function, looked up when ``main`` runs (a test may replace one)."""
    return {
        "align": _cmd_align,
        "run": _cmd_run,
        "prepare-stacks": _cmd_prepare_stacks,
        "simulate": _cmd_simulate,
        "evaluate": _cmd_evaluate,
        "report": _cmd_report,
        "export": _cmd_export,
        "demo": _cmd_demo,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``faml`` console script.

    Errors are one line ``faml: error: ...`` and a ``hint: ...`` line on stderr (the full
    traceback too with ``--debug``); the exit status says what kind (:func:`explain`).
    """
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else ["faml", *argv]
    with _logging(args):
        try:
            return int(_commands()[args.command](args))
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
