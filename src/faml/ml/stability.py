"""How stable are the classes? The same classification from other seeds, compared.

A classification that finds a real split puts the same particles together whatever its
seed; one forced onto a single state (``K = 2`` on one structure) cuts the set anew each
time. :func:`run_replicates` runs the classification again with other seeds (each a whole
:func:`faml.ml.engine.run`, in ``OUT/replicates/seed<S>``) and :func:`measure` compares each
replicate's classes with the run's own. Classes that start from the split of a consensus
(:mod:`faml.ml.split`) come out the same whatever the seed, so there each replicate draws the
split's components from another random half of the particles
(:data:`REPLICATE_SPLIT_SHARE`): a difference the data hold is found in either half, a cut
through noise is not.

- the **adjusted Rand index** of the two labellings (1: the same partition; about 0: no more
  agreement than chance), per replicate;
- per class of the run, **together**: the share of pairs of its particles that a replicate
  also puts in one class (the co-assignment), averaged over the replicates; and **kept**:
  the share of its particles found in the replicate's class matched to it (Hungarian
  matching of the classes on their overlap, :func:`faml.evaluate.classes`'s rule);
- per particle, its **consistency**: the share of replicates that put it in the class
  matched to its own;
- the **exchange** `(K, K)`: the mean share of class ``i``'s particles that the replicates
  put in the class matched to ``j``.

A suggested number of classes follows from them (:func:`suggest_classes`): classes that
exchange at least :data:`MERGE_SHARE` of their particles are one class; a class that no
replicate keeps together (``together`` below :data:`STABLE`) joins the class it exchanges
most with. The replicates' log-likelihoods are stated beside (a replicate that fits much
better than the run says the run ended in a poorer optimum). None of this needs the truth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.optimize import linear_sum_assignment

from faml.io.atomic import write_text_atomic
from faml.io.particles import ParticleTable
from faml.ml.config import RunConfig
from faml.ml.engine import run
from faml.ml.phase import split_start
from faml.ml.state import RunResult

__all__ = [
    "MERGE_SHARE",
    "REPLICATE_SPLIT_SHARE",
    "STABLE",
    "Stability",
    "adjusted_rand_index",
    "measure",
    "replicate_seeds",
    "run_replicates",
    "suggest_classes",
    "write_stability",
]

logger = logging.getLogger(__name__)

STABLE = 0.7
"""A class is stable when the replicates keep at least this share of its particle pairs
together (on average): about 83% of its particles in one class, as against about half for
a class cut out of a single state at random."""

REPLICATE_SPLIT_SHARE = 0.5
"""The share of the particles whose residuals define a replicate's split
(:attr:`faml.ml.config.Tuning.split_share`) when the run starts from the split."""

MERGE_SHARE = 0.2
"""Two classes are one when the replicates move at least this share of the particles of one
into the other (``exchange[i, j] + exchange[j, i]``)."""


@dataclass(frozen=True)
class Stability:
    """The classes of a run against those of its replicates.

    Attributes
    ----------
    seeds
        The run's seed, then the replicates'.
    rand_index
        `(R,)` adjusted Rand index of each replicate with the run.
    together, kept
        `(K,)` per class of the run (module docstring).
    exchange
        `(K, K)` mean share of class ``i``'s particles in the replicates' class matched to
        ``j`` (rows sum to 1 where a class has particles).
    consistency
        `(n,)` per particle: the share of replicates that agree with the run.
    log_likelihood
        The run's final log-likelihood, then the replicates' (NaN where none or over another
        band than the run's).
    suggested_classes
        The suggested number of classes.
    groups
        The run's classes (0-based) grouped as the suggestion merges them.
    evidence
        One sentence: why that number.
    """

    seeds: tuple[int, ...]
    rand_index: np.ndarray
    together: np.ndarray
    kept: np.ndarray
    exchange: np.ndarray
    consistency: np.ndarray
    log_likelihood: np.ndarray
    suggested_classes: int
    groups: tuple[tuple[int, ...], ...]
    evidence: str

    @property
    def stable(self) -> np.ndarray:
        """`(K,)` bool: the classes the replicates keep together."""
        return self.together >= STABLE

    def to_dict(self) -> dict:
        """The figures for ``run.json`` (the per-particle consistency summarised)."""

        def rounded(a):
            return np.round(np.asarray(a, dtype=np.float64), 4).tolist()

        c = self.consistency
        return {
            "seeds": list(self.seeds),
            "adjusted_rand_index": rounded(self.rand_index),
            "class_together": rounded(self.together),
            "class_kept": rounded(self.kept),
            "class_stable": [bool(s) for s in self.stable],
            "exchange": rounded(self.exchange),
            "particle_consistency_median": float(np.median(c)) if c.size else None,
            "particles_always_agreeing": float(np.mean(c >= 1.0)) if c.size else None,
            "log_likelihood": [
                None if not np.isfinite(v) else float(v) for v in self.log_likelihood
            ],  # fmt: skip
            "suggested_classes": int(self.suggested_classes),
            "groups": [[g + 1 for g in group] for group in self.groups],
            "evidence": self.evidence,
        }


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index of two labellings `(n,)` of the same items.

    1 for the same partition (whatever the labels), about 0 for independent ones; 1 when
    both put every item in one class.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two labellings of the same items are needed, got {a.shape}, {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max(initial=-1) + 1, bi.max(initial=-1) + 1))
    np.add.at(table, (ai, bi), 1.0)

    def pairs(x):
        return float(np.sum(x * (x - 1.0) / 2.0))

    n_pairs = a.size * (a.size - 1) / 2.0
    both, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / n_pairs if n_pairs else 0.0
    top = 0.5 * (rows + cols)
    if top == expected:  # both labellings trivial (one class each, or all singletons)
        return 1.0
    return float((both - expected) / (top - expected))


def _matching(main: np.ndarray, other: np.ndarray, classes: int) -> np.ndarray:
    """`(K,)` for each class of ``other``, the class of ``main`` matched to it (or -1)."""
    overlap = np.zeros((classes, classes))
    np.add.at(overlap, (main, other), 1.0)
    rows, cols = linear_sum_assignment(-overlap)
    to_main = np.full(classes, -1)
    to_main[cols] = rows
    return to_main


def measure(
    labels: np.ndarray,
    replicates: list[np.ndarray],
    classes: int,
    seeds: tuple[int, ...],
    log_likelihood: tuple[float, ...] | None = None,
    bands: tuple[int, ...] | None = None,
) -> Stability:
    """Compare a run's 0-based ``labels`` `(n,)` with each replicate's `(n,)`.

    ``classes``: ``K`` of all of them; ``seeds``: the run's and the replicates';
    ``log_likelihood``: their final log-likelihoods, in the same order, and ``bands`` the
    bands (shells) they were computed over: a likelihood over another band than the run's
    is not comparable and is left out (NaN).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not replicates:
        raise ValueError("stability needs at least one replicate of the classification")
    n = labels.size
    together = np.zeros(classes)
    kept = np.zeros(classes)
    exchange = np.zeros((classes, classes))
    agree = np.zeros(n)
    rand = []
    sizes = np.bincount(labels, minlength=classes).astype(np.float64)
    for rep in replicates:
        rep = np.asarray(rep, dtype=np.int64)
        if rep.shape != labels.shape:
            raise ValueError(f"a replicate labels {rep.size} particles, the run {n}")
        rand.append(adjusted_rand_index(labels, rep))
        mapped = _matching(labels, rep, classes)[rep]  # the replicate in the run's labels
        agree += mapped == labels
        counts = np.zeros((classes, classes))
        np.add.at(counts, (labels, mapped), 1.0)
        share = counts / np.maximum(sizes[:, None], 1.0)
        exchange += share
        kept += np.diag(share)
        pairs_in = np.sum(counts * (counts - 1.0), axis=1)
        together += np.where(sizes > 1, pairs_in / np.maximum(sizes * (sizes - 1.0), 1.0), 1.0)
    r = len(replicates)
    together, kept, exchange = together / r, kept / r, exchange / r
    ll = np.full(r + 1, np.nan) if log_likelihood is None else np.asarray(log_likelihood, float)
    if bands is not None:
        ll = np.where(np.asarray(bands) == bands[0], ll, np.nan)
    suggested, groups, evidence = suggest_classes(
        together, exchange, sizes, np.array(rand), ll / max(n, 1)
    )
    return Stability(
        seeds=tuple(int(s) for s in seeds),
        rand_index=np.array(rand),
        together=together,
        kept=kept,
        exchange=exchange,
        consistency=agree / r,
        log_likelihood=ll,
        suggested_classes=suggested,
        groups=groups,
        evidence=evidence,
    )


def suggest_classes(
    together: np.ndarray,
    exchange: np.ndarray,
    sizes: np.ndarray,
    rand_index: np.ndarray,
    log_likelihood: np.ndarray,
) -> tuple[int, tuple[tuple[int, ...], ...], str]:
    """The suggested ``K``, the groups of classes it merges, and the evidence in a sentence.

    Arguments as :class:`Stability`'s (``sizes``: particles per class of the run).
    """
    k = together.size
    parent = list(range(k))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    def join(i, j):
        parent[root(i)] = root(j)

    swapped = exchange + exchange.T
    for i in range(k):
        for j in range(i + 1, k):
            if sizes[i] and sizes[j] and swapped[i, j] >= MERGE_SHARE:
                join(i, j)
    for i in range(k):
        if sizes[i] and together[i] < STABLE and k > 1:
            off = np.where(np.arange(k) == i, -1.0, swapped[i])
            join(i, int(np.argmax(off)))
    occupied = [i for i in range(k) if sizes[i]]
    groups: dict[int, list[int]] = {}
    for i in occupied:
        groups.setdefault(root(i), []).append(i)
    grouped = tuple(tuple(g) for g in sorted(groups.values()))
    suggested = max(1, len(grouped))
    ari = ", ".join(f"{v:.2f}" for v in rand_index)
    worst = int(np.argmin(np.where(sizes > 0, together, np.inf))) if occupied else 0
    if suggested == k:
        evidence = (
            f"all {k} classes are stable across {rand_index.size + 1} seeds (adjusted Rand "
            f"index {ari}; each class keeps at least {100 * together[sizes > 0].min():.0f}% of "
            f"its particle pairs together): K = {k} is supported"
        )
    else:
        merged = [g for g in grouped if len(g) > 1]
        names = "; ".join(" and ".join(str(c + 1) for c in g) for g in merged)
        evidence = (
            f"classes {names} exchange their particles between seeds (adjusted Rand index "
            f"{ari}; class {worst + 1} keeps {100 * together[worst]:.0f}% of its particle pairs "
            f"together): they are not stable, suggested K = {suggested}"
        )
    finite = log_likelihood[np.isfinite(log_likelihood)]
    if finite.size > 1 and np.isfinite(log_likelihood[0]):
        gain = float(np.nanmax(log_likelihood[1:]) - log_likelihood[0])
        evidence += (
            f"; at the same band the best replicate's log-likelihood is {gain:+.3g} per "
            "particle from the run's"
            + (" (the run may have ended in a poorer optimum)" if gain > 1.0 else "")
        )
    return suggested, grouped, evidence


def replicate_seeds(seed: int, replicates: int) -> tuple[int, ...]:
    """The seeds of ``replicates`` replicates of a run with ``seed`` (distinct, fixed)."""
    return tuple(int(seed) + 1000 * (r + 1) for r in range(replicates))


def run_replicates(
    table: ParticleTable,
    out_dir: str | Path,
    config: RunConfig,
    result: RunResult,
    replicates: int,
    **run_options,
) -> Stability:
    """Run the classification ``replicates`` more times and measure the classes' stability.

    Each replicate is :func:`faml.ml.engine.run` with ``config`` but another seed
    (:func:`replicate_seeds`) in ``out_dir/replicates/seed<S>``; ``run_options`` go to each
    (mask, executor, references, resume, ...). ``result``: the run's own.
    """
    if config.classes < 2:
        raise ValueError("stability of classes needs --classes 2 or more")
    if split_start(config):
        # the split from all particles is deterministic: each replicate draws its components
        # from another half of the particles, so that a split of noise is not repeated
        logger.info(
            "stability: each replicate splits along the components of another random half "
            "of the particles (the run's split is deterministic)"
        )
        config = config.tuned(split_share=REPLICATE_SPLIT_SHARE)
    seeds = replicate_seeds(config.seed, replicates)
    labels, ll, bands = [], [_final_ll(result)], [_final_band(result)]
    for r, seed in enumerate(seeds, start=1):
        logger.info("stability: replicate %d of %d (seed %d)", r, replicates, seed)
        folder = Path(out_dir) / "replicates" / f"seed{seed}"
        rep = run(table, folder, replace(config, seed=seed), **run_options)
        labels.append(rep.classes)
        ll.append(_final_ll(rep))
        bands.append(_final_band(rep))
    found = measure(
        result.classes, labels, config.classes, (config.seed, *seeds), tuple(ll), tuple(bands)
    )
    logger.info("stability: %s", found.evidence)
    return found


def _final_ll(result: RunResult) -> float:
    trace = result.log_likelihood
    return float(trace[-1]) if trace.size else float("nan")


def write_stability(
    out_dir: str | Path, found: Stability, table: ParticleTable, classes: np.ndarray
) -> None:
    """Add ``found`` to ``OUT/run.json`` (key ``"stability"``) and write ``OUT/stability.star``.

    ``stability.star``: one row per particle, its file (``rlnImageName``, absolute), its class
    in the run (``rlnClassNumber``, 1-based) and its consistency
    (``famlClassConsistency``: the share of replicates that agree).
    """
    out = Path(out_dir)
    frame = pd.DataFrame({
        "rlnImageName": [str(Path(table.path(i)).resolve()) for i in range(len(table))],
        "rlnClassNumber": np.asarray(classes, dtype=np.int64) + 1,
        "famlClassConsistency": np.round(found.consistency, 4),
    })  # fmt: skip
    starfile.write({"particles": frame}, out / "stability.star", overwrite=True)
    info = json.loads((out / "run.json").read_text())
    info["stability"] = found.to_dict()
    write_text_atomic(out / "run.json", json.dumps(info, indent=2))


def _final_band(result: RunResult) -> int:
    return int(result.history[-1].band_shells) if result.history else -1
