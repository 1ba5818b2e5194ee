"""Fast alignment: candidate rigid transforms of a particle against an average.

The public entry point is :func:`fast_align`; :func:`prepare_average` + :func:`align_to`
reuse the average's precomputation across many particles, and :func:`grid_candidates`
gives the best poses of the scan's whole rotation x shift grid. Modules:
:mod:`faml.align.fast` (the candidate search), :mod:`faml.align.settings`
(:class:`AlignSettings`), :mod:`faml.align.prepared` (:class:`PreparedAverage`),
:mod:`faml.align.grid_search` (:func:`grid_candidates`).
"""

from faml.align.fast import Candidate, align_to, fast_align
from faml.align.grid_search import grid_candidates
from faml.align.prepared import PreparedAverage, prepare_average
from faml.align.settings import AlignSettings

__all__ = [
    "AlignSettings",
    "Candidate",
    "PreparedAverage",
    "align_to",
    "fast_align",
    "grid_candidates",
    "prepare_average",
]
