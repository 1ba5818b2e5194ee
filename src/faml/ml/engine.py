"""The FAML / FA driver: random starts, the EM loop, verification, results.

One run (:func:`run`) on a :class:`~faml.io.particles.ParticleTable`:

1. iteration 0 is a random start (DESIGN.md 3.5): each particle at a random class and pose;
   with several starts (:func:`~faml.ml.phase.random_starts`) each runs its first
   iterations with the band held and the best-fitting one goes on (:func:`_begin`);
2. then :meth:`_Job.fit`, the one loop every line of iterations runs (the starts, the run,
   the verification), as scikit-learn's ``BaseMixture.fit``: per iteration its
   :class:`~faml.ml.phase.Phase`, the E-step over the particles as map-reduce
   (:mod:`faml.ml.tasks`, :mod:`faml.ml.em`), the M-step (:func:`faml.ml.mstep.update_model`,
   then :func:`faml.ml.reseed.reseed`), the record, the checkpoint
   (:mod:`faml.ml.rundir`) and the stopping rule: fewer than ``Tuning.stop_class_change`` of
   the particles changed class and the median change of their best rotation is below
   ``Tuning.stop_pose_change_deg``;
3. with several starts, the runner-up start is continued as far (:func:`_verification`):
   its poses are compared with the run's (:mod:`faml.ml.verdict`), and its result kept
   when it fits the data better by ``MIN_LOGLIK_MARGIN`` nats per particle;
4. the results (:mod:`faml.ml.outputs`): class maps filtered by the final FSC and masked,
   ``particles.star``, ``model.star``, ``run.json``.

Particles are split once into two random halves (``rlnRandomSubset``); each class average is
filtered by the FSC between its half averages and masked before it is used; the band of
alignment and likelihood follows that resolution. ``resume=True`` continues after the last
complete checkpoint and gives the same result as an uninterrupted run. The engine imports
nothing above :mod:`faml.ml`: the report is a hook (``on_iteration``) its caller passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from faml.geometry.masks import soft_sphere
from faml.io.particles import ParticleTable, with_weight_scale
from faml.ml.config import RunConfig
from faml.ml.em import ParticleResult, step_context
from faml.ml.focus import check_focus_mask, focus_averages, focus_state, focused_model
from faml.ml.junk import screen_junk, target_band
from faml.ml.mstep import reference_model, update_model
from faml.ml.outputs import final_fsc, final_map, run_summary, write_results
from faml.ml.phase import (
    Phase,
    phase_of,
    random_starts,
    split_start,
    start_iterations,
    starting_maps,
)
from faml.ml.reseed import reseed
from faml.ml.rundir import Checkpoints, load_checkpoint, remove_stale_temporaries
from faml.ml.split import split_classes, split_model, split_sample
from faml.ml.state import (
    IterationRecord,
    ModelState,
    RunResult,
    changes,
    filtered_average,
)
from faml.ml.stats import Stats
from faml.ml.tasks import Batch, chunks, map_initial, map_particles, reduce, split_halves
from faml.ml.verdict import better_fit, judge_run
from faml.parallel import Executor, ExecutorLost, make_executor

__all__ = ["DEFAULT_BATCH_SIZE", "IterationHook", "run"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
"""Particles per task of the map step (``--batch-size``); never changes a result."""

IterationHook = Callable[[Path, "dict | None"], None]
"""``hook(out, summary)``: called after each of the run's iterations is saved, with the run's
summary (version, configuration, particles), and once at the end with ``None`` (``run.json``
is written). :class:`faml.report.ReportHook` rewrites ``report.html``."""


def run(
    table: ParticleTable,
    out_dir: str | Path,
    config: RunConfig,
    *,
    mask: np.ndarray | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resume: bool = False,
    command_line: list[str] | None = None,
    on_iteration: IterationHook | None = None,
    references: np.ndarray | None = None,
    focus_mask: np.ndarray | None = None,
) -> RunResult:
    """Run FAML (or FA) on ``table`` and write the results into ``out_dir``.

    Parameters
    ----------
    table
        The particles.
    out_dir
        Output folder (created).
    config
        The run's configuration.
    mask
        `(N, N, N)` reference mask (values 0..1); default a soft sphere of radius
        ``config.mask_radius * N``.
    workers
        Local worker processes of the map step (1: in this process; more: a Dask
        ``LocalCluster``), when no ``executor`` is given.
    executor
        Where the map step runs (:mod:`faml.parallel`); the caller keeps it open.
    batch_size
        Particles per task of the map step. Neither it nor the executor changes a result.
    resume
        Continue after the last complete iteration in ``out_dir``.
    command_line
        Recorded in ``run.json``.
    on_iteration
        :data:`IterationHook`, e.g. the report.
    references
        `(config.references, N, N, N)` float32 maps the run starts from (``config.references
        > 0``), on the particles' grid, low-passed and masked (:mod:`faml.io.references`).
    focus_mask
        `(N, N, N)` the focus mask of a focused classification (values 0..1;
        ``config.focused``): the classes differ only inside it (:mod:`faml.ml.focus`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = with_weight_scale(table)  # premultiplied CTF² sums to about [0, 1]
    box, n, K = table.box, len(table), config.classes
    if K > n:
        raise ValueError(f"--classes {K} is more than the {n} particles")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if mask is None:
        mask = soft_sphere(box, config.mask_radius * box - 3.0, edge=3.0)
    elif mask.shape != (box,) * 3 or not np.any(mask > 0):
        raise ValueError(f"the mask must be a non-empty {(box,) * 3} volume, got {mask.shape}")
    if config.focused != (focus_mask is not None):
        raise ValueError("a focused run (config.focused) needs a focus mask, and only it")
    focus = None if focus_mask is None else check_focus_mask(focus_mask, box)
    references = starting_maps(config, table, references)
    halves = split_halves(n, config.seed)
    started = time.time()
    own = executor is None
    if own:
        executor = make_executor(workers)
    tasks = [Batch.of(table, c, halves, n) for c in chunks(n, batch_size, max(1, executor.workers))]
    job = _Job(table, config, executor, halves, tasks, mask, batch_size, references, focus)
    summary = run_summary(table, config, command_line, _ran_on(executor))
    main = job.line(out)
    try:
        if resume:
            remove_stale_temporaries(out)
        saved = main.last() if resume else None
        if saved is not None:
            state, results, history = load_checkpoint(saved)
            logger.info("continuing after iteration %d (%s)", state.iteration, saved)
        else:
            state, results, history = _begin(job, out, resume)
        after = None if on_iteration is None else (lambda: on_iteration(out, summary))
        state, results, history = job.fit(main, state, results, history, config.iterations,
                                          after=after)  # fmt: skip
        check = _verification(job, out, history, state.iteration, resume)
        if check is not None and better_fit(check[2], history[-1].log_likelihood, n):
            # The runner-up start fits the data better over the same shells: the start chosen
            # after the starts' first iterations ended in a worse optimum. Its result is kept.
            logger.warning(
                "the runner-up start fits the data better than the chosen one (by %.1f nats "
                "per particle over the same shells): its result is kept",
                (check[2] - history[-1].log_likelihood) / n,
            )
            old = (state, results, history[-1].log_likelihood)
            state, results = check[0], check[1]
            history[-1] = replace(history[-1], kept_runner_up=True, log_likelihood=check[2],
                                  log_likelihood_chosen_start=old[2])  # fmt: skip
            check = old
        if config.junk_classes:
            state, results, screen = screen_junk(executor, table, state, results, config,
                                                 halves, batch_size, mask)  # fmt: skip
            summary["junk_screen"] = screen.to_dict()
    except ExecutorLost as exc:
        done = main.last()
        after = "no iteration" if done is None else f"iteration {int(done.name)}"
        raise ExecutorLost(
            f"{exc}; {after} is saved: run the same command with --continue to resume"
        ) from exc
    finally:
        ran_on = _ran_on(executor)
        if own:
            executor.close()
    curves = final_fsc(state, config, mask)
    converged = bool(history[-1].converged)
    if not converged:
        logger.warning(
            "the run stopped at --iterations %d before it converged (in the last iteration "
            "%.1f%% of the particles changed class, median pose change %.2f deg): more "
            "iterations (--continue --iterations N) may still change the result",
            config.iterations, 100 * (history[-1].class_change or 0.0),
            history[-1].median_pose_change_deg or 0.0,
        )  # fmt: skip
    result = RunResult(
        state,
        np.array([r.klass for r in results]),
        np.stack([r.rotation for r in results]),
        np.stack([r.shift for r in results]),
        np.array([r.max_probability for r in results]),
        np.stack([final_map(state, k, mask, curves[k]) for k in range(K)]),
        history,
        converged,
        judge_run(config, history[-1], results, None if check is None else check[1:]),
    )
    summary.update(ran_on)
    write_results(out, table, result, halves, config, curves, summary, time.time() - started)
    if on_iteration is not None:
        on_iteration(out, None)
    return result


@dataclass(frozen=True)
class _Job:
    """What every iteration of one run shares: data, configuration, executor, split, mask."""

    table: ParticleTable
    config: RunConfig
    executor: Executor
    halves: np.ndarray
    tasks: list[Batch]  # the map step's tasks, the same every iteration
    mask: np.ndarray
    batch_size: int
    references: np.ndarray | None = None  # (K, N, N, N) with config.references
    focus: np.ndarray | None = None  # (N, N, N) the focus mask of a focused run

    def line(self, base: Path) -> Checkpoints:
        return Checkpoints(base, self.halves, self.table.voxel_size)

    def save(self, line: Checkpoints, state: ModelState, results, history) -> None:
        maps = np.stack([filtered_average(state, k, self.mask) for k in range(state.classes)])
        line.save(state, results, history, maps)

    def initial(self, start: int) -> tuple[ModelState, list[ParticleResult], list]:
        """Iteration 0 of random start ``start`` (DESIGN.md 3.5)."""
        t0 = time.perf_counter()
        cfg = self.config
        label = "start" if cfg.tuning.starts == 1 else f"start {start + 1}"
        results, stats = reduce(self.executor, map_initial, (cfg, start), self.tasks, label)
        state = update_model(stats, None, cfg, phase_of(cfg, 0), len(self.table), self.mask)
        # sigma_r^2: the particles against their (random-pose) class means; xi: the box
        state = replace(state, xi=float(self.table.box))
        if self.references is not None:
            state = reference_model(self.references, state, cfg, self.table.voxel_size)
        if split_start(cfg):
            state, results = self.split(state, results)
        return (
            state,
            results,
            [IterationRecord.of(state, self.table, None, time.perf_counter() - t0, 0.0)],
        )

    def split(self, state: ModelState, results: list[ParticleResult]):
        """Iteration 0's classes from a split of the particles at their prior poses.

        :func:`faml.ml.split.split_classes` inside the focus mask (or the reference mask),
        at the FSC band of the particles' consensus; the class averages are its classes'
        means (:func:`faml.ml.split.split_model`), made equal outside the focus mask.
        """
        table, cfg = self.table, self.config
        region = self.focus if self.focus is not None else self.mask
        targets = cfg.classes - cfg.junk_classes  # the junk classes wait for the screen
        split = split_classes(table, table.prior_rotations, table.prior_shifts, targets,
                              region, None, self.halves, cfg.particle_mask_radius,
                              split_sample(len(table), cfg))  # fmt: skip
        state, counts = split_model(state, table, split.labels, self.halves, self.executor,
                                    self.batch_size, cfg, cfg.tuning.min_band)  # fmt: skip
        if self.focus is not None and state.half_averages is not None:
            averages, halves = focus_state(state.averages, state.half_averages, state.alpha,
                                           counts, self.focus)  # fmt: skip
            state = replace(state, averages=averages, half_averages=halves)
        elif self.focus is not None:
            averages = focus_averages(state.averages, state.alpha, self.focus)
            state = replace(state, averages=averages)
        results = [replace(r, klass=int(split.labels[r.index])) for r in results]
        return state, results

    def fit(self, line: Checkpoints, state, results, history, last: int, *, held=None,
            comparing: bool = False, after=None):  # fmt: skip
        """Iterations ``state.iteration + 1 .. last``, each saved in ``line``.

        ``held``: iteration -> the band to hold the model at (``None``: the FSC's);
        ``comparing``: starts being compared or a start being verified (no stopping rule);
        ``after``: called after each iteration is saved. Returns the state, the particles'
        results and the history after the last iteration run.
        """
        for iteration in range(state.iteration + 1, last + 1):
            phase = phase_of(self.config, iteration, comparing=comparing,
                             held_band=None if held is None else held(iteration))  # fmt: skip
            t0 = time.perf_counter()
            try:
                ctx = step_context(state, self.config, phase, self.mask)
                label = f"iteration {iteration}"
                new_results, stats = reduce(self.executor, map_particles, ctx, self.tasks, label)
                t_map = time.perf_counter() - t0
                state, new_results = self.m_step(stats, state, phase, new_results)
            except ExecutorLost as exc:
                raise ExecutorLost(f"{exc} (during iteration {iteration})") from exc
            seconds = time.perf_counter() - t0
            record = IterationRecord.of(state, self.table, stats, seconds, t_map, phase.method)
            record = replace(record, **changes(results, new_results))
            if iteration == 1 and self.references is not None and not self.config.local_search_deg:
                # iteration 0's poses were random (the noise estimate): no change to measure
                record = replace(record, class_change=None, median_pose_change_deg=None)
            results = new_results
            self._log(record, stats)
            if phase.may_stop and self._settled(record):
                record = replace(record, converged=True)
            history.append(record)
            self.save(line, state, results, history)
            if after is not None:
                after()
            if record.converged:
                t = self.config.tuning
                logger.info(
                    "converged at iteration %d: %.2f%% of particles changed class (< %.2f%%) "
                    "and the median pose change is %.2f deg (< %.2f)",
                    iteration, 100 * record.class_change, 100 * t.stop_class_change,
                    record.median_pose_change_deg, t.stop_pose_change_deg,
                )  # fmt: skip
                break
        return state, results, history

    def m_step(self, stats: Stats, state: ModelState, phase: Phase, results):
        """The M-step, the re-seeding of emptied classes and the band rule of ``phase``."""
        state = update_model(stats, state, self.config, phase, len(self.table), self.mask,
                             self.focus)  # fmt: skip
        state = target_band(state, self.config, self.table.box)
        updated = state
        state, results = reseed(self.executor, self.table, state, results, self.config,
                                self.halves, self.batch_size)  # fmt: skip
        if state is not updated and self.focus is not None:
            state = focused_model(state, self.focus)  # a re-seeded class: equal outside too
        if phase.held_band is not None:
            state = replace(state, band=int(phase.held_band))
        return state, results

    def _settled(self, record: IterationRecord) -> bool:
        if record.class_change is None:
            return False
        t = self.config.tuning
        return (record.class_change < t.stop_class_change
                and record.median_pose_change_deg < t.stop_pose_change_deg)  # fmt: skip

    def _log(self, record: IterationRecord, stats: Stats) -> None:
        logger.info(
            "iteration %d: resolution %.1f A (band %d), alpha %s, log-lik %.4g, class changes "
            "%.1f%%, median pose change %.2f deg, %.1f s",
            record.iteration, record.resolution_angstrom, record.band_shells,
            np.round(record.alpha, 3).tolist(), stats.loglik, *_or_nan(
                100 * record.class_change if record.class_change is not None else None,
                record.median_pose_change_deg), record.seconds,
        )  # fmt: skip


def _or_nan(*values):
    return [np.nan if v is None else v for v in values]


def _begin(job: _Job, out: Path, resume: bool):
    """Iteration 0, or with several random starts the phase that compares them.

    Each start ``s`` is a random start (its own poses and classes, the same half split)
    followed by :func:`~faml.ml.phase.start_iterations` iterations, the band held at
    ``Tuning.start_band`` from the second on; the start whose last iteration fits the data
    best (FAML: the log-likelihood, summed over particles; FA: the summed best correlation)
    continues as the run. Every start is checkpointed in ``out/starts/SS/iterations/NNN``
    (resumed with ``resume``); the winner's last iteration becomes ``out/iterations/NNN``.
    """
    cfg, main = job.config, job.line(out)
    starts = random_starts(cfg)
    if starts == 1:
        state, results, history = job.initial(0)
        job.save(main, state, results, history)
        return state, results, history
    last = start_iterations(cfg)
    band = int(np.clip(cfg.tuning.start_band, cfg.tuning.min_band, job.table.box // 2 - 1))
    best, fits = None, []
    for s in range(starts):
        line = job.line(out / "starts" / f"{s + 1:02d}")
        saved = line.last() if resume else None
        if saved is not None:
            state, results, history = load_checkpoint(saved)
        else:
            state, results, history = job.initial(s)
            job.save(line, state, results, history)
        state, results, history = job.fit(line, state, results, history, last,
                                          held=lambda _: band, comparing=True)  # fmt: skip
        fits.append(history[-1].fit)
        logger.info("start %d of %d: fit %.6g after %d iterations", s + 1, starts, fits[-1],
                    last)  # fmt: skip
        if best is None or fits[-1] > fits[best[0]]:
            best = (s, state, results, history)
    s, state, results, history = best
    logger.info("continuing from start %d (best fit of %d starts)", s + 1, starts)
    history[-1] = replace(history[-1], starts_fit=fits, start_chosen=s + 1)
    job.save(main, state, results, history)
    return state, results, history


def _verification(job: _Job, out: Path, history: list[IterationRecord], final: int, resume: bool):
    """The runner-up random start continued to iteration ``final``.

    ``None`` when there is nothing to continue (one start, ``Tuning.verify`` off, or the run
    ended within the starts). Checkpointed in ``out/verify/iterations/NNN`` (resumed with
    ``resume``); the same iterations as the run's own, so that two independent starts are
    compared after equal work (:func:`faml.ml.verdict.judge`), and each iteration's band held
    at the run's, so that the two last log-likelihoods are taken over the same shells and
    compare. Returns its final state, the particles' results and the last iteration's
    log-likelihood.
    """
    chosen = next((r for r in history if r.starts_fit is not None), None)
    if not job.config.tuning.verify or chosen is None or final <= chosen.iteration:
        return None
    fits = np.asarray(chosen.starts_fit, dtype=np.float64)
    fits[chosen.start_chosen - 1] = -np.inf
    runner_up = int(np.argmax(fits))  # the first of equal fits, as the choice of the start
    line = job.line(out / "verify")
    saved = line.last() if resume else None
    if saved is None:
        saved = job.line(out / "starts" / f"{runner_up + 1:02d}").folder(chosen.iteration)
    state, results, check_history = load_checkpoint(saved)
    logger.info(
        "verification: start %d (the runner-up) continued to iteration %d", runner_up + 1, final
    )
    bands = {r.iteration: r.band_shells for r in history}
    state, results, check_history = job.fit(line, state, results, check_history, final,
                                            held=bands.get, comparing=True)  # fmt: skip
    return state, results, check_history[-1].log_likelihood


def _ran_on(executor) -> dict:
    try:
        workers = int(executor.workers)
    except Exception:  # noqa: BLE001 - a cluster that is gone has no worker count
        workers = None
    return {"executor": type(executor).__name__, "workers": workers}
