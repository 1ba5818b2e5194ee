"""Junk classes: where picks that are not the target gather (``faml run --junk J``).

Template matching and manual picking bring other proteins, membrane patches, ice and empty
boxes with the target. The last ``RunConfig.junk_classes`` classes of a run are kept as
blobs: after every M-step their averages (joint and half-sets) lose every Fourier shell
beyond ``Tuning.min_band`` (:func:`hold_junk`). A pick that fits no target class better than
a blob of its size and mass goes there; a target particle fits its own class's detailed
average better, and a blob cannot sharpen into a second copy of the target. The run's band
comes from the target classes only. The user drops the junk classes with
``--select-classes`` (:mod:`faml.cli`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from faml.ml.config import RunConfig
from faml.ml.fourier import shell_index
from faml.ml.mstep import model_band
from faml.ml.state import ModelState

__all__ = ["hold_junk", "junk_indices"]


def junk_indices(config: RunConfig) -> range:
    """The 0-based indices of the junk classes (the last ``config.junk_classes``)."""
    return range(config.classes - config.junk_classes, config.classes)


def hold_junk(state: ModelState, config: RunConfig, box: int) -> ModelState:
    """``state`` with its junk classes' spectra cut beyond ``Tuning.min_band`` shells.

    The band becomes the target classes' (:func:`faml.ml.mstep.model_band` over their FSC
    curves); the junk classes' FSC curves are zero beyond the cut. ``state`` itself when
    the run has no junk classes.
    """
    junk = list(junk_indices(config))
    if not junk:
        return state
    keep = shell_index(box) <= config.tuning.min_band
    averages = state.averages.copy()
    averages[junk] = np.where(keep, averages[junk], 0)
    halves = state.half_averages
    if halves is not None:
        halves = halves.copy()
        halves[:, junk] = np.where(keep, halves[:, junk], 0)
    curves = state.fsc.copy()
    curves[junk, config.tuning.min_band + 1 :] = 0.0
    targets = curves[: config.classes - config.junk_classes]
    band = model_band(targets, config.tuning.min_band, box)
    return replace(state, averages=averages, half_averages=halves, fsc=curves, band=band)
