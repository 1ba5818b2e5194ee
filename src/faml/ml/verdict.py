"""Whether a run's result can be trusted, from the evidence the run itself has.

A reference-free run can end in a wrong, self-consistent structure (measured on the 40 real
EMPIAR-10499 ribosomes: every seed settled, the last poses changing by 1-2 degrees, on a map
unlike the ribosome, while the set's own poses lay 130-145 degrees away). Nothing in the
usual figures (log-likelihood, band, class changes) tells it apart from a success, so the run
checks what a careful user would check by hand and states the result in the log,
``run.json`` and the report (:func:`judge`):

* **two independent random starts agree** (:func:`start_agreement`): the run's start and
  the runner-up start, continued to the same iteration (``RunConfig.verify``). Two runs that
  found the same structure give every particle the same pose up to one common rotation
  ``G`` (their maps differ by ``G``): ``R_a^T R_b`` is the same matrix for every particle.
  The share of particles in the largest group whose ``R_a^T R_b`` lie within 15 degrees of
  each other is that agreement; for unrelated runs it is a few particles (``1 / n`` and the
  chance that two random rotations lie within 15 degrees, about 0.1%). The starts are
  compared at the end, not after their first iterations: after three iterations the starts
  of successful simulated runs (SNR 0.01, 60 particles) agreed on only 7-25% of the
  particles, as little as those of failed real-data runs (2-8%). Below
  :data:`MIN_START_AGREEMENT` the run is not trusted, unless it fits the data better than
  the second start by :data:`MIN_LOGLIK_MARGIN` nats per particle or more (the second start
  then ended in a worse optimum; the two are run with the same bands so that their
  log-likelihoods compare);
* **poses settled**: the median pose change of the last iteration below
  :data:`MAX_FINAL_POSE_CHANGE_DEG`;
* **half maps agree beyond the lowest shells**: the band (FSC 0.143 between the half-set
  averages) above the run's smallest band ``config.min_band``; at the floor the two halves
  share little more than a blob.

Each check that cannot be made (one start, one iteration) is reported as not assessed, not
as passed. Without the agreement of two starts the verdict is *undetermined* (``trusted`` is
``None``) even when the other checks pass: measured on crowded simulations and on the real
set, runs that found nothing settled their poses and kept a band above the floor, so those
two checks alone do not confirm a structure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from faml.geometry.rotations import rotation_distance
from faml.geometry.symmetry import parse_symmetry

__all__ = [
    "MAX_FINAL_POSE_CHANGE_DEG",
    "MIN_START_AGREEMENT",
    "Verdict",
    "better_fit",
    "judge",
    "judge_run",
    "start_agreement",
]

logger = logging.getLogger(__name__)

MIN_START_AGREEMENT = 0.3
"""Smallest share of particles on which the chosen start agrees with another start."""

MAX_FINAL_POSE_CHANGE_DEG = 5.0
"""Largest median pose change (degrees) of the last iteration of a settled run."""

MIN_LOGLIK_MARGIN = 5.0
"""Nats per particle by which the run must out-fit a disagreeing second start to be trusted."""

AGREEMENT_TOLERANCE_DEG = 15.0
"""Two particles' relative rotations within this angle count as the same."""

AGREEMENT_SAMPLE = 600
"""At most this many particles (evenly spaced) enter :func:`start_agreement` (its cost is
quadratic in the count)."""


