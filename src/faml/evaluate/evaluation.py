"""``faml evaluate``: a run (or one map) scored against the simulation's truth.

:func:`evaluate_run` reads a run directory and a simulation directory (layouts in
:mod:`faml.evaluate._files`) and measures (DESIGN.md section 6):

- classification: Hungarian matching of the run's classes to the true ones, per-class and
  mean F1 (:mod:`faml.evaluate.classes`); each class map is scored against the truth map of
  its matched class (an unmatched class against the true class most of its particles have);
- each class map against its truth (:func:`faml.evaluate.maps.score_map`): global transform
  ``(G, s)``, masked Pearson correlation (also with both low-passed to the run's resolution),
  FSC with the 0.5 and 0.143 resolutions;
- per particle: rotation error (degrees) and shift error (voxels, Å) after removing its
  class's ``(G, s)`` (:mod:`faml.evaluate.poses`), modulo a symmetry if given; the primary
  figure is the share of particles in their matched class with a rotation error below 15°;
- the oracle (:mod:`faml.evaluate.oracle`): the same particles averaged at their true poses
  and classes, filtered and masked like a run's map and scored the same way;
- with a Cn symmetry, the symmetry score of every map (:mod:`faml.evaluate.symmetry`).

:func:`evaluate_map` scores one map against one truth map.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faml.evaluate._files import read_run, read_simulation, run_resolution
from faml.evaluate.classes import Classification, match_classes
from faml.evaluate.maps import MapScore, score_map
from faml.evaluate.oracle import oracle_average
from faml.evaluate.poses import pose_errors
from faml.evaluate.symmetry import (
    SymmetryScore,
    cyclic_operators,
    operators_score,
    parse_symmetry,
    principal_axis,
    symmetry_score,
    transform_operators,
)
from faml.geometry.euler import matrix_to_euler
from faml.io.mrc import read_volume
from faml.io.star import read_particles_star

__all__ = [
    "ClassScore",
    "MapEvaluation",
    "RunEvaluation",
    "evaluate_map",
    "evaluate_run",
]

logger = logging.getLogger(__name__)

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
    """A run scored against the truth (see the module docstring).

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


def _resolve_voxel(*candidates: float | None) -> float:
    for v in candidates:
        if v:
            return float(v)
    raise ValueError("no voxel size: give voxel_size (the MRC headers carry none)")


def evaluate_map(
    map_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    voxel_size: float | None = None,
    lowpass_angstrom: float | None = None,
    symmetry: int | str | None = None,
) -> MapEvaluation:
    """Score one map against one truth map (``faml evaluate --map MAP --truth TRUTH``).

    Parameters
    ----------
    map_path, truth_path
        MRC files of the same cubic box.
    voxel_size
        Ångström per voxel (default: the map's header, else the truth's).
    lowpass_angstrom
        Also report the correlation with both low-passed to it (and align them so).
    symmetry
        ``n`` or ``"Cn"``: also report the Cn symmetry score of both maps.

    Returns
    -------
    MapEvaluation
        ``to_table()`` prints the correlation, FSC resolutions, the map-to-truth transform
        and symmetry scores; ``to_dict()`` the same plus the FSC curve.
    """
    vol, v1 = read_volume(map_path)
    truth, v2 = read_volume(truth_path)
    if vol.shape != truth.shape or vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"map {vol.shape} and truth {truth.shape} must be the same cubic box")
    voxel = _resolve_voxel(voxel_size, v1, v2)
    score = score_map(vol, truth, voxel, lowpass_angstrom=lowpass_angstrom)
    order = parse_symmetry(symmetry)
    sym = tsym = None
    if order is not None:
        sym = symmetry_score(vol, order)
        tsym = symmetry_score(truth, order)
    return MapEvaluation(str(map_path), str(truth_path), voxel, vol.shape[0], score, sym, tsym)


def _dihedral_setup(symmetry: str, truth_maps: np.ndarray):
    """Dn operators of each true map, in the map's own frame.

    The Dn frame is found on the map itself (:func:`faml.geometry.symmetry.symmetry_frame`)
    and the group's rotations are expressed back in the map's frame.
    """
    from faml.geometry.symmetry import parse_symmetry as parse_group
    from faml.geometry.symmetry import symmetry_frame

    group = parse_group(symmetry)
    ops = []
    for truth in truth_maps:
        q, t, score = symmetry_frame(truth, group)
        logger.info("true map's %s frame: correlation of its copies %.3f", group.name, score)
        # truth = T_(q, t)^-1 framed, and framed is unchanged by (R_g, 0)
        ops.append(transform_operators(group.rotations(), None, q.T, -q.T @ t))
    return ops, group.order, group.name


