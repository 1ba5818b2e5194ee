"""How faml's help reads: the formatter, the examples, a subcommand with the message options.

Only argparse (see :mod:`faml.cli.parser`).
"""

from __future__ import annotations

import argparse
import textwrap  # loaded anyway: traceback (faml.cli) imports it


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
  faml run particles.star --out run5 --classes 3 --reference run_class001.mrc
  faml run run1/particles.star --out run6 --classes 2 --reference run1/class_001.mrc
           --local-search 15 --focus-mask focus.mrc  # focused classification, from run1
  faml run particles.star --out run7 --classes 2 --consensus --focus-mask auto
           --stability 2  # similar states in one command: consensus, focus, classes, check
  faml run particles.star --out run8 --classes 1 --junk 2  # picks of other things apart

outputs in --out: class_KKK.mrc, particles.star, model.star, run.json, report.html and a
checkpoint per iteration (iterations/NNN/).
"""


def _command(
    sub, name: str, help_text: str, description: str = "", epilog: str = "", messages=True
):
    """A subcommand with faml's help formatter and the message options.

    ``messages``: add the ``messages`` group first; ``False``: the caller adds it where it
    belongs among its own groups (:func:`_add_messages`).
    """
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog or None,
        formatter_class=HelpFormatter,
    )
    if messages:
        _add_messages(parser)
    return parser


def _add_messages(parser: argparse.ArgumentParser) -> None:
    """The ``messages`` group of a command: ``--quiet``, ``--verbose`` and ``--debug``.

    Accepted before or after the command: on the commands their default is ``SUPPRESS``, so
    that ``faml -q run ...`` is not undone by the command's own (unset) option.
    """
    _add_output_flags(parser.add_argument_group("messages"), argparse.SUPPRESS)


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
