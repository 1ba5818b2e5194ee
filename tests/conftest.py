"""Shared fixtures: small planted-signal data built from the project's shared structures."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from faml.geometry.masks import soft_sphere

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


@pytest.fixture(scope="session")
def ribosome32() -> np.ndarray:
    """Human 80S ribosome map (PyTom tutorial, 21 A voxels), 32^3, soft-masked, zero mean
    inside the mask and zero outside: an asymmetric test structure."""
    with mrcfile.open(shared_path("maps", "other", "pytom_human_ribo_21A.mrc")) as m:
        vol = np.asarray(m.data, dtype=np.float32)
    mask = soft_sphere(vol.shape[0], 0.40 * vol.shape[0], edge=2.0)
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


def polnet_map(name: str, box: int = 32) -> np.ndarray:
    """A PolNet 10 A map (``maps/polnet_10A/<name>_10A.mrc``), centre-cropped or padded to
    ``box``^3, soft-masked, zero mean inside the mask."""
    with mrcfile.open(shared_path("maps", "polnet_10A", f"{name}_10A.mrc")) as m:
        vol = np.asarray(m.data, dtype=np.float32)
    n = vol.shape[0]
    out = np.zeros((box,) * 3, np.float32)
    lo_src, lo_dst = max(0, (n - box) // 2), max(0, (box - n) // 2)
    size = min(n, box)
    out[lo_dst : lo_dst + size, lo_dst : lo_dst + size, lo_dst : lo_dst + size] = vol[
        lo_src : lo_src + size, lo_src : lo_src + size, lo_src : lo_src + size
    ]
    mask = soft_sphere(box, 0.40 * box, edge=2.0)
    out = (out - np.sum(out * mask) / np.sum(mask)) * mask
    return out / out.std()


def make_dataset(folder, structures, n_each, snr, seed, tilt=(-60.0, 60.0), voxel=10.0):
    """Write ``n_each`` particles of each structure (random pose, shift <= 2 voxels per axis,
    Gaussian noise at ``snr`` = signal variance / noise variance, then the wedge) as MRC files.

    Returns the true rotations `(n, 3, 3)`, shifts `(n, 3)` and 0-based classes `(n,)`, in
    file order.
    """
    from faml.geometry.rotations import random_rotations
    from faml.geometry.wedge import wedge_mask
    from faml.io.mrc import write_volume

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    box = structures[0].shape[0]
    wedge = wedge_mask(box, tilt)
    classes = np.repeat(np.arange(len(structures)), n_each)
    rng.shuffle(classes)
    rots = random_rotations(classes.size, rng)
    shifts = rng.uniform(-2.0, 2.0, (classes.size, 3))
    for i, (k, r, t) in enumerate(zip(classes, rots, shifts, strict=True)):
        p = transform_reference(structures[k], r, t)
        p = p + rng.standard_normal(p.shape).astype(np.float32) * np.sqrt(p.var() / snr)
        p = np.fft.irfftn(np.fft.rfftn(p) * wedge, s=p.shape, axes=(0, 1, 2))
        write_volume(folder / f"particle_{i:04d}.mrc", p, voxel)
    return rots, shifts, classes
