"""What ``faml run`` tells before and during the run: the plan, the CTF form, the clock.

Nothing here imports faml's numerical modules: these functions read the particle table,
the configuration and the executor they are given. ``pathlib`` is imported where it is used,
as in the other modules of :mod:`faml.cli`: ``faml --help`` imports them all.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("faml.cli")


def _n(count: int, noun: str) -> str:
    """``1 iteration``, ``2 iterations``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_WEIGHT_KINDS = {
    "signed": "signed CTF weights",
    "binary": "binary wedges",
    "abs": "|CTF| weights (phase-flipped data)",
}


def ctf_form_row(table, source: str, weights) -> str:
    """The plan's ``CTF form`` row: the form, how it is known, what the weights hold.

    ``source``: from :func:`faml.io.particles.with_ctf_form`; ``weights``: the
    :class:`~faml.io.validate.WeightSummary` the input checks read (no file is read again).
    """
    by_range = sum(w is None for w in table.weight_paths)
    if not weights.files:
        return "tilt ranges (binary wedges)"
    if table.ctf_premultiplied:
        row = f"premultiplied ({source}): CTF\u00b2 sums, weights up to {weights.high:.3g}"
    else:
        row = f"multiplied ({source}): {_WEIGHT_KINDS[weights.kind()]}"
    if by_range:
        row += f"; {_n(by_range, 'particle')} by tilt range (binary wedges)"
    return row


def plan_lines(
    args: argparse.Namespace, table, config, executor, ctf_form: str | None = None
) -> list[str]:
    """What ``faml run`` is about to do, one line per item (logged before iteration 1).

    ``ctf_form``: the ``CTF form`` row (:func:`ctf_form_row`), if known. A run from
    references (``--reference``) has a ``start`` row (:func:`start_row`) instead of the
    random starts in the ``method`` row.
    """
    from pathlib import Path

    from faml.ml.phase import fa_iterations, random_starts, start_iterations

    cfg = config
    if cfg.method == "fa":
        method = "fa (alignment only, hard assignments)"
    elif fa_iterations(cfg):
        warm_up = _n(min(fa_iterations(cfg), cfg.iterations), "iteration")
        method = f"faml, FA warm-up for the first {warm_up}"
    else:
        method = "faml (maximum likelihood from the first iteration)"
    if cfg.references or cfg.local_search_deg is not None:
        starts = None  # the plan's own row, start_row
    elif random_starts(cfg) > 1:
        each = _n(start_iterations(cfg), "iteration")
        starts = f"{random_starts(cfg)} random starts of {each} each, the best continues"
    else:
        starts = "1 random start"
    if args.mask:
        mask = f"{args.mask}"
    elif args.particle_diameter:
        mask = f"soft sphere, diameter {args.particle_diameter:g} A"
    else:
        mask = f"soft sphere, radius {cfg.mask_radius:g} of the box (default)"
    if cfg.particle_mask_radius is None:
        particles = "as stored (no --particle-mask)"
    else:
        particles = (
            f"background removed, soft sphere of radius {cfg.particle_mask_radius:.2f} of the "
            "box (neighbours and streaks outside it left out)"
        )
    gold = (
        "yes: halves refined independently after the common start"
        if cfg.gold_standard
        else "no: half-sets aligned to the joint average (their FSC is optimistic)"
    )
    workers = executor.workers
    if getattr(executor, "address", None) is None:
        where = "this process (1 worker)"
    elif args.cluster:
        where = f"{args.cluster} jobs via {_describe(executor)}; {workers} worker(s) so far"
    elif args.scheduler:
        where = f"{_describe(executor)}; {workers} worker(s) connected"
    else:
        where = f"local Dask cluster, {workers} worker processes"
    out = Path(args.out).resolve()
    poses = "the Dynamo table's" if getattr(args, "dynamo_table", None) else "the STAR file's"
    consensus = getattr(args, "consensus", False)
    references = list(args.reference or [])
    if consensus:
        poses, references = "the consensus run's", [str(out / "consensus" / "class_001.mrc")]
    rows = [
        ("particles", f"{len(table)}, from {args.particles}"),
        ("box", f"{table.box}^3 voxels, {table.voxel_size:.4g} A/voxel "
         f"({table.box * table.voxel_size:.4g} A)"),
        *([("CTF form", ctf_form)] if ctf_form else []),
        ("classes K", f"{cfg.classes}" + (
            f" ({cfg.classes - cfg.junk_classes} target, {cfg.junk_classes} junk: classes "
            f"{cfg.classes - cfg.junk_classes + 1}-{cfg.classes}, filled after the last "
            "iteration by the screen of the picks' correlations with the targets)"
            if cfg.junk_classes else "")),
        ("method", "; ".join(m for m in (method, starts) if m)
         + f"; at most {_n(cfg.iterations, 'iteration')}"),
        *([("consensus", "a K = 1 run first, reference-free (OUT/consensus: random starts, "
                         "FA warm-up, global search); its map and poses start the classes")]
          if consensus else []),
        *([("start", start_row(references, cfg, poses))]
          if cfg.references or cfg.local_search_deg is not None else []),
        ("symmetry", cfg.symmetry),
        ("gold standard", gold),
        *([("stability", f"{_n(args.stability, 'replicate')} with other seeds "
                         f"(OUT/replicates), compared with the run")]
          if getattr(args, "stability", 0) else []),
        ("mask", mask),
        *([("focus", "auto: a run without a focus first (OUT/unfocused), then the region "
                     "where its class maps differ most (OUT/focus_auto.mrc)"
                     if args.focus_mask == "auto" else
                     f"{args.focus_mask}: the classes differ only inside it (poses use the "
                     "whole particle)")] if cfg.focused else []),
        ("particle mask", particles),
        ("map step", f"{where}, {args.batch_size} particles per task"),
        ("output", f"{out}" + (" (--continue: after its last complete iteration)"
                               if args.resume else "")),
    ]  # fmt: skip
    return ["faml run plan:"] + [f"  {k:<14}{v}" for k, v in rows]


