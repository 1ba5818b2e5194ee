"""Scoring against known truth: map-to-truth alignment, correlation, FSC, pose errors, F1.

:func:`evaluate_run` and :func:`evaluate_map` are what ``faml evaluate`` calls; the pieces
(map alignment and scores, pose errors, class matching, the oracle average, the symmetry
score) are public for benchmarks and tests.
"""

from faml.evaluate.classes import Classification, confusion_matrix, match_classes
from faml.evaluate.evaluation import evaluate_map, evaluate_run
from faml.evaluate.maps import (
    MapAlignment,
    MapScore,
    align_map,
    default_mask,
    fsc_resolution,
    lowpass,
    masked_correlation,
    score_map,
)
from faml.evaluate.oracle import OracleAverage, oracle_average
from faml.evaluate.poses import PoseErrors, pose_errors
from faml.evaluate.results import ClassScore, MapEvaluation, RunEvaluation
from faml.evaluate.symmetry import (
    SymmetryScore,
    cyclic_operators,
    operators_score,
    parse_symmetry,
    principal_axis,
    symmetry_score,
    transform_operators,
)

__all__ = [
    "ClassScore",
    "Classification",
    "MapAlignment",
    "MapEvaluation",
    "MapScore",
    "OracleAverage",
    "PoseErrors",
    "RunEvaluation",
    "SymmetryScore",
    "align_map",
    "confusion_matrix",
    "cyclic_operators",
    "default_mask",
    "evaluate_map",
    "evaluate_run",
    "fsc_resolution",
    "lowpass",
    "masked_correlation",
    "match_classes",
    "operators_score",
    "oracle_average",
    "parse_symmetry",
    "pose_errors",
    "principal_axis",
    "score_map",
    "symmetry_score",
    "transform_operators",
]
