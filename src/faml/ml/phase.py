"""What kind of iteration iteration ``i`` of a run is: one function of the config and ``i``.

A run's iterations differ by a few rules, each measured (:class:`~faml.ml.config.Tuning`):

- the first ``fa_iterations`` (counted from 1, the random starts' included) run as FA, each
  particle at its best candidate, before the likelihood takes over (FAML runs);
- the first ``grid_iterations`` of a FAML run take their candidates from the scan's whole
  grid;
- with the gold standard, each half-set is aligned to its own half's average once the
  common start (the random start and the FA warm-up) is over;
- with a point group, the averages are turned into the group's frame after the M-step of
  :func:`symmetry_frame_iteration` and the sums of every later iteration are symmetrised;
- during the random starts (and the verification of the runner-up start) the band is held,
  so that the starts' fits compare; elsewhere it follows the FSC;
- the stopping rule applies once the FA warm-up and the grid iterations are over, and not
  while starts are compared or a start is verified.

:func:`phase_of` gives all of that as one :class:`Phase`; the engine, the map step and the
M-step read it and nothing else of these rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faml.geometry.symmetry import parse_symmetry
from faml.ml.config import RunConfig

__all__ = [
    "Phase",
    "fa_iterations",
    "given_start",
    "split_start",
    "iterations_in_all",
    "phase_of",
    "random_starts",
    "start_iterations",
    "starting_maps",
    "symmetry_frame_iteration",
]


@dataclass(frozen=True)
class Phase:
    """The rules of one iteration.

    Attributes
    ----------
    iteration
        The iteration (1-based; 0 is the random start, which has no phase).
    method
        ``"fa"`` or ``"faml"``: how this iteration weighs the candidates.
    grid
        Candidates from the scan's whole rotation x shift grid (FAML only).
    halves_independent
        Each half-set meets only its own half's averages (the gold standard).
    symmetrize
        The sums are averaged over the point group before the M-step.
    to_symmetry_frame
        After the M-step the averages are turned into the group's frame.
    held_band
        The band the next iteration uses, instead of the one the FSC gives (``None``).
    may_stop
        The stopping rule applies after this iteration.
    random_classes
        Each particle may go to one class only, drawn at random (the first iteration from
        one reference for several classes: RELION's random subsets).
    """

    iteration: int
    method: str
    grid: bool
    halves_independent: bool
    symmetrize: bool
    to_symmetry_frame: bool
    held_band: int | None
    may_stop: bool
    random_classes: bool = False


def given_start(config: RunConfig) -> bool:
    """Whether the run starts from what the user has (references or prior poses)."""
    return config.references > 0 or config.local_search_deg is not None


def fa_iterations(config: RunConfig) -> int:
    """The FA warm-up's iterations.

    ``Tuning.fa_iterations`` from random starts, none from references or prior poses (they
    are the structure and the poses the warm-up builds).
    """
    return 0 if given_start(config) else config.tuning.fa_iterations


def symmetry_frame_iteration(config: RunConfig) -> int:
    """The iteration after whose M-step the averages go into the symmetry frame.

    The sums of every later iteration are symmetrised (half the FA warm-up, at least 1).
    0 with references or prior poses: they are taken to be in the group's frame (as
    RELION's ``--ref`` with ``--sym``), and the sums are symmetrised from the first
    iteration.
    """
    return 0 if given_start(config) else max(1, config.tuning.fa_iterations // 2)


def phase_of(
    config: RunConfig, iteration: int, *, held_band: int | None = None, comparing: bool = False
) -> Phase:
    """The rules of iteration ``iteration`` of a run with ``config``.

    ``held_band``: the band to hold the model at after this iteration (random starts,
    verification); ``comparing``: the iteration belongs to starts being compared or a start
    being verified, which run a fixed number of iterations (no stopping rule).
    """
    t = config.tuning
    warm_up = fa_iterations(config)
    method = "fa" if iteration <= warm_up else config.method
    symmetric = not parse_symmetry(config.symmetry).trivial
    frame_at = symmetry_frame_iteration(config)
    return Phase(
        iteration=iteration,
        method=method,
        grid=method == "faml" and iteration <= t.grid_iterations,
        halves_independent=config.gold_standard and iteration > warm_up,
        symmetrize=symmetric and iteration > frame_at,
        to_symmetry_frame=symmetric and iteration == frame_at > 0,
        held_band=held_band,
        may_stop=not comparing and iteration > max(warm_up, t.grid_iterations),
        random_classes=(iteration == 1 and config.references == 1 and config.classes > 1
                        and not split_start(config)),
    )  # fmt: skip


def split_start(config: RunConfig) -> bool:
    """Whether the classes start from a split of the particles at their prior poses.

    ``K > 1``, a local search (the poses) and ``Tuning.class_start == "split"``
    (:mod:`faml.ml.split`).
    """
    return (config.classes > 1 and config.local_search_deg is not None
            and config.tuning.class_start == "split")  # fmt: skip


def start_iterations(config: RunConfig) -> int:
    """Iterations each random start runs before the best one is chosen (0: no choice)."""
    last = min(config.tuning.start_iterations, config.iterations)
    return last if random_starts(config) > 1 else 0


def random_starts(config: RunConfig) -> int:
    """How many random starts are compared (1: a single start, nothing to compare).

    Several starts need at least two iterations each: the first runs at the random start's
    band, so only later ones compare.
    """
    t = config.tuning
    if given_start(config):
        return 1
    if t.starts > 1 and min(t.start_iterations, config.iterations) >= 2:
        return t.starts
    return 1


def iterations_in_all(config: RunConfig) -> int:
    """Iterations a run does at most, those of every random start included."""
    first = start_iterations(config)
    if first:
        return config.tuning.starts * first + config.iterations - first
    return config.iterations


def starting_maps(config: RunConfig, table, references):
    """The `(K, N, N, N)` float64 maps a run starts from (``None``: random starts), checked.

    ``references``: what :func:`faml.ml.engine.run` was given, `(config.references, N, N,
    N)`; one map for several classes is repeated; junk classes without their own maps start
    from the references' mean. A local search needs the table's prior poses.
    """
    if config.local_search_deg is not None and table.prior_rotations is None:
        raise ValueError(
            "--local-search needs poses in the input (rlnAngleRot/Tilt/Psi and "
            "rlnOrigin*Angst in the STAR file, or a Dynamo table): these particles have none"
        )
    if not config.references:
        return None
    shape = (config.references, *(table.box,) * 3)
    if references is None or np.shape(references) != shape:
        got = None if references is None else np.shape(references)
        raise ValueError(f"the run starts from references: expected {shape}, got {got}")
    maps = np.asarray(references, np.float64)
    if config.references == 1:
        return np.repeat(maps, config.classes, 0)
    if config.references == config.classes:
        return maps
    junk = np.repeat(maps.mean(axis=0, keepdims=True), config.junk_classes, 0)
    return np.concatenate([maps, junk])
