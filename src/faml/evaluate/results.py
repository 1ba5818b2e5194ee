"""The results of ``faml evaluate``: what a run or a map scored against the truth holds.

:class:`RunEvaluation` (a run against a simulation, with a :class:`ClassScore` per class map
and per oracle average) and :class:`MapEvaluation` (one map against one truth map), as
:func:`faml.evaluate.evaluation.evaluate_run` and :func:`faml.evaluate.evaluation.evaluate_map`
return them; each renders itself as JSON-serialisable figures (``to_dict``) and as a plain
text table (``to_table``). :data:`POSE_THRESHOLD_DEG` is the primary pose-accuracy threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from faml.evaluate.classes import Classification
from faml.evaluate.maps import MapScore
from faml.evaluate.symmetry import SymmetryScore
from faml.geometry.euler import matrix_to_euler

__all__ = [
    "POSE_THRESHOLD_DEG",
    "ClassScore",
    "MapEvaluation",
    "RunEvaluation",
]

POSE_THRESHOLD_DEG = 15.0
"""The primary pose-accuracy threshold (DESIGN.md section 6)."""


def _num(x: float | None) -> float | None:
    """A float for JSON: ``None`` for NaN or infinity."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    if x is None or not math.isfinite(float(x)):
        return "-"
    return f"{float(x):{spec}}{suffix}"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return lines


