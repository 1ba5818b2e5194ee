"""Reading a run directory for the report (never the particles themselves).

What is read, newest first:

- ``run.json`` (written at the end of a run): version, command line, configuration,
  particles, box, voxel size, workers, and the per-iteration ``history``;
- while a run goes on there is no ``run.json``: the summary the engine hands to the report
  writer (kept in ``report/run_info.json``) and the history of the newest complete
  iteration's ``manifest.json``;
- ``iterations/NNN/`` with a ``manifest.json`` (complete iterations only), read by
  :mod:`faml.ml.rundir` (the checkpoint format is written and read there only): the FSC per
  class, band, alpha, the particles' classes, rotations, max probability, n_significant,
  and ``class_KKK.mrc``;
- of a finished run, ``model.star`` (the final FSC curves per class, RELION's layout; its
  first line says whether the halves were refined independently) and the names of the
  unfiltered half maps ``class_KKK_halfH_unfil.mrc`` (gold-standard runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import starfile

from faml.io.mrc import read_header
from faml.ml.rundir import (
    INFO_FILE,
    IterationSummary,
    complete_iterations,
    read_history,
    read_iteration_summary,
)

IterationFiles = IterationSummary
"""One complete iteration of a run (:class:`faml.ml.rundir.IterationSummary`)."""


MODEL_CURVES = {
    "gold": "rlnGoldStandardFsc",
    "corrected": "rlnFourierShellCorrelationCorrected",
    "masked": "rlnFourierShellCorrelationMaskedMaps",
    "unmasked": "rlnFourierShellCorrelationUnmaskedMaps",
    "random": "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
}
"""The FSC curves of ``model.star`` (:func:`faml.io.star.write_model_star`) by short name."""


@dataclass(frozen=True)
class FinalModel:
    """``model.star`` of a finished run.

    Attributes
    ----------
    path
        The file.
    independent
        Whether the half maps were refined independently (gold standard), from the file's
        first line; ``None`` if it does not say.
    resolutions
        `(K,)` Ångström at FSC 0.143 per class (``rlnEstimatedResolution``).
    curves
        Per class, the curves it holds: short name (:data:`MODEL_CURVES`) -> `(N//2 + 1,)`.
    half_maps
        Per class, the unfiltered half maps that exist (``class_KKK_halfH_unfil.mrc``).
    """

    path: Path
    independent: bool | None
    resolutions: np.ndarray
    curves: list[dict[str, np.ndarray]]
    half_maps: list[list[Path]]


def read_model_star(folder: Path) -> FinalModel | None:
    """``folder/model.star`` read for the report, or ``None`` if there is none."""
    path = folder / "model.star"
    if not path.exists():
        return None
    with path.open() as f:
        first = f.readline()
    independent = None
    if first.startswith("# faml:"):
        independent = "independently" in first
    blocks = starfile.read(path, always_dict=True)
    classes = blocks["model_classes"]
    resolutions = np.asarray(classes["rlnEstimatedResolution"], dtype=float)
    curves, half_maps = [], []
    for k in range(len(classes)):
        table = blocks[f"model_class_{k + 1}"]
        curves.append({
            key: np.asarray(table[label], dtype=float)
            for key, label in MODEL_CURVES.items()
            if label in table.columns
        })  # fmt: skip
        names = (folder / f"class_{k + 1:03d}_half{h}_unfil.mrc" for h in (1, 2))
        half_maps.append([p for p in names if p.exists()])
    return FinalModel(path, independent, resolutions, curves, half_maps)


def _final_model(folder: Path) -> FinalModel | None:
    try:
        return read_model_star(folder)
    except (KeyError, ValueError, OSError):  # unreadable: the report goes on without it
        return None


@dataclass(frozen=True)
class RunFiles:
    """What the report knows about a run directory.

    ``info`` is ``run.json`` (``complete``) or the running engine's summary (may be empty);
    ``history`` the per-iteration entries; ``iterations`` the complete iteration folders,
    oldest first (a multi-start run has none before the chosen start's last one).
    """

    folder: Path
    info: dict
    complete: bool
    history: list[dict]
    iterations: list[IterationFiles]
    box: int
    voxel_size: float
    classes: int
    particles: int
    model: FinalModel | None = None

    @property
    def last(self) -> IterationFiles:
        """The newest complete iteration."""
        return self.iterations[-1]

    @property
    def config(self) -> dict:
        """The run's configuration (empty if unknown)."""
        return self.info.get("config") or {}


def read_run_files(folder: str | os.PathLike[str], info: dict | None = None) -> RunFiles:
    """Read a run directory (complete or in progress) for the report.

    Parameters
    ----------
    folder
        The run directory.
    info
        The running engine's summary, used when there is no ``run.json`` yet.

    Raises
    ------
    ValueError
        If the folder holds no complete iteration.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory")
    done = complete_iterations(folder)
    if not done:
        raise ValueError(f"{folder} holds no complete iteration (iterations/NNN/manifest.json)")
    run_json = folder / "run.json"
    complete = run_json.exists()
    if complete:
        info = json.loads(run_json.read_text())
    elif info is None:
        cached = folder / INFO_FILE
        info = json.loads(cached.read_text()) if cached.exists() else {}
    iterations = [read_iteration_summary(f) for f in done]
    if complete and isinstance(info.get("iterations"), list):
        history = info["iterations"]
    else:
        history = read_history(done[-1])
    header = read_header(iterations[-1].class_map(0))
    box = int(info.get("box") or header.shape[0])
    voxel = float(info.get("voxel_size") or header.voxel_size or 1.0)
    return RunFiles(
        folder=folder,
        info=info,
        complete=complete,
        history=list(history),
        iterations=iterations,
        box=box,
        voxel_size=voxel,
        classes=int(iterations[-1].fsc.shape[0]),
        particles=int(info.get("particles") or iterations[-1].classes.size),
        # written at the end of a run: a run in progress may hold an older one
        model=_final_model(folder) if complete else None,
    )