@dataclass(frozen=True)
class Verdict:
    """Whether a run can be trusted, why not, and the figures behind it.

    Attributes
    ----------
    trusted
        ``True`` when no check failed and two starts agreed; ``False`` when a check failed;
        ``None`` (undetermined) when none failed but the agreement of two starts was not
        assessed.
    reasons
        One sentence per failed check (empty when trusted).
    evidence
        The figures of every check: ``start_agreement`` (best agreement of the chosen start
        with another, ``None`` when not assessed), ``start_agreements`` (all of them),
        ``final_pose_change_deg``, ``band_shells``, ``min_band``.
    not_assessed
        Checks that could not be made, one short phrase each.
    """

    trusted: bool | None
    reasons: tuple[str, ...]
    evidence: dict = field(default_factory=dict)
    not_assessed: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Plain dict for ``run.json``."""
        return {
            "trusted": self.trusted,
            "reasons": list(self.reasons),
            "not_assessed": list(self.not_assessed),
            "evidence": self.evidence,
        }

    def sentence(self) -> str:
        """The verdict in one line, for the log and the report."""
        if self.trusted and self.evidence.get("second_start_worse"):
            margin = self.evidence["loglik_margin_per_particle"]
            return (
                "the result passed the checks of the run's own evidence; a second random start "
                f"ended in another, worse optimum (the run fits {margin:.1f} nats per particle "
                "better): the search is not reliable on these data, the result is the better "
                "of the two"
            )
        if self.trusted:
            return "the result passed every check of the run's own evidence"
        if self.trusted is None:
            return (
                "undetermined: no check failed, but not assessed: "
                + ", ".join(self.not_assessed)
                + " (without it a wrong structure cannot be told from a right one)"
            )
        return "the result cannot be trusted: " + "; ".join(self.reasons)


def start_agreement(
    rotations_a: np.ndarray,
    rotations_b: np.ndarray,
    symmetry: np.ndarray | None = None,
    tolerance_deg: float = AGREEMENT_TOLERANCE_DEG,
    classes_a: np.ndarray | None = None,
    classes_b: np.ndarray | None = None,
) -> float:
    """Share of particles whose poses in two runs differ by one common rotation (per class).

    Parameters
    ----------
    rotations_a, rotations_b
        `(n, 3, 3)` each particle's rotation in the two runs (RELION sense, particle =
        ``R`` map).
    symmetry
        `(G, 3, 3)` rotations of the maps' point group (poses are defined up to ``R S``);
        ``None``: none.
    tolerance_deg
        Two relative rotations closer than this count as the same.
    classes_a, classes_b
        `(n,)` each particle's class in the two runs (``None``: one class). The maps of a
        class of one run and a class of the other differ by their own rotation, so the
        particles are grouped by their pair of classes and each group contributes its own
        largest consistent set (class labels may be permuted between the runs).

    Returns
    -------
    float
        The share of particles whose relative rotations ``R_a^T R_b`` lie within
        ``tolerance_deg`` of one of them, summed over the class pairs (1: the runs agree on
        every particle up to a global rotation per class; for unrelated runs about one
        particle per pair of classes, ``K^2 / n``).
    """
    ra = np.asarray(rotations_a, dtype=np.float64)
    rb = np.asarray(rotations_b, dtype=np.float64)
    if ra.shape != rb.shape or ra.ndim != 3 or ra.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be two (n, 3, 3) arrays, got {ra.shape} and {rb.shape}")
    n = ra.shape[0]
    if n == 0:
        raise ValueError("start_agreement needs at least one particle")
    ka = np.zeros(n, np.int64) if classes_a is None else np.asarray(classes_a, np.int64)
    kb = np.zeros(n, np.int64) if classes_b is None else np.asarray(classes_b, np.int64)
    if ka.shape != (n,) or kb.shape != (n,):
        raise ValueError(f"classes must be ({n},) arrays, got {ka.shape} and {kb.shape}")
    keep = np.arange(n)
    if n > AGREEMENT_SAMPLE:
        keep = np.linspace(0, n - 1, AGREEMENT_SAMPLE).round().astype(np.int64)
    ops = np.eye(3)[None] if symmetry is None else np.asarray(symmetry, dtype=np.float64)
    agreeing = 0
    pairs = np.stack([ka[keep], kb[keep]], axis=1)
    for pair in np.unique(pairs, axis=0):
        members = keep[np.all(pairs == pair, axis=1)]
        agreeing += _largest_consistent(ra[members], rb[members], ops, tolerance_deg)
    return float(agreeing / keep.size)


def _largest_consistent(ra, rb, ops, tolerance_deg) -> int:
    """The largest number of particles whose ``R_a^T R_b`` lie within the tolerance of one."""
    q = np.einsum("nji,njk->nik", ra, rb)  # R_a^T R_b, (m, 3, 3)
    # With symmetry, R_a S_k and R_b S_l are the same poses: S_k^T q S_l are the same pair.
    copies = np.einsum("kji,njl,mlo->nkmio", ops, q, ops).reshape(q.shape[0], -1, 3, 3)
    m, g = copies.shape[:2]
    block = max(1, 4_000_000 // (m * g))
    near = np.zeros(m, dtype=np.int64)
    for s in range(0, m, block):
        angles = rotation_distance(q[s : s + block, None, None], copies[None]).min(axis=2)
        near[s : s + block] = np.sum(angles < tolerance_deg, axis=1)
    return int(near.max())


def judge(
    min_band: int,
    *,
    band_shells: int | None = None,
    pose_change_deg: float | None = None,
    log_likelihood: float | None = None,
    rotations: np.ndarray | None = None,
    second_rotations: np.ndarray | None = None,
    symmetry: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    second_classes: np.ndarray | None = None,
    second_loglik: float | None = None,
) -> Verdict:
    """The run's verdict from its last iteration and two independent starts' poses.

    Parameters
    ----------
    min_band
        The run's smallest band (``Tuning.min_band``).
    band_shells, pose_change_deg, log_likelihood
        The run's last iteration: its band, the median change of the particles' best
        rotation, its log-likelihood (:class:`faml.ml.state.IterationRecord`); ``None``:
        not known (no iteration after the start).
    rotations, second_rotations
        `(n, 3, 3)` the particles' final rotations in the run and in a second, independent
        start continued as far (``Tuning.verify``); ``None``: agreement not assessed.
    symmetry
        `(G, 3, 3)` the point group of the maps, for :func:`start_agreement`.
    classes, second_classes
        `(n,)` the particles' classes in the two runs (``None``: one class).
    second_loglik
        The second start's log-likelihood in its last iteration, over the same shells as
        the run's ``log_likelihood``. When the two starts disagree, a run
        that fits the data better by at least :data:`MIN_LOGLIK_MARGIN` nats per particle is
        still trusted: the second start ended in a worse optimum (measured on a crowded
        simulation, 1U6G at SNR 0.02: runs with 85% and 63% of poses within 15 degrees whose
        second starts ended elsewhere, agreement 10-11%, out-fitted them by 54 and 66 nats
        per particle; on the real EMPIAR-10499 set a failed run's second start fitted
        0.8 nats per particle better than the run).
    """
    reasons: list[str] = []
    missing: list[str] = []
    evidence: dict = {"min_band": int(min_band)}
    if rotations is not None and second_rotations is not None:
        agreement = start_agreement(
            rotations, second_rotations, symmetry, classes_a=classes, classes_b=second_classes
        )
        evidence["start_agreement"] = agreement
        loglik = log_likelihood
        margin = None
        if loglik is not None and second_loglik is not None:
            margin = (loglik - second_loglik) / max(rotations.shape[0], 1)
        evidence["loglik_margin_per_particle"] = margin
        if agreement < MIN_START_AGREEMENT and margin is not None and margin >= MIN_LOGLIK_MARGIN:
            evidence["second_start_worse"] = True
        elif agreement < MIN_START_AGREEMENT:
            reasons.append(
                f"two independent random starts ended in different structures (their poses "
                f"agree, up to one rotation, on {100 * agreement:.0f}% of the particles; "
                f"{100 * MIN_START_AGREEMENT:.0f}% or more is expected"
                + (
                    ""
                    if margin is None
                    else f", and the run fits the data only {margin:.1f} nats per particle "
                    f"better than the second start; {MIN_LOGLIK_MARGIN:g} or more would show "
                    "that start ended in a worse optimum"
                )
                + ")"
            )
    else:
        evidence["start_agreement"] = None
        missing.append("agreement of two random starts (one start, or --no-verify)")
    change = pose_change_deg
    evidence["final_pose_change_deg"] = change
    if change is None:
        missing.append("pose change (no iteration after the start)")
    elif change > MAX_FINAL_POSE_CHANGE_DEG:
        reasons.append(
            f"the poses were still moving (median change {change:.1f} degrees in the last "
            f"iteration)"
        )
    band = band_shells
    evidence["band_shells"] = band
    if band is not None and band <= min_band:
        reasons.append(
            f"the half-set averages agree only up to the smallest band ({band} shells): "
            f"little more than the particles' overall shape is resolved"
        )
    trusted = False if reasons else (None if evidence["start_agreement"] is None else True)
    return Verdict(trusted, tuple(reasons), evidence, tuple(missing))


def judge_run(config, last, results, check) -> Verdict:
    """:func:`judge` on a run's last record, its particles and its verification.

    ``last``: the run's last :class:`~faml.ml.state.IterationRecord`; ``check``: the
    verification's ``(results, log-likelihood)`` (``None``: none). Logged as a warning when
    the result cannot be trusted.
    """
    group = parse_symmetry(config.symmetry)
    check_results, check_loglik = (None, None) if check is None else check
    verdict = judge(
        config.tuning.min_band,
        band_shells=last.band_shells,
        pose_change_deg=last.median_pose_change_deg,
        log_likelihood=last.log_likelihood,
        rotations=np.stack([r.rotation for r in results]),
        second_rotations=None if check is None else np.stack([r.rotation for r in check_results]),
        symmetry=None if group.trivial else group.rotations(),
        classes=np.array([r.klass for r in results]),
        second_classes=None if check is None else np.array([r.klass for r in check_results]),
        second_loglik=check_loglik,
    )
    (logger.warning if verdict.trusted is False else logger.info)("verdict: %s", verdict.sentence())
    return verdict


def better_fit(second: float | None, first: float | None, n: int) -> bool:
    """Whether log-likelihood ``second`` beats ``first`` by the margin per particle.

    :data:`MIN_LOGLIK_MARGIN` nats per particle (``n`` particles); ``False`` when either is
    unknown.
    """
    if second is None or first is None:
        return False
    return (second - first) / max(n, 1) >= MIN_LOGLIK_MARGIN