def _symmetry_setup(symmetry, truth_maps: np.ndarray):
    """Symmetry operators per true class, the Cn order (or ``None``) and a label.

    The operators of each true class are ``(rotations (S, 3, 3), shifts (S, 3))``.
    """
    if symmetry is None:
        return None, None, None
    if isinstance(symmetry, str) and symmetry.strip().upper().startswith("D"):
        return _dihedral_setup(symmetry, truth_maps)
    if isinstance(symmetry, (str, int, np.integer)):
        order = parse_symmetry(symmetry)
        if order is None:
            return None, None, None
        box = truth_maps.shape[-1]
        ops = [cyclic_operators(order, *principal_axis(t), box) for t in truth_maps]
        return ops, order, f"C{order}"
    rots = np.asarray(symmetry, dtype=np.float64)
    if rots.ndim == 2:
        rots = rots[None]
    if rots.ndim != 3 or rots.shape[1:] != (3, 3):
        raise ValueError(f"symmetry matrices must be (S, 3, 3), got {rots.shape}")
    det = np.linalg.det(rots)
    ortho = np.abs(np.einsum("sij,skj->sik", rots, rots) - np.eye(3)).max()
    if ortho > 1e-5 or np.abs(det - 1).max() > 1e-5:
        raise ValueError("symmetry matrices must be rotations (orthogonal, determinant +1)")
    ops = [(rots, np.zeros((len(rots), 3)))] * len(truth_maps)
    return ops, None, f"{len(rots)} operators"


def evaluate_run(
    run_dir: str | os.PathLike[str],
    sim_dir: str | os.PathLike[str],
    *,
    oracle: bool = True,
    symmetry: int | str | np.ndarray | Sequence[np.ndarray] | None = None,
    lowpass_angstrom: float | str | None = "run",
    seed: int = 0,
) -> RunEvaluation:
    """Score a run directory against a simulation directory (``faml evaluate RUN --truth SIM``).

    Parameters
    ----------
    run_dir
        ``class_NNN.mrc``, ``particles.star`` (and ``run.json``) of a run.
    sim_dir
        ``particles.star``, ``particles/``, ``truth/{class_NNN.mrc, particles.star,
        truth.json}``.
    oracle
        Also build and score the oracle average of the same particles.
    symmetry
        ``n`` or ``"Cn"``: Cn about the principal axis (through the centre of mass) of each
        truth map; ``"Dn"``: Dn in each truth map's own frame, found on the map
        (:func:`faml.geometry.symmetry.symmetry_frame`); or `(S, 3, 3)` rotation matrices
        about the box centre in the truth's frame. Pose errors are taken modulo these
        operators; with Cn or Dn every map also gets its (n-fold) symmetry score.
    lowpass_angstrom
        Resolution both maps are low-passed to for the alignment and
        ``correlation_lowpass``: a number, ``"run"`` (the run's last resolution estimate
        from ``run.json``, none if absent) or ``None``.
    seed
        Seed of the oracle's half split.

    Returns
    -------
    RunEvaluation
        ``to_table()`` prints one row per class map and per oracle average (truth class, F1,
        correlations, FSC resolutions, share of poses within 15°, median errors) and the
        confusion matrix; ``to_dict()`` holds the same and every particle's errors.
    """
    sim = read_simulation(sim_dir)
    run = read_run(run_dir, sim.voxel_size)
    voxel, box = sim.voxel_size, sim.maps.shape[-1]
    if run.maps.shape[-1] != box:
        raise ValueError(f"the run's maps are {run.maps.shape[-1]}^3, the truth's {box}^3")
    if isinstance(lowpass_angstrom, str):
        if lowpass_angstrom != "run":
            raise ValueError(
                f"lowpass_angstrom must be a number, 'run' or None, got {lowpass_angstrom!r}"
            )
        lp = run_resolution(run.info)
    else:
        lp = None if lowpass_angstrom is None else float(lowpass_angstrom)

    truth_index = {name: i for i, name in enumerate(sim.poses.names)}
    unknown = [n for n in run.poses.names if n not in truth_index]
    if unknown:
        raise ValueError(
            f"{len(unknown)} particles of the run are not in the truth (e.g. {unknown[0]!r}): "
            "is this the simulation the run was made from?"
        )
    rows = np.array([truth_index[n] for n in run.poses.names], dtype=np.int64)
    missing = len(sim.poses.names) - len(set(rows.tolist()))
    if missing:
        logger.warning("%d particles of the truth are not in the run", missing)
    k_pred, k_true = len(run.maps), len(sim.maps)
    pred = run.poses.classes - 1
    true = sim.poses.classes[rows] - 1
    cls = match_classes(pred, true, k_pred, k_true)
    reference = cls.matching.copy()
    for k in np.flatnonzero(reference < 0):
        reference[k] = int(np.argmax(cls.confusion[k])) if cls.confusion[k].sum() else 0

    ops, order, sym_label = _symmetry_setup(symmetry, sim.maps)

    scores = []
    for k in range(k_pred):
        logger.info("scoring class %d against true class %d", k + 1, reference[k] + 1)
        scores.append(score_map(run.maps[k], sim.maps[reference[k]], voxel, lowpass_angstrom=lp))

    n = len(rows)
    rot_err = np.full(n, np.nan)
    shift_err = np.full(n, np.nan)
    defined = true == reference[pred]
    for k in range(k_pred):
        sel = np.flatnonzero((pred == k) & defined)
        if not sel.size:
            continue
        j = reference[k]
        sym_r, sym_t = (None, None) if ops is None else ops[j]
        err = pose_errors(
            run.poses.rotations[sel], run.poses.shifts[sel],
            sim.poses.rotations[rows[sel]], sim.poses.shifts[rows[sel]],
            scores[k].global_rotation, scores[k].global_shift,
            symmetry_rotations=sym_r, symmetry_shifts=sym_t,
        )  # fmt: skip
        rot_err[sel] = err.rotation_deg
        shift_err[sel] = err.shift_voxels
    correct = cls.matching[pred] == true

    def _median(values):
        values = values[~np.isnan(values)]
        return float(np.median(values)) if values.size else float("nan")

    def _map_symmetry(volume, score=None):
        """Cn: the map's own TMV score; operators: theirs, moved into the map's frame."""
        if order is not None:
            try:
                return symmetry_score(volume, order)
            except ValueError as exc:  # e.g. an empty class: no density, no axis
                logger.warning("no symmetry score: %s", exc)
                return None
        if ops is None:
            return None
        r, u = ops[0]
        if score is None:
            return operators_score(volume, r, u)
        # the operators of the truth, moved into the map's frame (map = T_(G, s) truth)
        moved = transform_operators(r, u, score.global_rotation, score.global_shift)
        return operators_score(volume, *moved)

    class_scores = []
    for k in range(k_pred):
        members = pred == k
        err_k = np.where(np.isnan(rot_err[members]), np.inf, rot_err[members])
        class_scores.append(
            ClassScore(
                label=f"class {k + 1}",
                class_number=k + 1,
                truth_class=int(reference[k]) + 1,
                matched=bool(cls.matching[k] >= 0),
                particles=int(members.sum()),
                map=scores[k],
                f1=float(cls.f1[cls.matching[k]]) if cls.matching[k] >= 0 else float("nan"),
                within_15deg=float(np.mean(correct[members] & (err_k < POSE_THRESHOLD_DEG)))
                if members.any()
                else float("nan"),
                median_rotation_error_deg=_median(rot_err[members]),
                median_shift_error_angstrom=_median(shift_err[members]) * voxel,
                symmetry=_map_symmetry(run.maps[k], scores[k]),
            )
        )

    oracle_scores = None
    if oracle:
        oracle_scores = _oracle_scores(sim, rows, lp, seed, _map_symmetry)

    truth_sym = None
    if ops is not None:
        truth_sym = tuple(_symmetry_value(_map_symmetry(t)) for t in sim.maps)

    return RunEvaluation(
        run_dir=str(run_dir),
        sim_dir=str(sim_dir),
        voxel_size=voxel,
        box=box,
        names=run.poses.names,
        predicted_classes=pred + 1,
        true_classes=true + 1,
        rotation_error_deg=rot_err,
        shift_error_voxels=shift_err,
        class_correct=correct,
        max_probability=run.poses.max_probability,
        classification=cls,
        classes=tuple(class_scores),
        oracle=oracle_scores,
        symmetry=sym_label,
        truth_symmetry=truth_sym,
        lowpass_angstrom=lp,
        missing=missing,
    )


