"""Shared fixtures: small planted-signal data built from the project's shared structures."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STRUCTURES = SHARED / "data" / "structures"


def shared_path(*parts: str) -> Path:
    """A file under ``../shared/data/structures``; fails (not skips) when it is missing."""
    path = STRUCTURES.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"test data {path} is missing: the tests need the project's shared folder beside "
            "the checkout (../shared)"
        )
    return path


def soft_sphere(box: int, radius: float, edge: float = 2.0) -> np.ndarray:
    """`(N, N, N)` float32 sphere about voxel ``N // 2`` with a raised-cosine edge."""
    c = box // 2
    zz, yy, xx = np.mgrid[:box, :box, :box] - c
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    m = np.clip((radius + edge - r) / edge, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * m)).astype(np.float32)


@pytest.fixture(scope="session")
def ribosome32() -> np.ndarray:
    """Human 80S ribosome map (PyTom tutorial, 21 A voxels), 32^3, soft-masked, zero mean
    inside the mask and zero outside: an asymmetric test structure."""
    with mrcfile.open(shared_path("maps", "other", "pytom_human_ribo_21A.mrc")) as m:
        vol = np.asarray(m.data, dtype=np.float32)
    mask = soft_sphere(vol.shape[0], 0.40 * vol.shape[0])
    vol = -vol  # protein is dark in this map; faml does not care, but keep density positive
    vol = (vol - np.sum(vol * mask) / np.sum(mask)) * mask
    return vol.astype(np.float32)


def transform_reference(volume: np.ndarray, rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Independent implementation (scipy cubic spline) of the particle model used in tests:
    ``particle(x) = volume(R^T (x - c - shift) + c)`` for ``(x, y, z)`` coordinates,
    ``c = N // 2``; arrays are ``(z, y, x)``."""
    n = volume.shape[0]
    c = np.full(3, n // 2, dtype=np.float64)
    rt_zyx = rotation.T[::-1, ::-1]  # R^T acting on (z, y, x) vectors
    offset = c - rt_zyx @ (c + np.asarray(shift, dtype=np.float64)[::-1])
    return ndimage.affine_transform(
        volume, rt_zyx, offset=offset, order=3, mode="constant", cval=0.0
    ).astype(np.float32)
