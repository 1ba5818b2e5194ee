"""Central slices of 3D spectra: extraction, insertion, back-projection, Hermitian planes.

The Fourier-slice machinery that the tilt-series simulator (:mod:`faml.simulate`) and the 2D
tilt-stack reader (:mod:`faml.io.tiltstacks`) share. The compiled kernels (one thread each,
their conventions in :mod:`faml.imaging._kernels`):

- :func:`extract_slices`: central slices of a rotated, shifted volume's spectrum (tilts about
  +Y), times a 2D transfer function;
- :func:`insert_slices`: trilinear insertion of tilt images' spectra into 3D accumulators
  (direct Fourier inversion), tilts about +Y;
- :func:`insert_planes`: the same on arbitrary central planes, one transfer per image;
- :func:`backproject`: real-space back-projection of tilt series along their rays;

and :func:`hermitian_planes`, which makes the self-conjugate planes of an ``rfftn`` grid that
such insertions filled Hermitian.
"""

from __future__ import annotations

import numpy as np

from faml.imaging._kernels import backproject, extract_slices, insert_planes, insert_slices

__all__ = [
    "backproject",
    "extract_slices",
    "hermitian_planes",
    "insert_planes",
    "insert_slices",
]


def hermitian_planes(acc: np.ndarray, conjugate: bool) -> None:
    """Make the self-conjugate planes ``kx = 0`` and ``kx = M/2`` of an rfft grid Hermitian.

    ``acc``: `(M, M, M//2+1)` ``rfftn`` layout (DC at ``[0, 0, 0]``). Each voxel of those
    planes gets the sum of itself and its Friedel mate (index ``-k mod M`` along z and y),
    conjugated for complex data (``conjugate``). In place.
    """
    m = acc.shape[0]
    mirror = (-np.arange(m)) % m
    for ix in (0, m // 2):
        plane = acc[:, :, ix]
        mate = plane[np.ix_(mirror, mirror)]
        acc[:, :, ix] = plane + (np.conj(mate) if conjugate else mate)
