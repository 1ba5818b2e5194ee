"""``faml evaluate``: a run (or one map) scored against the simulation's truth.

:func:`evaluate_run` reads a run directory and a simulation directory (layouts in
:mod:`faml.evaluate.files`) and measures (DESIGN.md section 6):

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

:func:`evaluate_map` scores one map against one truth map. The figures they return
(:class:`RunEvaluation`, :class:`ClassScore`, :class:`MapEvaluation`) are defined in
:mod:`faml.evaluate.results` and importable from here too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faml.evaluate.classes import match_classes
from faml.evaluate.files import read_run, read_simulation, run_resolution
from faml.evaluate.maps import score_map
from faml.evaluate.oracle import oracle_average
from faml.evaluate.poses import pose_errors
from faml.evaluate.results import (
    POSE_THRESHOLD_DEG,
    ClassScore,
    MapEvaluation,
    RunEvaluation,
    _symmetry_value,
)
from faml.evaluate.symmetry import (
    cyclic_operators,
    operators_score,
    parse_symmetry,
    principal_axis,
    symmetry_score,
    transform_operators,
)
from faml.geometry.symmetry import parse_symmetry as parse_group
from faml.geometry.symmetry import symmetry_frame
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
