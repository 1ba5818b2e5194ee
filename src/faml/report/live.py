"""The report of a run in progress: the engine's iteration hook that rewrites ``report.html``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from faml.report.html import write_report

__all__ = ["REPORT_SHARE", "ReportHook"]

logger = logging.getLogger(__name__)

REPORT_SHARE = 0.1
"""Largest share of a run's wall time spent rewriting ``report.html`` between iterations.

A report costs 1-2 s (32^3, K = 2); an iteration of a small run costs about as much, so
rewriting it after every iteration doubled a 60-particle run's time. It is rewritten once the
time since the last one is ten times what that one cost, and always at the end.
"""


class ReportHook:
    """``on_iteration`` hook of :func:`faml.ml.engine.run`: rewrites ``out/report.html``.

    After an iteration (``summary`` given: the running engine's summary, kept for the
    report until ``run.json`` exists) only when due (at most ``share`` of the wall time goes
    to reports); at the end (``summary`` is ``None``) always. A failure only warns: the
    report never stops a run.
    """

    def __init__(self, share: float = REPORT_SHARE) -> None:
        self.share = share
        self.cost = 0.0
        self.finished = -float("inf")

    def due(self) -> bool:
        """Whether a report after this iteration keeps within the share."""
        return time.perf_counter() - self.finished >= self.cost / self.share

    def __call__(self, out: Path, summary: dict | None) -> None:
        """Rewrite the report if due (always when ``summary`` is ``None``)."""
        if summary is not None and not self.due():
            return
        t0 = time.perf_counter()
        try:
            write_report(out, info=summary)
        except Exception as exc:  # noqa: BLE001 - the report must never stop a run
            logger.warning("could not write the run report %s: %s", Path(out) / "report.html", exc)
        self.finished = time.perf_counter()
        self.cost = self.finished - t0
