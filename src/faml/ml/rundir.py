"""The run directory: its layout, the checkpoint format (written and read here only), resume.

Layout of ``faml run``'s ``--out`` (what the engine writes):

.. code-block:: text

    OUT/inputs.json                  the inputs' and settings' fingerprint (faml run)
    OUT/iterations/NNN/              one complete iteration of the run (a checkpoint)
    OUT/starts/SS/iterations/NNN/    random start SS (several starts)
    OUT/verify/iterations/NNN/       the runner-up start continued (the verification)
    OUT/class_KKK.mrc, particles.star, model.star, run.json, report.html   the results
    OUT/report/run_info.json         the running engine's summary, for the report

A checkpoint folder ``iterations/NNN`` holds ``model.npz`` (the :class:`ModelState`),
``particles.npz`` (each particle's class, rotation, shift, largest responsibility, significant
candidates and half-set), ``class_KKK.mrc`` (the filtered, masked averages) and
``manifest.json``, written last, with the sha256 of each file and the history up to that
iteration: an iteration without it is incomplete, one whose files do not match is skipped.
Resuming continues after the newest complete one and gives the same result as an
uninterrupted run (everything depends only on the saved model, the seed and the iteration).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faml.io.atomic import atomic_path, write_text_atomic
from faml.io.mrc import write_volume
from faml.ml.em import ParticleResult
from faml.ml.state import IterationRecord, ModelState

__all__ = [
    "INFO_FILE",
    "Checkpoints",
    "IterationSummary",
    "checkpoint_problem",
    "complete_iterations",
    "last_complete_iteration",
    "load_checkpoint",
    "read_iteration_summary",
    "remove_stale_temporaries",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

INFO_FILE = Path("report") / "run_info.json"
"""Where the running engine's summary is kept (relative to the run directory)."""

ITERATIONS = "iterations"


def save_checkpoint(
    folder: Path,
    state: ModelState,
    results: list[ParticleResult],
    halves: np.ndarray,
    history: list[IterationRecord],
    maps: np.ndarray,
    voxel_size: float,
) -> None:
    """Write one complete iteration into ``folder`` (``manifest.json`` last)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.exists():
        manifest.unlink()
    halves_kept = {} if state.half_averages is None else {"half_averages": state.half_averages}
    with atomic_path(folder / "model.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh, iteration=state.iteration, averages=state.averages, fsc=state.fsc,
            band=state.band, alpha=state.alpha, sigma2=state.sigma2, xi=state.xi, **halves_kept,
        )  # fmt: skip
    with atomic_path(folder / "particles.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            classes=np.array([r.klass for r in results]),
            rotations=np.stack([r.rotation for r in results]),
            shifts=np.stack([r.shift for r in results]),
            max_probability=np.array([r.max_probability for r in results]),
            n_significant=np.array([r.n_significant for r in results]),
            target_fit=np.array([r.target_fit for r in results]),
            halves=halves,
        )
    for k, vol in enumerate(maps):
        write_volume(folder / f"class_{k + 1:03d}.mrc", vol, voxel_size)
    names = ["model.npz", "particles.npz"] + [f"class_{k + 1:03d}.mrc" for k in range(len(maps))]
    info = {
        "iteration": state.iteration,
        "complete": True,
        "sha256": {name: _sha256(folder / name) for name in names},
        "history": [r.to_dict() for r in history],
    }
    write_text_atomic(manifest, json.dumps(info))


def load_checkpoint(folder: Path) -> tuple[ModelState, list[ParticleResult], list[IterationRecord]]:
    """The model, the particles' results and the history saved in ``folder``."""
    with np.load(folder / "model.npz") as z:
        state = ModelState(
            int(z["iteration"]), z["averages"], z["fsc"], int(z["band"]), z["alpha"],
            z["sigma2"], float(z["xi"]),
            z["half_averages"] if "half_averages" in z.files else None,
        )  # fmt: skip
    with np.load(folder / "particles.npz") as z:
        n = len(z["classes"])
        # checkpoints written before the junk screen carry no target fits: NaN (not measured)
        fits = z["target_fit"] if "target_fit" in z.files else np.full(n, np.nan)
        columns = (z["classes"], z["rotations"], z["shifts"], z["max_probability"],
                   z["n_significant"], fits)  # fmt: skip
        results = [
            ParticleResult(i, int(c), r, s, float(p), int(ns), target_fit=float(f))
            for i, (c, r, s, p, ns, f) in enumerate(zip(*columns, strict=True))
        ]
    entries = json.loads((folder / "manifest.json").read_text())["history"]
    return state, results, [IterationRecord.from_dict(e) for e in entries]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be used (``None``: it can).

    A checkpoint is complete when its ``manifest.json`` (written last) is there; a manifest
    with ``sha256`` checksums must also match every file it lists.
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


