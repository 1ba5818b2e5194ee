"""Test structures for the benchmarks, read from the project's shared folder."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
from scipy import ndimage

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
RIBOSOME = SHARED / "maps" / "other" / "pytom_human_ribo_21A.mrc"


def ribosome(box: int) -> np.ndarray:
    """The human 80S ribosome map (21 A voxels at 32^3) resampled to ``box``^3, masked by a
    sphere of radius 0.42 box, density positive."""
    vol = -mrcfile.read(RIBOSOME).astype(np.float32)
    if box != vol.shape[0]:
        vol = ndimage.zoom(vol, box / vol.shape[0], order=3).astype(np.float32)
    zz, yy, xx = np.mgrid[:box, :box, :box] - box // 2
    vol *= (np.sqrt(zz**2 + yy**2 + xx**2) < 0.42 * box).astype(np.float32)
    return vol