def start_row(paths: list[str], config, poses: str = "the STAR file's") -> str:
    """The plan's ``start`` row of a run from references or prior poses.

    ``--reference`` and ``--local-search``; ``poses``: whose poses are the priors.
    """
    from faml.ml.phase import fa_iterations, random_starts

    if paths:
        row = f"from {_n(len(paths), 'reference')} ({', '.join(str(p) for p in paths)})"
    else:
        row = f"from the average at {poses} poses"
    if config.local_search_deg is not None:
        row += (f"; local search within {config.local_search_deg:g} deg of each particle's "
                f"pose (prior sigma {config.local_search_deg / 3:.3g} deg)")  # fmt: skip
    from faml.ml.phase import split_start

    if split_start(config):
        row += (
            f"; {config.classes} classes from a split of the particles' differences from "
            f"their consensus ({'in the focus mask' if config.focused else 'in the mask'})"
        )
    elif config.classes > 1 and paths:
        if len(paths) == 1:
            row += (
                f" for all {config.classes} classes, each particle in a random class in iteration 1"
            )
        else:
            row += ", one per class"
    if paths:
        row += f", low-passed to {config.initial_lowpass:g} A"
    nots = []
    if random_starts(config) == 1:
        nots.append("no random starts")
    if config.method == "faml" and not fa_iterations(config):
        nots.append("no FA warm-up")
    return row + (f"; {', '.join(nots)}" if nots else "")


class IterationClock:
    """Progress hook of the executor: logs the expected time per iteration once.

    After the first tasks of the first iteration (one per worker, so that every worker has
    delivered, or the whole iteration), the particles per second so far give the expected
    map-step time of an iteration (particles / rate) and of the whole run.
    """

    def __init__(self, iterations: int, workers: int, starts_included: bool = False):
        self.iterations, self.workers = iterations, workers
        self.starts_included = starts_included
        self.calls, self.done = 0, False

    def __call__(self, label: str, done: int, total: int, seconds: float) -> None:
        """After each task of the executor (:data:`faml.parallel.executor.ProgressHook`)."""
        if self.done or not label.startswith("iteration"):
            return
        self.calls += 1
        if (self.calls < self.workers and done < total) or seconds <= 0:
            return
        self.done = True
        rate = done / seconds
        per_iteration = total / rate
        logger.info(
            "%s: %.3g particles/s after %d of %d particles: about %s per iteration "
            "(map step), up to %s for %s%s",
            label, rate, done, total, _duration(per_iteration),
            _duration(per_iteration * self.iterations), _n(self.iterations, "iteration"),
            " (the random starts' included)" if self.starts_included else "",
        )  # fmt: skip


def _describe(executor) -> str:
    address = getattr(executor, "address", None)
    if address is None:
        return "this process"
    dashboard = getattr(executor, "dashboard", None)
    return f"Dask scheduler {address}" + (f", dashboard {dashboard}" if dashboard else "")
