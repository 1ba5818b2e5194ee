"""Fast-mode simulation: a structure at random poses, the missing wedge and noise in 3D.

Each particle is the structure rotated uniformly on SO(3) about voxel ``N // 2`` (cubic
spline) and shifted uniformly by up to ``max_shift`` voxels per axis, plus white Gaussian
noise at ``snr`` = signal variance / noise variance (variances over the box), then multiplied
in Fourier space by the wedge of ``tilt_range``. No CTF or tilt series: for tests and the
demo. The truth (poses in RELION's convention, classes) is returned and written beside the
particles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft

from faml.geometry.euler import matrix_to_euler
from faml.geometry.rotations import random_rotations
from faml.geometry.transform import transform_volume
from faml.geometry.wedge import wedge_mask
from faml.io.atomic import write_text_atomic
from faml.io.mrc import write_volume

__all__ = ["Truth", "simulate_fast"]


@dataclass(frozen=True)
class Truth:
    """Ground truth of a simulated set.

    `(n, 3, 3)` rotations, `(n, 3)` shifts (voxels, ``(x, y, z)``), `(n,)` 0-based classes,
    and the particle files. :func:`faml.simulate.simulate` also fills ``weight_paths`` (each
    particle's Fourier weight file) and ``star_path`` (its ``particles.star``).
    """

    rotations: np.ndarray
    shifts: np.ndarray
    classes: np.ndarray
    paths: tuple[str, ...]
    weight_paths: tuple[str, ...] = ()
    star_path: str | None = None


def simulate_fast(
    structures: list[np.ndarray],
    n_each: int,
    out_dir: str | Path,
    *,
    snr: float,
    tilt_range: tuple[float, float] = (-60.0, 60.0),
    max_shift: float = 2.0,
    voxel_size: float = 1.0,
    seed: int = 0,
) -> Truth:
    """Write ``n_each`` particles of each `(N, N, N)` structure into ``out_dir``.

    Files: ``particle_NNNNNN.mrc`` and ``truth.json`` (RELION angles in degrees, shifts in
    voxels, 1-based classes).
    """
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    box = structures[0].shape[0]
    wedge = wedge_mask(box, tilt_range)
    classes = np.repeat(np.arange(len(structures)), n_each)
    rng.shuffle(classes)
    rotations = random_rotations(classes.size, rng)
    shifts = rng.uniform(-max_shift, max_shift, (classes.size, 3))
    paths = []
    for i, (k, r, t) in enumerate(zip(classes, rotations, shifts, strict=True)):
        p = transform_volume(structures[k], r, t, order=3)
        p = p + rng.standard_normal(p.shape).astype(np.float32) * np.sqrt(p.var() / snr)
        p = scipy.fft.irfftn(scipy.fft.rfftn(p) * wedge, s=p.shape)
        path = out / f"particle_{i:06d}.mrc"
        write_volume(path, p, voxel_size)
        paths.append(str(path))
    truth = {
        "angles_relion_deg": matrix_to_euler(rotations).tolist(),
        "shifts_voxels": shifts.tolist(),
        "classes": (classes + 1).tolist(),
        "snr": snr,
        "tilt_range": list(tilt_range),
        "seed": seed,
    }
    write_text_atomic(out / "truth.json", json.dumps(truth))
    return Truth(rotations, shifts, classes, tuple(paths))
