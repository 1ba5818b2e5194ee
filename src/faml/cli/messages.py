"""faml's messages on stderr (logging for one command) and errors told to a person.

``explain`` turns an exception into ``faml: error: ...``, a hint and an exit status. faml's
modules that load dask (:mod:`faml.parallel`, :mod:`faml.ml.engine`, ``dask.config``) are
imported inside the functions, when a command runs: ``faml --help`` imports this module too.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sys

from faml.cli.out_folder import RunMismatch
from faml.cli.run import InputProblems


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
    if isinstance(exc, RunMismatch):  # --continue: the line says what to do
        return str(exc), None, 2
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
