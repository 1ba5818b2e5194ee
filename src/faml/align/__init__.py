"""Fast alignment: candidate rigid transforms of a particle against an average.

The public entry point is :func:`fast_align`; :func:`prepare_average` + :func:`align_to`
reuse the average's precomputation across many particles.
"""

from faml.align.fast import (
    AlignSettings,
    Candidate,
    PreparedAverage,
    align_to,
    fast_align,
    prepare_average,
)

__all__ = [
    "AlignSettings",
    "Candidate",
    "PreparedAverage",
    "align_to",
    "fast_align",
    "prepare_average",
]
