"""A finished run's results: the class maps, ``particles.star``, ``model.star``, ``run.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import scipy.fft

from faml import __version__
from faml.io.atomic import write_text_atomic
from faml.io.mrc import write_volume
from faml.io.particles import ParticleTable
from faml.io.star import write_model_star, write_particles_star
from faml.ml.config import RunConfig
from faml.ml.fourier import band_from_fsc, fsc_resolution, mask_corrected_fsc
from faml.ml.state import ModelState, RunResult, filtered_average, filtered_spectrum

__all__ = ["final_fsc", "final_map", "run_summary", "write_results"]

logger = logging.getLogger(__name__)


def final_fsc(state: ModelState, config: RunConfig, mask: np.ndarray) -> list[dict]:
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


def final_map(state: ModelState, klass: int, mask: np.ndarray, curve: dict) -> np.ndarray:
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
    return filtered_spectrum(state.averages[klass], corrected, band_from_fsc(corrected), mask)


def run_summary(table: ParticleTable, config: RunConfig, command_line, ran_on: dict) -> dict:
    """What ``run.json`` and the report say of a run before its results.

    The version, command line, configuration, where it ran, the particles.
    """
    return {
        "faml_version": __version__,
        "command_line": command_line,
        "config": config.to_dict(),
        "seed": config.seed,
        **ran_on,
        "particles": len(table),
        "box": table.box,
        "voxel_size": table.voxel_size,
    }


def write_results(
    out: Path,
    table: ParticleTable,
    result: RunResult,
    halves: np.ndarray,
    config: RunConfig,
    curves: list[dict],
    summary: dict,
    seconds: float,
) -> None:
    """Write the class maps, ``particles.star``, ``model.star`` and ``run.json``.

    Gold-standard runs also get their unfiltered half maps; ``run.json`` is ``summary`` plus
    the history and the verdict.
    """
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
    _write_model(out, table, result.state, config, curves)
    info = {
        **summary,
        "seconds": seconds,
        "converged": result.converged,
        "n_iterations": result.n_iterations,
        "iterations": [r.to_dict() for r in result.history],
        "verdict": None if result.verdict is None else result.verdict.to_dict(),
    }
    write_text_atomic(out / "run.json", json.dumps(info, indent=2))


def _write_model(out: Path, table: ParticleTable, state: ModelState, config, curves) -> None:
    """``model.star`` (FSC per class, resolution) and, when kept, the unfiltered half maps.

    ``curves``: :func:`final_fsc`'s. With the half averages (gold-standard runs) the
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
