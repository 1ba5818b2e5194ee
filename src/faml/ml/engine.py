"""The FAML / FA driver: initialise, iterate map-reduce steps, checkpoint, write results.

One run (:func:`run`) on a :class:`~faml.io.particles.ParticleTable`:

- iteration 0 is the random start (DESIGN.md 3.5), then iterations 1.. of
  :mod:`faml.ml.em`; with ``config.starts > 1``, several random starts run their first
  ``config.start_iterations`` iterations side by side and the best-fitting one goes on
  (:func:`_begin`); then until ``config.iterations`` or convergence: fewer than
  ``config.stop_class_change`` of the particles changed class and the median change of their
  best rotation is below ``config.stop_pose_change_deg``;
- particles are split once into two random halves (``rlnRandomSubset``); each class average
  is filtered by the FSC between its two half averages (weights ``sqrt(2F / (1 + F))``, cut
  where the FSC first drops below 0.143) and multiplied by the mask before it is used for
  alignment and likelihood; the band of both follows that resolution (never fewer than
  ``config.min_band`` shells; the likelihood adds ``config.band_margin`` shells);
- every iteration is checkpointed in ``DIR/iterations/NNN/`` (``manifest.json`` written last:
  an iteration without it is incomplete); ``resume=True`` continues after the last complete
  one and gives the same result as an uninterrupted run (everything depends only on the
  saved model, the seed and the iteration number);
- results: ``class_NNN.mrc`` (filtered by the final FSC, masked: :func:`_final_map`),
  ``particles.star`` (RELION 3.1+),
  ``model.star`` (FSC curves and resolution per class, RELION's layout), ``run.json``
  (version, command line, configuration, per-iteration parameters, timings); with
  ``config.gold_standard`` also the unfiltered half maps ``class_NNN_halfH_unfil.mrc``;
- ``config.gold_standard``: after the common start (the random start and the FA warm-up)
  each half-set is aligned and scored against its own half's average only (RELION's
  gold standard), so the FSC between the halves is an honest resolution; the final FSC is
  corrected for the mask by phase randomisation;
- the verdict (:mod:`faml.ml.verdict`): with several starts and ``config.verify``, the
  runner-up start is continued to the run's last iteration (``DIR/verify/iterations/NNN``,
  resumed like the run) and its poses compared with the run's (when it fits the data better
  than the run by ``MIN_LOGLIK_MARGIN`` nats per particle over the same shells, its result
  is kept instead: the start chosen early ended in a worse optimum); with the last pose change
  and the band this decides whether the result can be trusted (``RunResult.verdict``,
  ``run.json["verdict"]``, a warning in the log when not);
- ``config.symmetry`` (Cn, Dn): after iteration :func:`symmetry_frame_iteration` each class
  average is turned into the group's frame (:func:`faml.geometry.symmetry.symmetry_frame`)
  and the sums of every later iteration are averaged over the group before the M-step
  (:func:`faml.ml.em.symmetrize_stats`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft

from faml import __version__
from faml.align import prepare_average
from faml.geometry.masks import soft_sphere
from faml.geometry.rotations import rotation_distance
from faml.geometry.symmetry import parse_symmetry, symmetry_frame
from faml.geometry.transform import transform_volume
from faml.io.atomic import atomic_path, write_text_atomic
from faml.io.mrc import write_volume
from faml.io.particles import ParticleTable, TableRows, with_weight_scale
from faml.io.star import write_model_star, write_particles_star
from faml.ml.config import RunConfig
from faml.ml.em import (
    ParticleResult,
    StepContext,
    compensated_mean,
    hard_particle,
    initial_assignment,
    m_step,
    process_particle,
    reference_points,
    settings_for,
    symmetrize_stats,
)
from faml.ml.fourier import (
    band_from_fsc,
    fsc,
    fsc_filter,
    fsc_resolution,
    mask_corrected_fsc,
    shell_index,
)
from faml.ml.verdict import MIN_LOGLIK_MARGIN, Verdict, judge
from faml.parallel import Executor, ExecutorLost, TreeSum, make_executor

__all__ = ["ModelState", "RunResult", "run", "filtered_average"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelState:
    """The parameters ``Theta`` after an iteration (what a checkpoint holds).

    Attributes
    ----------
    iteration
        0 for the random start.
    averages
        `(K, N, N, N//2 + 1)` complex128 unfiltered class averages (``rfftn``).
    fsc
        `(K, N//2 + 1)` FSC between the half-set averages of each class.
    band
        Fourier shell limit of alignment (and, plus the margin, of the likelihood).
    alpha, sigma2, xi
        Class priors `(K,)`, noise variance per shell `(N//2 + 1,)`, translation prior (voxels).
    half_averages
        `(2, K, N, N, N//2 + 1)` the half-set averages (gold-standard runs; ``None`` else).
    """

    iteration: int
    averages: np.ndarray
    fsc: np.ndarray
    band: int
    alpha: np.ndarray
    sigma2: np.ndarray
    xi: float
    half_averages: np.ndarray | None = None


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns: the final model and per-particle results."""

    state: ModelState
    classes: np.ndarray  # (n,) 0-based
    rotations: np.ndarray  # (n, 3, 3)
    shifts: np.ndarray  # (n, 3) voxels
    max_probability: np.ndarray  # (n,)
    maps: np.ndarray  # (K, N, N, N) filtered, masked real-space averages
    history: list[dict]
    verdict: Verdict | None = None


