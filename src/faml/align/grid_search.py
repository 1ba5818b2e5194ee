"""Whole-grid candidates: the best poses of the scan's full rotation x shift grid.

:func:`grid_candidates` scores every rotation and shift of the phase-aware scan's grid
(:mod:`faml.align.scan`) against a :class:`~faml.align.prepared.PreparedAverage`, without
the magnitude search, translation stage or polishing of :func:`faml.align.fast.align_to`:
the candidates of a reference-free iteration at low resolution.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from faml.align.fourier_rotation import crop_half_spectrum
from faml.align.prepared import PreparedAverage, _check_volume, _check_weight
from faml.align.scan import scan
from faml.align.settings import _scan_shifts, _scan_weights

__all__ = ["grid_candidates"]


def grid_candidates(
    particle: np.ndarray,
    wedge: np.ndarray,
    prepared: PreparedAverage,
    count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``count`` best poses of the whole rotation x shift grid of the scan.

    ``particle`` and ``wedge`` as for :func:`align_to`. Every rotation of
    :func:`~faml.align.scan.rotation_grid` (``settings.scan_step_deg``) and every shift of
    the scan's grid is scored by the phase-aware correlation with the scan's shell weights;
    no magnitude search, no translation stage, no polishing. At the scan's band the
    likelihood of a pose (the average's amplitude profiled out) grows with that score, so
    these are the grid's most probable poses: a reference-free iteration at low
    resolution draws its candidates from here (coarse-to-fine marginalisation).

    Returns
    -------
    tuple of np.ndarray
        `(m, 3, 3)` rotations, `(m, 3)` shifts (voxels ``(x, y, z)`` of the full box) and
        `(m,)` scores, best first, ``m <= count``.
    """
    st = prepared.settings
    if st.scan_step_deg is None:
        raise ValueError("grid_candidates needs settings with a scan_step_deg")
    particle = _check_volume("particle", particle)
    tbox = st.resolved_translation_box
    wedge = _check_weight(wedge, particle.shape[0])
    data_ft = crop_half_spectrum(scipy.fft.rfftn(particle, workers=1) * wedge, tbox)
    scale = tbox / st.box
    rotations, shifts, scores = scan(
        prepared.scan_reference(),
        data_ft,
        crop_half_spectrum(wedge * wedge, tbox),
        _scan_shifts(st),
        _scan_weights(st),
        count,
        0.0,
        coarse_to_fine=False,
    )
    return rotations, shifts / scale, scores