@dataclass(frozen=True)
class ClassScore:
    """One map of a run (or of the oracle) against its truth.

    Attributes
    ----------
    label
        ``"class K"`` or ``"oracle J"``.
    class_number
        1-based class of the run (the true class for the oracle).
    truth_class
        1-based true class it is scored against.
    matched
        Whether the Hungarian matching paired it with ``truth_class``.
    particles
        Particles in the class.
    map
        The map's score.
    f1
        F1 of the matched true class (NaN when unmatched or for the oracle).
    within_15deg
        Share of the class's particles in their matched class with a rotation error below
        15° (NaN for the oracle).
    median_rotation_error_deg, median_shift_error_angstrom
        Over the class's particles whose true class is ``truth_class`` (NaN if none).
    symmetry
        Cn symmetry score of the map, when a symmetry was given.
    """

    label: str
    class_number: int
    truth_class: int
    matched: bool
    particles: int
    map: MapScore
    f1: float = float("nan")
    within_15deg: float = float("nan")
    median_rotation_error_deg: float = float("nan")
    median_shift_error_angstrom: float = float("nan")
    symmetry: SymmetryScore | float | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable figures."""
        sym = self.symmetry
        return {
            "label": self.label,
            "class": self.class_number,
            "truth_class": self.truth_class,
            "matched": self.matched,
            "particles": self.particles,
            "f1": _num(self.f1),
            "within_15deg": _num(self.within_15deg),
            "median_rotation_error_deg": _num(self.median_rotation_error_deg),
            "median_shift_error_angstrom": _num(self.median_shift_error_angstrom),
            "symmetry_score": _symmetry_value(sym),
            "map": self.map.to_dict(),
        }


def _symmetry_value(sym: SymmetryScore | float | None) -> float | None:
    if sym is None:
        return None
    return _num(sym.score if isinstance(sym, SymmetryScore) else sym)


@dataclass(frozen=True)
class RunEvaluation:
    """A run scored against the truth (see :mod:`faml.evaluate.evaluation`).

    Per-particle arrays are `(n,)`, in the run's particle order, over the ``n`` particles
    found in both the run and the truth.

    Attributes
    ----------
    run_dir, sim_dir
        The folders evaluated.
    voxel_size, box
        Ångström per voxel and ``N``.
    names
        Base names of the particles' files.
    predicted_classes, true_classes
        1-based classes.
    rotation_error_deg, shift_error_voxels
        Errors after removing the class's global transform (modulo symmetry); NaN where the
        particle's true class is not the one its class map was scored against.
    class_correct
        Whether the particle's class is matched to its true class.
    max_probability
        ``rlnMaxValueProbDistribution`` of the run, or ``None``.
    classification
        Confusion matrix, matching and F1.
    classes
        Per run class, its map's score and pose figures.
    oracle
        Per true class, the oracle average's score (``None`` when not computed).
    symmetry
        The symmetry used: ``"Cn"``, ``"S operators"`` or ``None``.
    truth_symmetry
        Per true class the symmetry score of the truth map (with a symmetry given).
    lowpass_angstrom
        Resolution both maps were low-passed to for ``correlation_lowpass`` and alignment.
    missing
        True particles absent from the run.
    """

    run_dir: str
    sim_dir: str
    voxel_size: float
    box: int
    names: tuple[str, ...]
    predicted_classes: np.ndarray
    true_classes: np.ndarray
    rotation_error_deg: np.ndarray
    shift_error_voxels: np.ndarray
    class_correct: np.ndarray
    max_probability: np.ndarray | None
    classification: Classification
    classes: tuple[ClassScore, ...]
    oracle: tuple[ClassScore, ...] | None
    symmetry: str | None
    truth_symmetry: tuple[float, ...] | None
    lowpass_angstrom: float | None
    missing: int

    @property
    def shift_error_angstrom(self) -> np.ndarray:
        """`(n,)` shift errors in Ångström."""
        return self.shift_error_voxels * self.voxel_size

    def within(self, degrees: float = POSE_THRESHOLD_DEG) -> float:
        """Share of all particles in their matched class with a rotation error below ``degrees``."""
        err = np.where(np.isnan(self.rotation_error_deg), np.inf, self.rotation_error_deg)
        return float(np.mean(self.class_correct & (err < degrees))) if len(err) else 0.0

    @property
    def median_rotation_error_deg(self) -> float:
        """Median rotation error over the particles where it is defined."""
        ok = ~np.isnan(self.rotation_error_deg)
        return float(np.median(self.rotation_error_deg[ok])) if np.any(ok) else float("nan")

    @property
    def median_shift_error_angstrom(self) -> float:
        """Median shift error (Å) over the particles where it is defined."""
        ok = ~np.isnan(self.shift_error_voxels)
        return float(np.median(self.shift_error_angstrom[ok])) if np.any(ok) else float("nan")

    def to_dict(self) -> dict:
        """Everything as JSON-serialisable values (NaN as ``None``; classes 1-based)."""
        particles = {
            "name": list(self.names),
            "predicted_class": self.predicted_classes.tolist(),
            "true_class": self.true_classes.tolist(),
            "class_correct": self.class_correct.tolist(),
            "rotation_error_deg": [_num(x) for x in self.rotation_error_deg],
            "shift_error_angstrom": [_num(x) for x in self.shift_error_angstrom],
        }
        if self.max_probability is not None:
            particles["max_probability"] = self.max_probability.tolist()
        return {
            "run_dir": self.run_dir,
            "sim_dir": self.sim_dir,
            "voxel_size": self.voxel_size,
            "box": self.box,
            "particles_evaluated": len(self.names),
            "particles_missing": self.missing,
            "lowpass_angstrom": self.lowpass_angstrom,
            "symmetry": self.symmetry,
            "summary": {
                "within_5deg": self.within(5.0),
                "within_15deg": self.within(15.0),
                "within_30deg": self.within(30.0),
                "median_rotation_error_deg": _num(self.median_rotation_error_deg),
                "median_shift_error_angstrom": _num(self.median_shift_error_angstrom),
                "mean_f1": self.classification.mean_f1,
                "class_accuracy": self.classification.accuracy,
                "mean_correlation": _num(np.mean([c.map.correlation for c in self.classes])),
                "mean_fsc05_angstrom": _num(np.mean([c.map.resolution_05 for c in self.classes])),
                "oracle_mean_correlation": None
                if self.oracle is None
                else _num(np.mean([c.map.correlation for c in self.oracle])),
                "oracle_mean_fsc05_angstrom": None
                if self.oracle is None
                else _num(np.mean([c.map.resolution_05 for c in self.oracle])),
            },
            "classification": self.classification.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
            "oracle": None if self.oracle is None else [c.to_dict() for c in self.oracle],
            "truth_symmetry_score": None
            if self.truth_symmetry is None
            else [_num(x) for x in self.truth_symmetry],
            "particles": particles,
        }

    def to_table(self) -> str:
        """The figures as plain text: a header, one Markdown table and the confusion matrix.

        The table has a row per run class (``class K``), per oracle average (``oracle J``)
        and a summary row (``all``); its columns: the true class scored against, particles,
        F1, masked Pearson correlation (and with both low-passed to the run's resolution),
        FSC 0.5 and 0.143 resolutions (Å), share of particles within 15° (in their matched
        class), median rotation error (degrees) and shift error (Å), the rotation angle of
        the global map-to-truth transform, and the symmetry score when a symmetry was given.
        Below it: the poses within 5/15/30 degrees and the confusion matrix.
        """
        lp = self.lowpass_angstrom
        header = ["map", "truth", "particles", "F1", "Pearson"]
        if lp is not None:
            header.append(f"Pearson@{lp:.0f}A")
        header += ["FSC0.5 A", "FSC0.143 A", "<=15deg", "med.rot deg", "med.shift A", "G deg"]
        if self.symmetry is not None:
            header.append(f"{self.symmetry} score")
        rows = []
        for c in list(self.classes) + list(self.oracle or ()):
            row = [
                c.label,
                str(c.truth_class) + ("" if c.matched else "*"),
                str(c.particles),
                _fmt(c.f1, ".3f"),
                _fmt(c.map.correlation, ".3f"),
            ]
            if lp is not None:
                row.append(_fmt(c.map.correlation_lowpass, ".3f"))
            row += [
                _fmt(c.map.resolution_05, ".1f"),
                _fmt(c.map.resolution_0143, ".1f"),
                _fmt(100 * c.within_15deg, ".1f", "%"),
                _fmt(c.median_rotation_error_deg, ".2f"),
                _fmt(c.median_shift_error_angstrom, ".2f"),
                _fmt(c.map.global_angle_deg, ".1f"),
            ]
            if self.symmetry is not None:
                row.append(_fmt(_symmetry_value(c.symmetry), ".3f"))
            rows.append(row)
        summary = ["all", "", str(len(self.names)), _fmt(self.classification.mean_f1, ".3f")]
        summary.append(_fmt(np.mean([c.map.correlation for c in self.classes]), ".3f"))
        if lp is not None:
            summary.append(_fmt(np.mean([c.map.correlation_lowpass for c in self.classes]), ".3f"))
        summary += [
            _fmt(np.mean([c.map.resolution_05 for c in self.classes]), ".1f"),
            _fmt(np.mean([c.map.resolution_0143 for c in self.classes]), ".1f"),
            _fmt(100 * self.within(15.0), ".1f", "%"),
            _fmt(self.median_rotation_error_deg, ".2f"),
            _fmt(self.median_shift_error_angstrom, ".2f"),
            "",
        ]
        if self.symmetry is not None:
            summary.append("")
        rows.append(summary)
        k_true = self.classification.confusion.shape[1]
        lines = [
            f"faml evaluate: {self.run_dir} against {self.sim_dir}",
            f"{len(self.names)} particles ({self.missing} of the truth missing from the run), "
            f"{len(self.classes)} classes vs {k_true} true classes, {self.voxel_size:g} A/voxel"
            + (f"; symmetry {self.symmetry}" if self.symmetry else ""),
            "",
            *_markdown(header, rows),
            "",
            f"poses within 5/15/30 deg (in their matched class): {100 * self.within(5):.1f}% / "
            f"{100 * self.within(15):.1f}% / {100 * self.within(30):.1f}%; "
            f"class accuracy {100 * self.classification.accuracy:.1f}%",
        ]
        if self.truth_symmetry is not None:
            scores = ", ".join(
                f"{j + 1}: {_fmt(s, '.3f')}" for j, s in enumerate(self.truth_symmetry)
            )
            lines.append(f"symmetry score of the truth maps: {scores}")
        if any(not c.matched for c in self.classes):
            lines.append(
                "* not matched by the Hungarian assignment: scored against the true class of "
                "most of its particles"
            )
        conf = self.classification.confusion
        lines += ["", "confusion (rows: run classes, columns: true classes):"]
        lines += _markdown(
            ["class"] + [str(j + 1) for j in range(conf.shape[1])],
            [[str(k + 1)] + [str(v) for v in conf[k]] for k in range(conf.shape[0])],
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class MapEvaluation:
    """One map scored against one truth map.

    Attributes
    ----------
    map_path, truth_path
        The files.
    voxel_size, box
        Ångström per voxel and ``N``.
    score
        Alignment, correlations and FSC (:class:`~faml.evaluate.maps.MapScore`).
    symmetry
        Symmetry score of the map, when a symmetry was given.
    truth_symmetry
        Symmetry score of the truth, when a symmetry was given.
    """

    map_path: str
    truth_path: str
    voxel_size: float
    box: int
    score: MapScore
    symmetry: SymmetryScore | None = None
    truth_symmetry: SymmetryScore | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable figures."""
        return {
            "map": self.map_path,
            "truth": self.truth_path,
            "voxel_size": self.voxel_size,
            "box": self.box,
            **self.score.to_dict(),
            "symmetry": None if self.symmetry is None else self.symmetry.to_dict(),
            "truth_symmetry": None
            if self.truth_symmetry is None
            else self.truth_symmetry.to_dict(),
        }

    def to_table(self) -> str:
        """The figures as plain text: a header line and a two-column Markdown table.

        Rows: masked Pearson correlation (and low-passed, if asked), FSC 0.5 and 0.143
        resolutions (Å), the global transform (rotation angle, RELION Euler angles of ``G``,
        shift in voxels) and, with a symmetry, the symmetry scores of map and truth.
        """
        s = self.score
        euler = matrix_to_euler(s.global_rotation)
        rows = [["Pearson (masked)", _fmt(s.correlation, ".4f")]]
        if s.lowpass_angstrom is not None:
            rows.append(
                [f"Pearson, both at {s.lowpass_angstrom:g} A", _fmt(s.correlation_lowpass, ".4f")]
            )
        rows += [
            ["FSC 0.5 resolution (A)", _fmt(s.resolution_05, ".1f")],
            ["FSC 0.143 resolution (A)", _fmt(s.resolution_0143, ".1f")],
            ["map-to-truth rotation (deg)", _fmt(s.global_angle_deg, ".2f")],
            ["  as RELION rot/tilt/psi", " / ".join(f"{a:.2f}" for a in euler)],
            ["map-to-truth shift (voxels x,y,z)", " / ".join(f"{v:.2f}" for v in s.global_shift)],
        ]
        if self.symmetry is not None:
            rows.append(
                [f"C{self.symmetry.order} symmetry score (map)", _fmt(self.symmetry.score, ".3f")]
            )
        if self.truth_symmetry is not None:
            rows.append(
                [
                    f"C{self.truth_symmetry.order} symmetry score (truth)",
                    _fmt(self.truth_symmetry.score, ".3f"),
                ]
            )
        head = (
            f"faml evaluate: {self.map_path} against {self.truth_path} "
            f"({self.box}^3, {self.voxel_size:g} A/voxel)"
        )
        return "\n".join([head, "", *_markdown(["figure", "value"], rows)])
