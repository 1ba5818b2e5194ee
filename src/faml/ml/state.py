"""The typed values one run passes around: the model, an iteration's record, the result.

- :class:`ModelState`: the parameters ``Theta`` after an iteration (what a checkpoint holds);
- :class:`IterationRecord`: what one iteration measured (``run.json["iterations"]``, each
  checkpoint's ``manifest.json["history"]``, the report's plots);
- :class:`RunResult`: what :func:`faml.ml.engine.run` returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import scipy.fft

from faml.geometry.rotations import rotation_distance
from faml.ml.fourier import fsc_filter, shell_index
from faml.ml.verdict import Verdict

__all__ = [
    "IterationRecord",
    "ModelState",
    "RunResult",
    "changes",
    "filtered_average",
    "filtered_spectrum",
]


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

    @property
    def classes(self) -> int:
        """``K``."""
        return int(self.alpha.shape[0])


@dataclass(frozen=True)
class IterationRecord:
    """What one iteration measured.

    Written as a plain dict (:meth:`to_dict`: the fields that are not ``None``) into each
    checkpoint's ``manifest.json`` and ``run.json``; :meth:`from_dict` reads it back (a
    resumed run, the report).

    Attributes
    ----------
    iteration
        0: the random start.
    alpha, sigma2, xi_voxels, band_shells
        The model after the iteration's M-step (:class:`ModelState`).
    sigma2_mean_in_band
        Mean noise variance over shells ``1..band``.
    resolution_angstrom
        ``N * voxel / band``.
    log_likelihood
        FAML: the summed log-likelihood of the particles (over the likelihood's shells);
        ``None`` for FA and the start.
    map_step_seconds_by_stage, seconds, seconds_map_step
        Wall time: the map step's stages summed over particles, the iteration, its map step.
    class_change, median_pose_change_deg
        Share of particles whose best class changed; median change of their best rotation.
    fit
        FAML: the summed log-likelihood; FA: the summed best correlation (compares starts).
    converged
        ``True`` on the iteration that met the stopping rule.
    starts_fit, start_chosen
        On the chosen start's last iteration: every start's fit and the chosen one (1-based).
    kept_runner_up, log_likelihood_chosen_start
        When the verification's runner-up start fitted the data better and was kept.
    """

    iteration: int
    alpha: list[float]
    sigma2_mean_in_band: float
    sigma2: list[float]
    xi_voxels: float
    band_shells: int
    resolution_angstrom: float
    log_likelihood: float | None = None
    map_step_seconds_by_stage: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_map_step: float = 0.0
    class_change: float | None = None
    median_pose_change_deg: float | None = None
    fit: float | None = None
    converged: bool | None = None
    starts_fit: list[float] | None = None
    start_chosen: int | None = None
    kept_runner_up: bool | None = None
    log_likelihood_chosen_start: float | None = None

    _ALWAYS = ("log_likelihood",)

    def to_dict(self) -> dict:
        """JSON-ready dict; optional fields that are ``None`` are left out."""
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None or k in self._ALWAYS}

    @classmethod
    def of(cls, state: ModelState, table, stats, seconds: float, seconds_map: float,
           method: str = "faml"):  # fmt: skip
        """The record of ``state``.

        ``stats``: the iteration's sums (``None`` at the start); ``table``: the particles,
        for the resolution in Ångström; ``method``: the iteration's (FA has no likelihood).
        """
        band = state.band
        return cls(
            iteration=state.iteration,
            alpha=state.alpha.tolist(),
            sigma2_mean_in_band=float(np.mean(state.sigma2[1 : band + 1])),
            sigma2=state.sigma2.tolist(),
            xi_voxels=state.xi,
            band_shells=band,
            resolution_angstrom=table.box * table.voxel_size / max(band, 1),
            log_likelihood=None if stats is None or method == "fa" else stats.loglik,
            map_step_seconds_by_stage={} if stats is None else dict(stats.timings),
            seconds=seconds,
            seconds_map_step=seconds_map,
        )

    @classmethod
    def from_dict(cls, entry: dict) -> IterationRecord:
        """Read :meth:`to_dict`'s dict back (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in names})


@dataclass(frozen=True)
class RunResult:
    """What :func:`faml.ml.engine.run` returns: the final model and per-particle results.

    Attributes
    ----------
    state
        The final model.
    classes, rotations, shifts, max_probability
        Per particle: 0-based class `(n,)`, best rotation `(n, 3, 3)`, best shift `(n, 3)`
        (voxels), largest responsibility `(n,)`.
    maps
        `(K, N, N, N)` the class maps written (filtered by the final FSC, masked).
    history
        One record per iteration of the run's own line (the chosen start's from 0).
    converged
        Whether the stopping rule ended the run (``False``: the iteration cap did).
    verdict
        Whether the result can be trusted (:mod:`faml.ml.verdict`).
    """

    state: ModelState
    classes: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    max_probability: np.ndarray
    maps: np.ndarray
    history: list[IterationRecord]
    converged: bool = False
    verdict: Verdict | None = None

    @property
    def n_iterations(self) -> int:
        """Iterations after the random start (the last iteration's number)."""
        return int(self.state.iteration)

    @property
    def log_likelihood(self) -> np.ndarray:
        """`(len(history),)` the log-likelihood per iteration (NaN where none: FA, start)."""
        return np.array(
            [np.nan if r.log_likelihood is None else r.log_likelihood for r in self.history]
        )


def changes(previous, current) -> dict:
    """What changed between two iterations' particle results, and the new ones' summed fit.

    The fields ``class_change``, ``median_pose_change_deg`` and ``fit`` of
    :class:`IterationRecord`.
    """
    same = [p.klass == c.klass for p, c in zip(previous, current, strict=True)]
    angles = rotation_distance(
        np.stack([p.rotation for p in previous]), np.stack([c.rotation for c in current])
    )
    return {
        "class_change": 1.0 - float(np.mean(same)),
        "median_pose_change_deg": float(np.median(angles)),
        "fit": float(sum(r.fit for r in current)),
    }


def filtered_spectrum(
    spectrum: np.ndarray, curve: np.ndarray, band: int, mask: np.ndarray
) -> np.ndarray:
    """`(N, N, N)` float32: ``spectrum`` weighted by ``fsc_filter(curve, band)``, masked."""
    box = mask.shape[0]
    weights = fsc_filter(curve, band)
    spec = spectrum * weights[np.minimum(shell_index(box), box // 2)]
    vol = scipy.fft.irfftn(spec, s=(box,) * 3, workers=1)
    return (vol * mask).astype(np.float32)


def filtered_average(
    state: ModelState, klass: int, mask: np.ndarray, half: int | None = None
) -> np.ndarray:
    """Real-space class average, FSC-filtered to the current band and masked.

    ``half``: that half-set's average instead of the joint one (gold-standard runs).
    """
    source = state.averages if half is None else state.half_averages[half]
    return filtered_spectrum(source[klass], state.fsc[klass], state.band, mask)