def _oracle_scores(sim, rows, lp, seed, map_symmetry) -> tuple[ClassScore, ...]:
    """Oracle averages of the truth particles ``rows`` and their scores, per true class."""
    star = Path(sim.folder) / "particles.star"
    kwargs = {} if sim.tilt_range is None else {"tilt_range": sim.tilt_range}
    if sim.tilt_range is None:
        logger.warning(
            "truth.json gives no tilt_range: the oracle uses -60..60 degrees for particles "
            "without an rlnCtfImage weight"
        )
    table = read_particles_star(star, voxel_size=sim.voxel_size, **kwargs)
    table_index = {os.path.basename(p): i for i, p in enumerate(table.paths)}
    names = [sim.poses.names[r] for r in rows]
    absent = [nm for nm in names if nm not in table_index]
    if absent:
        raise ValueError(f"{star} lacks {len(absent)} particles of the truth (e.g. {absent[0]!r})")
    if table.box != sim.maps.shape[-1]:
        raise ValueError(f"the particles are {table.box}^3, the truth maps {sim.maps.shape[-1]}^3")
    indices = np.array([table_index[nm] for nm in names], dtype=np.int64)
    k_true = len(sim.maps)
    true = sim.poses.classes[rows] - 1
    logger.info("oracle average of %d particles", len(rows))
    orc = oracle_average(
        table, sim.poses.rotations[rows], sim.poses.shifts[rows], true, k_true,
        indices=indices, seed=seed,
    )  # fmt: skip
    out = []
    for j in range(k_true):
        sc = score_map(orc.maps[j], sim.maps[j], sim.voxel_size, lowpass_angstrom=lp)
        out.append(
            ClassScore(
                label=f"oracle {j + 1}",
                class_number=j + 1,
                truth_class=j + 1,
                matched=True,
                particles=int(orc.counts[j]),
                map=sc,
                symmetry=map_symmetry(orc.maps[j], sc),
            )
        )
    return tuple(out)