def complete_iterations(base: Path) -> list[Path]:
    """``base/iterations/NNN`` folders with a ``manifest.json``, oldest first."""
    found = sorted((Path(base) / ITERATIONS).glob("[0-9][0-9][0-9]"))
    return [f for f in found if (f / "manifest.json").exists()]


def last_complete_iteration(base: Path) -> Path | None:
    """The newest ``base/iterations/NNN`` whose manifest's checksums match, or ``None``.

    A newer folder with a manifest but a file that does not match its checksum is skipped
    with a warning (the previous iteration is used).
    """
    for folder in reversed(complete_iterations(base)):
        problem = checkpoint_problem(folder)
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


@dataclass(frozen=True)
class Checkpoints:
    """One line of checkpoints: ``base/iterations/NNN`` (the run, a start, the verification).

    ``halves`` and ``voxel_size`` are what every checkpoint of the run shares.
    """

    base: Path
    halves: np.ndarray
    voxel_size: float

    def folder(self, iteration: int) -> Path:
        """``base/iterations/NNN`` of ``iteration``."""
        return self.base / ITERATIONS / f"{iteration:03d}"

    def save(self, state, results, history, maps) -> None:
        """Checkpoint ``state`` (its iteration), the results, the history, the maps."""
        save_checkpoint(
            self.folder(state.iteration), state, results, self.halves, history, maps,
            self.voxel_size,
        )  # fmt: skip

    def last(self) -> Path | None:
        """The newest usable checkpoint of this line (``None``: none)."""
        return last_complete_iteration(self.base)


@dataclass(frozen=True)
class IterationSummary:
    """What the report reads of one complete iteration (never the averages themselves).

    Attributes
    ----------
    number
        Iteration (0: the random start).
    folder
        ``iterations/NNN``.
    fsc
        `(K, N//2 + 1)` half-set FSC per class.
    band
        Fourier shells used (the resolution the engine works at).
    alpha
        `(K,)` class priors.
    classes
        `(n,)` 0-based best class per particle.
    rotations
        `(n, 3, 3)` best rotation per particle.
    max_probability
        `(n,)` largest responsibility per particle (1 for FA).
    n_significant
        `(n,)` candidates that carry 90% of the particle's weight.
    """

    number: int
    folder: Path
    fsc: np.ndarray
    band: int
    alpha: np.ndarray
    classes: np.ndarray
    rotations: np.ndarray
    max_probability: np.ndarray
    n_significant: np.ndarray

    def class_map(self, klass: int) -> Path:
        """``class_KKK.mrc`` of 0-based ``klass`` (FSC-filtered and masked)."""
        return self.folder / f"class_{klass + 1:03d}.mrc"


def read_iteration_summary(folder: Path) -> IterationSummary:
    """:class:`IterationSummary` of the checkpoint in ``folder``."""
    with np.load(folder / "model.npz") as z:
        number, fsc, band = int(z["iteration"]), np.asarray(z["fsc"]), int(z["band"])
        alpha = np.asarray(z["alpha"])
    with np.load(folder / "particles.npz") as z:
        classes, rotations = np.asarray(z["classes"]), np.asarray(z["rotations"])
        maxp, nsig = np.asarray(z["max_probability"]), np.asarray(z["n_significant"])
    return IterationSummary(number, folder, fsc, band, alpha, classes, rotations, maxp, nsig)


def read_history(folder: Path) -> list[dict]:
    """The history (plain dicts) in the manifest of the checkpoint in ``folder``."""
    return json.loads((folder / "manifest.json").read_text())["history"]
