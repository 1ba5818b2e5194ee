"""The run report (``DIR/report.html``) and the export of a run's results to RELION.

:func:`write_report` builds the self-contained HTML page of a run directory (figures from
:mod:`faml.report.plots`); :class:`ReportHook`, the engine's iteration hook, rewrites it
during a run (after an iteration, at most a tenth of the run's time) and at the end, and
``faml report DIR`` rebuilds it.
:func:`export_relion` writes low-passed class maps and a particles STAR file ready for
``relion_refine --ref`` (``faml export DIR --to relion``).
"""

from faml.report.export import RelionExport, export_relion, write_relion_map
from faml.report.html import render_html, select_iterations, truth_scores, write_report
from faml.report.live import ReportHook

__all__ = [
    "RelionExport",
    "ReportHook",
    "export_relion",
    "render_html",
    "select_iterations",
    "truth_scores",
    "write_relion_map",
    "write_report",
]