def filtered_average(
    state: ModelState, klass: int, mask: np.ndarray, half: int | None = None
) -> np.ndarray:
    """Real-space class average, FSC-filtered to the current band and masked.

    ``half``: that half-set's average instead of the joint one (gold-standard runs).
    """
    source = state.averages if half is None else state.half_averages[half]
    return _filtered(source[klass], state.fsc[klass], state.band, mask)


def _filtered(spectrum: np.ndarray, curve: np.ndarray, band: int, mask: np.ndarray) -> np.ndarray:
    """`(N, N, N)` float32: ``spectrum`` weighted by ``fsc_filter(curve, band)``, masked."""
    box = mask.shape[0]
    weights = fsc_filter(curve, band)
    spec = spectrum * weights[np.minimum(shell_index(box), box // 2)]
    vol = scipy.fft.irfftn(spec, s=(box,) * 3, workers=1)
    return (vol * mask).astype(np.float32)


def gold_standard_active(config: RunConfig, iteration: int) -> bool:
    """Whether iteration ``iteration`` aligns each half-set to its own average.

    The common start is the random start and the FA warm-up (``config.fa_iterations``).
    """
    return config.gold_standard and iteration > config.fa_iterations


def symmetry_frame_iteration(config: RunConfig) -> int:
    """The iteration after whose M-step the averages go into the symmetry frame.

    The sums of every later iteration are symmetrised (half the FA warm-up, at least 1).
    """
    return max(1, config.fa_iterations // 2)


def _halves(n: int, seed: int) -> np.ndarray:
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    halves = np.zeros(n, dtype=np.int64)
    halves[perm[1::2]] = 1
    return halves


def _chunks(n: int, size: int, workers: int = 1) -> list[np.ndarray]:
    """Consecutive particle indices, ``size`` per task, the last tasks smaller.

    With several workers the last ``2 * workers * size`` particles go in ever smaller tasks
    (down to one particle), so that the workers run out of work together rather than one
    task apart.

    The split never changes a result (the sums are a fixed tree over particle indices).
    """
    chunks, start = [], 0
    while start < n:
        rest = n - start
        step = size
        if workers > 1 and rest <= 2 * workers * size:
            step = max(1, min(size, -(-rest // (2 * workers))))
        chunks.append(np.arange(start, min(start + step, n)))
        start += step
    return chunks


@dataclass(frozen=True)
class _Part:
    """What a task returns: its particles' results (in task order) and their partial sums."""

    results: list[ParticleResult]
    tree: TreeSum


def _combine(left: _Part, right: _Part) -> _Part:
    """Two adjacent tasks' parts as one (``left``'s particles first)."""
    return _Part(left.results + right.results, left.tree.merge(right.tree))


@dataclass(frozen=True)
class _Batch:
    """A task: particles by their index, with their rows of the table and their half-sets.

    ``leaves`` is the size of the whole sum (the table's length, or the number of placed
    particles). ``items`` are per particle ``(leaf, index, class, rotation, shift)`` when
    the particles are placed by hand, else ``None``.
    """

    indices: np.ndarray
    rows: TableRows
    halves: dict[int, int]
    leaves: int
    items: tuple | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def of(cls, table: ParticleTable, indices, halves: np.ndarray, leaves: int, items=None):
        idx = np.asarray(indices, dtype=np.int64)
        return cls(idx, TableRows(table, idx), {int(i): int(halves[i]) for i in idx}, leaves,
                   items)  # fmt: skip


def _part(pairs, leaves: int) -> _Part:
    """A task's part from ``(leaf, (result, stats))`` pairs, in task order."""
    results, tree = [], TreeSum(leaves)
    for leaf, (result, stats) in pairs:
        results.append(result)
        tree.add(leaf, stats)
    return _Part(results, tree)


def _map_particles(ctx: StepContext, batch: _Batch) -> _Part:
    """Task of an EM / FA iteration: the map step of the batch's particles."""
    return _part(
        (
            (int(i), process_particle(ctx, batch.rows, int(i), half=batch.halves[int(i)]))
            for i in batch.indices
        ),
        batch.leaves,
    )


def _map_initial(shared: tuple[RunConfig, int], batch: _Batch) -> _Part:
    """Task of random start ``start``: the batch's particles at random classes and poses."""
    config, start = shared

    def placed(i: int):
        _, klass, rotation, shift = initial_assignment(config, i, start)
        return hard_particle(batch.rows, i, klass, rotation, shift, config.classes,
                             batch.halves[i], config.particle_mask_radius)  # fmt: skip

    return _part(((int(i), placed(int(i))) for i in batch.indices), batch.leaves)


def _map_assigned(shared: tuple[int, float | None], batch: _Batch) -> _Part:
    """Task of particles placed by hand (``batch.items``); ``shared``: classes, mask radius."""
    classes, radius = shared
    return _part(
        (
            (leaf, hard_particle(batch.rows, i, k, r, t, classes, batch.halves[i], radius))
            for leaf, i, k, r, t in batch.items
        ),
        batch.leaves,
    )


def _reduce(executor: Executor, fn, shared, tasks: list, label: str):
    """Run ``fn`` over the tasks; the results in order and the statistics summed."""
    part = executor.map_reduce(
        fn, tasks, _combine, shared=shared, sizes=[len(t) for t in tasks], label=label
    )
    return part.results, part.tree.total()


def _state_after(stats, previous, config, box, n, iteration, previous_sigma2=None, mask=None):
    group = parse_symmetry(config.symmetry)
    frame_at = symmetry_frame_iteration(config)
    if not group.trivial and iteration > frame_at:
        stats = symmetrize_stats(stats, group.rotations())
    m = m_step(stats, previous, config.method, previous_sigma2, n, config.average_update)
    averages, halves = m.averages, m.half_averages
    if not group.trivial and iteration == frame_at:
        averages, halves = _to_symmetry_frame(averages, halves, group, box, mask)
    curves = np.stack([fsc(halves[0, k], halves[1, k]) for k in range(config.classes)])
    bands = [band_from_fsc(c) for c in curves]
    band = int(np.clip(max(bands), config.min_band, box // 2 - 1))
    return ModelState(
        iteration, averages, curves, band, m.alpha, m.sigma2, m.xi,
        halves if config.gold_standard else None,
    )  # fmt: skip


def _to_symmetry_frame(averages, halves, group, box, mask):
    """Each class's averages (joint and halves) turned into ``group``'s frame.

    The frame is found on the joint average (:func:`faml.geometry.symmetry.symmetry_frame`).
    """
    averages, halves = averages.copy(), halves.copy()
    shape = (box,) * 3
    for k in range(averages.shape[0]):
        joint = scipy.fft.irfftn(averages[k], s=shape, workers=1)
        q, t, score = symmetry_frame(joint, group, mask)
        logger.info(
            "class %d brought into the %s frame (mean correlation of its symmetry copies %.3f)",
            k + 1, group.name, score,
        )  # fmt: skip
        for target in (averages, halves[0], halves[1]):
            vol = scipy.fft.irfftn(target[k], s=shape, workers=1).astype(np.float32)
            target[k] = scipy.fft.rfftn(transform_volume(vol, q, t, order=3), workers=1)
    return averages, halves


def _save_checkpoint(folder: Path, state: ModelState, results, halves, history, table, maps):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.exists():
        manifest.unlink()
    with atomic_path(folder / "model.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                iteration=state.iteration,
                averages=state.averages,
                fsc=state.fsc,
                band=state.band,
                alpha=state.alpha,
                sigma2=state.sigma2,
                xi=state.xi,
                **({} if state.half_averages is None else {"half_averages": state.half_averages}),
            )
    with atomic_path(folder / "particles.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                classes=np.array([r.klass for r in results]),
                rotations=np.stack([r.rotation for r in results]),
                shifts=np.stack([r.shift for r in results]),
                max_probability=np.array([r.max_probability for r in results]),
                n_significant=np.array([r.n_significant for r in results]),
                halves=halves,
            )
    for k, vol in enumerate(maps):
        write_volume(folder / f"class_{k + 1:03d}.mrc", vol, table.voxel_size)
    names = ["model.npz", "particles.npz"] + [f"class_{k + 1:03d}.mrc" for k in range(len(maps))]
    checksums = {name: _sha256(folder / name) for name in names}
    write_text_atomic(
        manifest,
        json.dumps(
            {
                "iteration": state.iteration,
                "complete": True,
                "sha256": checksums,
                "history": history,
            }
        ),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be used (``None``: it can).

    A checkpoint is complete when its ``manifest.json`` (written last) is there; a manifest
    with ``sha256`` checksums (written since checksums were added) must also match every file
    it lists.
    """
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return "no manifest.json (the iteration did not finish)"
    try:
        info = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        return f"manifest.json is unreadable ({exc})"
    for name, expected in (info.get("sha256") or {}).items():
        try:
            actual = _sha256(folder / name)
        except OSError as exc:
            return f"{name} is unreadable ({exc})"
        if actual != expected:
            return f"{name} does not match its checksum in manifest.json"
    return None


def _load_checkpoint(folder: Path):
    with np.load(folder / "model.npz") as z:
        state = ModelState(
            int(z["iteration"]),
            z["averages"],
            z["fsc"],
            int(z["band"]),
            z["alpha"],
            z["sigma2"],
            float(z["xi"]),
            z["half_averages"] if "half_averages" in z.files else None,
        )
    with np.load(folder / "particles.npz") as z:
        results = [
            ParticleResult(i, int(c), r, s, float(p), int(ns))
            for i, (c, r, s, p, ns) in enumerate(
                zip(
                    z["classes"],
                    z["rotations"],
                    z["shifts"],
                    z["max_probability"],
                    z["n_significant"],
                    strict=True,
                )
            )
        ]
    history = json.loads((folder / "manifest.json").read_text())["history"]
    return state, results, history


def last_complete_iteration(out_dir: Path) -> Path | None:
    """The newest ``iterations/NNN`` folder with a manifest whose checksums match, or ``None``.

    A newer folder with a manifest but a file that does not match its checksum is skipped
    with a warning (the previous iteration is used).
    """
    folders = sorted((Path(out_dir) / "iterations").glob("[0-9][0-9][0-9]"))
    for folder in reversed(folders):
        if not (folder / "manifest.json").exists():
            continue
        problem = _checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("ignoring checkpoint %s: %s", folder, problem)
    return None


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``out_dir``.

    These are ``.NAME.XXXX.tmp`` files (:mod:`faml.io.atomic`), in ``out_dir`` and below;
    returns them. Only for a folder no other run is writing to.
    """
    removed = []
    for tmp in sorted(Path(out_dir).rglob(".*.tmp")):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
            logger.info("removed %s, left by an interrupted write", tmp)
    return removed


def _changes(previous, current):
    same = [p.klass == c.klass for p, c in zip(previous, current, strict=True)]
    class_change = 1.0 - float(np.mean(same))
    angles = rotation_distance(
        np.stack([p.rotation for p in previous]), np.stack([c.rotation for c in current])
    )
    return class_change, float(np.median(angles))


def run(
    table: ParticleTable,
    out_dir: str | Path,
    config: RunConfig,
    *,
    mask: np.ndarray | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    resume: bool = False,
    command_line: list[str] | None = None,
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
        Where the map step runs (:mod:`faml.parallel`); the caller keeps it open. The
        results do not depend on it.
    resume
        Continue after the last complete iteration in ``out_dir``.
    command_line
        Recorded in ``run.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = with_weight_scale(table)  # premultiplied CTF² sums to about [0, 1]
    box, n, K = table.box, len(table), config.classes
    if K > n:
        raise ValueError(f"--classes {K} is more than the {n} particles")
    if mask is None:
        mask = soft_sphere(box, config.mask_radius * box - 3.0, edge=3.0)
    elif mask.shape != (box,) * 3 or not np.any(mask > 0):
        raise ValueError(f"the mask must be a non-empty {(box,) * 3} volume, got {mask.shape}")
    halves = _halves(n, config.seed)
    started = time.time()
    own = executor is None
    if own:
        executor = make_executor(workers)
    batches = [
        _Batch.of(table, c, halves, n)
        for c in _chunks(n, config.chunk_size, max(1, executor.workers))
    ]
    job = _Job(table, config, executor, halves, batches, mask)
    report_clock = _Throttle(REPORT_SHARE)
    iteration = 0
    try:
        if resume:
            remove_stale_temporaries(out)
        checkpoint = last_complete_iteration(out) if resume else None
        if checkpoint is not None:
            state, results, history = _load_checkpoint(checkpoint)
            logger.info("continuing after iteration %d (%s)", state.iteration, checkpoint)
        else:
            state, results, history = _begin(job, out, resume)
        for iteration in range(state.iteration + 1, config.iterations + 1):
            state, results, entry = job.step(state, results, iteration)
            history.append(entry)
            job.save(out / "iterations" / f"{iteration:03d}", state, results, history)
            if report_clock.due():
                report_clock.timed(_report, out, table, config, command_line, executor)
            change = (entry["class_change"], entry["median_pose_change_deg"])
            settled = (
                change[0] < config.stop_class_change and change[1] < config.stop_pose_change_deg
            )
            if settled and iteration > max(config.fa_iterations, config.grid_iterations):
                logger.info(
                    "converged at iteration %d: %.2f%% of particles changed class (< %.2f%%) "
                    "and the median pose change is %.2f deg (< %.2f)",
                    iteration, 100 * change[0], 100 * config.stop_class_change, change[1],
                    config.stop_pose_change_deg,
                )  # fmt: skip
                history[-1]["converged"] = True
                break
        check = _verification(job, out, history, state.iteration, resume)
        if check is not None and _better(check[2], history[-1].get("log_likelihood"), n):
            # The runner-up start fits the data better over the same shells: the start chosen
            # after the starts' first iterations ended in a worse optimum. Its result is kept.
            logger.warning(
                "the runner-up start fits the data better than the chosen one (by %.1f nats "
                "per particle over the same shells): its result is kept",
                (check[2] - history[-1]["log_likelihood"]) / n,
            )
            old = (state, results, history[-1].get("log_likelihood"))
            state, results = check[0], check[1]
            history[-1]["kept_runner_up"] = True
            history[-1]["log_likelihood_chosen_start"] = old[2]
            history[-1]["log_likelihood"] = check[2]
            check = old
    except ExecutorLost as exc:
        done = last_complete_iteration(out)
        after = "no iteration" if done is None else f"iteration {int(done.name)}"
        raise ExecutorLost(
            f"{exc} (during iteration {iteration}); {after} is saved: run the same command "
            "with --continue to resume"
        ) from exc
    finally:
        ran_on = {"executor": type(executor).__name__, "workers": _workers(executor)}
        if own:
            executor.close()
    curves = _final_fsc(state, config, mask)
    maps = np.stack([_final_map(state, k, mask, curves[k]) for k in range(K)])
    verdict = _verdict(config, history, results, None if check is None else check[1:])
    result = RunResult(
        state,
        np.array([r.klass for r in results]),
        np.stack([r.rotation for r in results]),
        np.stack([r.shift for r in results]),
        np.array([r.max_probability for r in results]),
        maps,
        history,
        verdict,
    )
    _write_outputs(out, table, result, halves, config, ran_on, command_line, time.time() - started)
    _write_model(out, table, state, config, curves)
    _report(out)
    return result


def _verification(job: _Job, out: Path, history: list[dict], final: int, resume: bool):
    """The runner-up random start continued to iteration ``final``.

    ``None`` when there is nothing to continue (one start, ``config.verify`` off, or the run
    ended within the starts). Checkpointed in ``out/verify/iterations/NNN`` (resumed with
    ``resume``); the same iterations as the run's own, so that two independent starts are
    compared after equal work (:func:`faml.ml.verdict.judge`), and each iteration's band held
    at the run's, so that the two last log-likelihoods are taken over the same shells and
    compare. Returns its final state, the particles' results and the last iteration's
    log-likelihood.
    """
    cfg = job.config
    entry = next((e for e in history if "starts_fit" in e), None)
    if not cfg.verify or entry is None or final <= entry["iteration"]:
        return None
    fits = np.asarray(entry["starts_fit"], dtype=np.float64)
    fits[entry["start_chosen"] - 1] = -np.inf
    runner_up = int(np.argmax(fits))  # the first of equal fits, as the choice of the start
    folder = out / "verify"
    checkpoint = last_complete_iteration(folder) if resume else None
    if checkpoint is None:
        source = out / "starts" / f"{runner_up + 1:02d}" / "iterations"
        checkpoint = source / f"{entry['iteration']:03d}"
    state, results, check_history = _load_checkpoint(checkpoint)
    logger.info(
        "verification: start %d (the runner-up) continued to iteration %d", runner_up + 1, final
    )
    bands = {e["iteration"]: e["band_shells"] for e in history}
    for iteration in range(state.iteration + 1, final + 1):
        state, results, step = job.step(state, results, iteration, bands.get(iteration))
        check_history.append(step)
        job.save(folder / "iterations" / f"{iteration:03d}", state, results, check_history)
    return state, results, check_history[-1].get("log_likelihood")


def _better(second: float | None, first: float | None, n: int) -> bool:
    """Whether log-likelihood ``second`` beats ``first`` by the verdict's margin per particle."""
    if second is None or first is None:
        return False
    return (second - first) / max(n, 1) >= MIN_LOGLIK_MARGIN


def _verdict(config: RunConfig, history: list[dict], results, check) -> Verdict:
    """:func:`faml.ml.verdict.judge` on the run's history, its poses and the verification's.

    Logged as a warning when the result cannot be trusted.
    """
    group = parse_symmetry(config.symmetry)
    check_results, check_loglik = (None, None) if check is None else check
    second = None if check is None else np.stack([r.rotation for r in check_results])
    verdict = judge(
        history, config.min_band, np.stack([r.rotation for r in results]), second,
        None if group.trivial else group.rotations(),
        np.array([r.klass for r in results]),
        None if check is None else np.array([r.klass for r in check_results]),
        second_loglik=check_loglik,
    )  # fmt: skip
    (logger.warning if verdict.trusted is False else logger.info)("verdict: %s", verdict.sentence())
    return verdict


def _final_fsc(state: ModelState, config: RunConfig, mask: np.ndarray) -> list[dict]:
    """Per class the FSC curves of the final model.

    ``"gold"``: the half-set FSC of the last M-step; with the half averages (gold-standard
    runs) also :func:`faml.ml.fourier.mask_corrected_fsc`'s curves.
    """
    curves = []
    for k in range(config.classes):
        curve = {"gold": state.fsc[k]}
        if state.half_averages is not None:
            h = state.half_averages
            curve.update(mask_corrected_fsc(h[0, k], h[1, k], mask, config.seed))
        curves.append(curve)
    return curves


def _final_map(state: ModelState, klass: int, mask: np.ndarray, curve: dict) -> np.ndarray:
    """The class map written: the average filtered by its final FSC, masked.

    Gold-standard runs use the mask-corrected FSC of the independent halves (measured on the
    paper suite's E1, 100 GroEL particles: Pearson with the truth 0.639 -> 0.696, FSC 0.5
    with the truth 35.9 -> 25.2 A against filtering by the unmasked FSC); other runs the
    half-set FSC of the last M-step (their halves share a reference, so a masked FSC would
    be optimistic).
    """
    if "corrected" not in curve:
        return filtered_average(state, klass, mask)
    corrected = curve["corrected"]
    return _filtered(state.averages[klass], corrected, band_from_fsc(corrected), mask)


def _write_model(out: Path, table: ParticleTable, state: ModelState, config, curves) -> None:
    """``model.star`` (FSC per class, resolution) and, when kept, the unfiltered half maps.

    ``curves``: :func:`_final_fsc`'s. With the half averages (gold-standard runs) the
    resolution is read off the mask-corrected curve; otherwise off the half-set FSC of the
    last M-step.
    """
    box, voxel = table.box, table.voxel_size
    resolutions = []
    for k, curve in enumerate(curves):
        if state.half_averages is not None:
            for h in (0, 1):
                vol = scipy.fft.irfftn(state.half_averages[h, k], s=(box,) * 3, workers=1)
                write_volume(out / f"class_{k + 1:03d}_half{h + 1}_unfil.mrc", vol, voxel)
        final = curve.get("corrected", curve["gold"])
        resolutions.append(fsc_resolution(final, box, voxel, 0.143))
        logger.info(
            "class %d: FSC 0.143 resolution %.1f A (%s)", k + 1, resolutions[-1],
            "gold standard, mask-corrected" if "corrected" in curve else
            "half-sets aligned to the joint average: optimistic",
        )  # fmt: skip
    write_model_star(
        out / "model.star",
        box=box,
        voxel_size=voxel,
        maps=[f"class_{k + 1:03d}.mrc" for k in range(config.classes)],
        alpha=state.alpha,
        curves=curves,
        resolutions=resolutions,
        gold_standard=state.half_averages is not None and config.gold_standard,
    )


REPORT_SHARE = 0.1
"""Largest share of a run's wall time spent rewriting ``report.html`` between iterations.

A report costs 1-2 s (32^3, K = 2); an iteration of a small run costs about as much, so
rewriting it after every iteration doubled a 60-particle run's time. It is rewritten once the
time since the last one is ten times what that one cost, and always at the end.
"""


class _Throttle:
    """Whether a periodic side job is due: at most ``share`` of the wall time goes to it."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.cost = 0.0
        self.finished = -float("inf")

    def due(self) -> bool:
        return time.perf_counter() - self.finished >= self.cost / self.share

    def timed(self, fn, *args) -> None:
        t0 = time.perf_counter()
        fn(*args)
        self.finished = time.perf_counter()
        self.cost = self.finished - t0


def _report(out: Path, table=None, config=None, command_line=None, executor=None) -> None:
    """Rewrite ``out/report.html`` (:func:`faml.report.write_report`); a failure only warns.

    During the run (``table`` given) the report gets the summary that ``run.json`` holds at
    the end. Imported here, not at the top: the report sits above the engine (DESIGN.md 8)
    and only reads the files the engine has just written.
    """
    try:
        from faml.report import write_report

        info = None
        if table is not None:
            info = {
                "faml_version": __version__, "command_line": command_line,
                "config": config.to_dict(), "particles": len(table), "box": table.box,
                "voxel_size": table.voxel_size, "executor": type(executor).__name__,
                "workers": _workers(executor),
            }  # fmt: skip
        write_report(out, info=info)
    except Exception as exc:  # noqa: BLE001 - the report must never stop a run
        logger.warning("could not write the run report %s: %s", out / "report.html", exc)


@dataclass(frozen=True)
class _Job:
    """What every iteration of one run shares: data, configuration, executor, split, mask."""

    table: ParticleTable
    config: RunConfig
    executor: Executor
    halves: np.ndarray
    batches: list[_Batch]  # the map step's tasks, the same every iteration
    mask: np.ndarray

    def maps(self, state: ModelState) -> np.ndarray:
        return np.stack([filtered_average(state, k, self.mask) for k in range(len(state.alpha))])

    def save(self, folder: Path, state: ModelState, results, history) -> None:
        _save_checkpoint(folder, state, results, self.halves, history, self.table, self.maps(state))

    def initial(self, start: int) -> tuple[ModelState, list[ParticleResult], list[dict]]:
        """Iteration 0 of random start ``start`` (DESIGN.md 3.5)."""
        t0 = time.perf_counter()
        box, cfg = self.table.box, self.config
        results, stats = _reduce(
            self.executor,
            _map_initial,
            (cfg, start),
            self.batches,
            "start" if cfg.starts == 1 else f"start {start + 1}",
        )
        state = _state_after(stats, None, cfg, box, len(self.table), 0, mask=self.mask)
        # sigma_r^2: the particles against their (random-pose) class means; xi: the box
        state = replace(state, xi=float(box))
        entry = _history_entry(state, self.table, None, time.perf_counter() - t0, 0.0)
        return state, results, [entry]

    def step(self, state: ModelState, results, iteration: int, band: int | None = None):
        """One EM (or FA) iteration after ``state``: the new state, results, history entry.

        ``band``: the band of the next iteration, instead of the one the FSC gives (the
        multi-start phase holds every start at the same band so that their fits compare).
        """
        t0 = time.perf_counter()
        cfg, table = self.config, self.table
        if iteration <= cfg.fa_iterations:
            cfg = replace(cfg, method="fa")
        box, n = table.box, len(table)
        # the half-sets travel with the tasks: a worker never holds a per-particle array
        ctx = _context(state, cfg, iteration, box, self.mask, None)
        new_results, stats = _reduce(
            self.executor, _map_particles, ctx, self.batches, f"iteration {iteration}"
        )
        t_map = time.perf_counter() - t0
        state = _state_after(stats, state.averages, cfg, box, n, iteration, state.sigma2, self.mask)
        state, new_results = _reseed(self.executor, table, state, new_results, cfg, self.halves)
        if band is not None:
            state = replace(state, band=int(band))
        change = _changes(results, new_results)
        entry = _history_entry(state, table, stats, time.perf_counter() - t0, t_map)
        entry.update(
            class_change=change[0],
            median_pose_change_deg=change[1],
            fit=float(sum(r.fit for r in new_results)),
        )
        logger.info(
            "iteration %d: resolution %.1f A (band %d), alpha %s, log-lik %.4g, class changes "
            "%.1f%%, median pose change %.2f deg, %.1f s",
            iteration, entry["resolution_angstrom"], state.band,
            np.round(state.alpha, 3).tolist(), stats.loglik, 100 * change[0], change[1],
            entry["seconds"],
        )  # fmt: skip
        return state, new_results, entry


def _begin(job: _Job, out: Path, resume: bool):
    """Iteration 0, or with ``config.starts > 1`` the multi-start phase.

    Each start ``s`` is a random start (its own poses and classes, the same half split)
    followed by ``start_iterations`` iterations, the band held at ``start_band`` from the
    second on; the start whose last iteration fits the data best (FAML: the log-likelihood,
    summed over particles; FA: the summed best correlation) continues as the run. Every
    start is checkpointed in ``out/starts/SS/iterations/NNN`` (resumed with ``resume``); the
    winner's last iteration becomes ``out/iterations/NNN``.
    """
    cfg = job.config
    last = min(cfg.start_iterations, cfg.iterations)
    if cfg.starts == 1 or last < 2:  # one iteration is too few to compare starts
        state, results, history = job.initial(0)
        job.save(out / "iterations" / "000", state, results, history)
        return state, results, history
    band = int(np.clip(cfg.start_band, cfg.min_band, job.table.box // 2 - 1))
    best = None
    fits = []
    for s in range(cfg.starts):
        folder = out / "starts" / f"{s + 1:02d}"
        checkpoint = last_complete_iteration(folder) if resume else None
        if checkpoint is not None:
            state, results, history = _load_checkpoint(checkpoint)
        else:
            state, results, history = job.initial(s)
            job.save(folder / "iterations" / "000", state, results, history)
        for iteration in range(state.iteration + 1, last + 1):
            state, results, entry = job.step(state, results, iteration, band)
            history.append(entry)
            job.save(folder / "iterations" / f"{iteration:03d}", state, results, history)
        fits.append(history[-1]["fit"])
        logger.info("start %d of %d: fit %.6g after %d iterations", s + 1, cfg.starts,
                    fits[-1], last)  # fmt: skip
        if best is None or fits[-1] > fits[best[0]]:
            best = (s, state, results, history)
    s, state, results, history = best
    logger.info("continuing from start %d (best fit of %d starts)", s + 1, cfg.starts)
    history[-1].update(starts_fit=fits, start_chosen=s + 1)
    job.save(out / "iterations" / f"{state.iteration:03d}", state, results, history)
    return state, results, history


RESEED_SHARE = 0.25
"""A class with a prior below ``RESEED_SHARE / K`` is re-seeded (see :func:`_reseed`)."""


def _reseed(executor, table, state, results, config, halves):
    """Re-seed classes that have (nearly) emptied, instead of letting them die.

    Rule: while a class ``k`` holds less than ``RESEED_SHARE / K`` of the particles (by its
    prior ``alpha_k``), the worse-fitting half (lowest log-likelihood for FAML, lowest
    correlation for FA) of the particles whose best class is the largest class is moved to
    ``k`` with their current poses; ``k``'s average becomes the wedge-compensated mean of
    those particles and ``alpha`` follows the new counts. Particles that fit the dominant
    average worst are the likeliest to belong to another structure.
    """
    K = config.classes
    if K == 1:
        return state, results
    averages = state.averages.copy()
    half_averages = None if state.half_averages is None else state.half_averages.copy()
    curves = state.fsc.copy()
    alpha = state.alpha.copy()
    results = list(results)
    for k in range(K):
        if alpha[k] >= RESEED_SHARE / K:
            continue
        counts = np.bincount([r.klass for r in results], minlength=K)
        big = int(np.argmax(counts))
        members = [r for r in results if r.klass == big]
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r.fit)
        moved = members[: len(members) // 2]
        items = [(leaf, r.index, k, r.rotation, r.shift) for leaf, r in enumerate(moved)]
        per_task = [
            _Batch.of(table, [it[1] for it in part], halves, len(items), tuple(part))
            for part in (
                items[s : s + config.chunk_size] for s in range(0, len(items), config.chunk_size)
            )
        ]
        _, total = _reduce(
            executor,
            _map_assigned,
            (K, config.particle_mask_radius),
            per_task,
            f"re-seeding class {k + 1}",
        )
        S, W = total.dense()
        s = S[:, k]  # (2, ...)
        w = W[:, k]
        averages[k] = compensated_mean(s.sum(axis=0), w.sum(axis=0), total.level[:, k].sum(0))
        halves_k = [compensated_mean(s[h], w[h], total.level[h, k]) for h in (0, 1)]
        curves[k] = fsc(halves_k[0], halves_k[1])
        if half_averages is not None:
            half_averages[:, k] = halves_k
        for r in moved:
            results[r.index] = ParticleResult(
                r.index, k, r.rotation, r.shift, r.max_probability, r.n_significant, r.fit
            )
        counts = np.bincount([r.klass for r in results], minlength=K)
        alpha = counts / counts.sum()
        logger.info(
            "class %d held %.1f%% of the particles: re-seeded with the %d worst-fitting "
            "particles of class %d", k + 1, 100 * state.alpha[k], len(moved), big + 1,
        )  # fmt: skip
    if alpha is state.alpha:
        return state, results
    band = int(np.clip(max(band_from_fsc(c) for c in curves), config.min_band, table.box // 2 - 1))
    return (
        ModelState(
            state.iteration, averages, curves, band, alpha, state.sigma2, state.xi, half_averages
        ),
        results,
    )


def _context(state, config, iteration, box, mask, halves) -> StepContext:
    settings = settings_for(config, box, state.band, state.sigma2, state.xi)
    band_e = int(min(state.band + config.band_margin, box // 2 - 1))
    K = config.classes

    def prepared(half):
        maps = np.stack([filtered_average(state, k, mask, half) for k in range(K)])
        spectra = scipy.fft.rfftn(maps, axes=(-3, -2, -1), workers=1)
        align = tuple(prepare_average(m, settings) for m in maps)
        return align, reference_points(spectra, band_e)

    half_align = half_references = None
    if gold_standard_active(config, iteration) and state.half_averages is not None:
        per_half = [prepared(h) for h in (0, 1)]
        half_align = (per_half[0][0], per_half[1][0])
        half_references = np.stack([per_half[0][1], per_half[1][1]])
        align, references = (), half_references[0]
    else:
        align, references = prepared(None)
    with np.errstate(divide="ignore"):
        log_alpha = np.log(np.maximum(state.alpha, 1e-300))
    return StepContext(
        config=config,
        iteration=iteration,
        box=box,
        log_alpha=log_alpha,
        sigma2=state.sigma2,
        xi=state.xi,
        align=align,
        references=references,
        band_e=band_e,
        halves=halves,
        # The sums reach twice the likelihood's band: the half maps' FSC can show the
        # resolution doubling in one iteration, and the maps are filtered to that band
        # anyway. At 64^3 and band 6 the whole sphere cost 90% of the map step.
        band_m=min(2 * band_e, box // 2 - 1),
        half_align=half_align,
        half_references=half_references,
    )


def _history_entry(state, table, stats, seconds, seconds_map) -> dict:
    band = state.band
    return {
        "iteration": state.iteration,
        "alpha": state.alpha.tolist(),
        "sigma2_mean_in_band": float(np.mean(state.sigma2[1 : band + 1])),
        "sigma2": state.sigma2.tolist(),
        "xi_voxels": state.xi,
        "band_shells": band,
        "resolution_angstrom": table.box * table.voxel_size / max(band, 1),
        "log_likelihood": None if stats is None else stats.loglik,
        "map_step_seconds_by_stage": {} if stats is None else dict(stats.timings),
        "seconds": seconds,
        "seconds_map_step": seconds_map,
    }


def _workers(executor) -> int | None:
    try:
        return int(executor.workers)
    except Exception:  # noqa: BLE001 - a cluster that is gone has no worker count
        return None


def _write_outputs(out, table, result, halves, config, ran_on, command_line, seconds):
    for k, vol in enumerate(result.maps):
        write_volume(out / f"class_{k + 1:03d}.mrc", vol, table.voxel_size)
    write_particles_star(
        out / "particles.star",
        table,
        result.rotations,
        result.shifts,
        result.classes + 1,
        result.max_probability,
        random_subset=halves + 1,
    )
    info = {
        "faml_version": __version__,
        "command_line": command_line,
        "config": config.to_dict(),
        "seed": config.seed,
        **ran_on,
        "particles": len(table),
        "box": table.box,
        "voxel_size": table.voxel_size,
        "seconds": seconds,
        "iterations": result.history,
        "verdict": None if result.verdict is None else result.verdict.to_dict(),
    }
    write_text_atomic(out / "run.json", json.dumps(info, indent=2))
