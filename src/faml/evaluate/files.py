"""Reading a simulation directory (the truth) and a run directory for the evaluation.

Simulation directory::

    particles/particle_NNNNNN.mrc, particles.star     the input (no poses)
    truth/class_NNN.mrc                               noise-free map per class (1-based)
    truth/particles.star                              true poses (RELION), rlnClassNumber
    truth/truth.json                                  voxel_size, box, tilt_range, ...

Run directory: ``class_NNN.mrc``, ``particles.star`` (poses, rlnClassNumber,
rlnMaxValueProbDistribution) and optionally ``run.json``.

Particles are matched by the base name of ``rlnImageName``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from faml.geometry.euler import euler_to_matrix, origin_angst_to_shift
from faml.io.mrc import read_volume

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
_ORIGINS_PX = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
_SUBTOMO = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
_CLASS_FILE = re.compile(r"^class_(\d+)\.mrc$")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Poses:
    """Per-particle poses read from a STAR file.

    ``names`` base names of ``rlnImageName``; ``rotations`` `(n, 3, 3)` (total pose: the
    subtomogram frame times the particle's, when RELION 5 columns are present); ``shifts``
    `(n, 3)` voxels ``(x, y, z)``; ``classes`` `(n,)` 1-based (1 if absent);
    ``max_probability`` `(n,)` or ``None``.
    """

    names: tuple[str, ...]
    rotations: np.ndarray
    shifts: np.ndarray
    classes: np.ndarray
    max_probability: np.ndarray | None


@dataclass(frozen=True)
class Simulation:
    """What the evaluation reads from a simulation directory."""

    folder: Path
    voxel_size: float
    maps: np.ndarray  # (K, N, N, N) float32
    poses: Poses
    tilt_range: tuple[float, float] | None
    info: dict


@dataclass(frozen=True)
class RunOutput:
    """What the evaluation reads from a run directory."""

    folder: Path
    maps: np.ndarray  # (K, N, N, N) float32
    poses: Poses
    info: dict


def _particles_block(path: Path) -> tuple[pd.DataFrame, dict]:
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises a variety of parser errors
        raise ValueError(f"{path} is not a readable STAR file ({exc})") from exc
    if "particles" in blocks:
        df = blocks["particles"]
    elif len(blocks) == 1:
        df = next(iter(blocks.values()))
    else:
        raise ValueError(f"{path} has no data_particles block (blocks: {', '.join(blocks)})")
    if not isinstance(df, pd.DataFrame) or len(df) == 0:
        raise ValueError(f"{path} holds no particles")
    return df, blocks


def _star_pixel(blocks: dict) -> float | None:
    optics = blocks.get("optics")
    if isinstance(optics, pd.DataFrame) and "rlnImagePixelSize" in optics.columns and len(optics):
        return float(optics["rlnImagePixelSize"].iloc[0])
    return None


def read_poses(path: str | os.PathLike[str], voxel_size: float | None) -> Poses:
    """Poses of a particles STAR file; ``voxel_size`` converts origins where no optics say."""
    path = Path(path)
    df, blocks = _particles_block(path)
    missing = [c for c in ("rlnImageName", *_ANGLES) if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {', '.join(missing)}")
    names = tuple(os.path.basename(str(n).split("@")[-1]) for n in df["rlnImageName"])
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: particle file names (rlnImageName base names) are not unique")
    rotations = euler_to_matrix(df[list(_ANGLES)].to_numpy(dtype=np.float64))
    if all(c in df.columns for c in _SUBTOMO):
        rotations = euler_to_matrix(df[list(_SUBTOMO)].to_numpy(dtype=np.float64)) @ rotations
    pixel = _star_pixel(blocks) or voxel_size
    if all(c in df.columns for c in _ORIGINS):
        if not pixel:
            raise ValueError(f"{path}: no pixel size to convert rlnOrigin*Angst to voxels")
        shifts = origin_angst_to_shift(df[list(_ORIGINS)].to_numpy(dtype=np.float64), pixel)
    elif all(c in df.columns for c in _ORIGINS_PX):
        shifts = -df[list(_ORIGINS_PX)].to_numpy(dtype=np.float64)
    else:
        shifts = np.zeros((len(df), 3))
    classes = (
        df["rlnClassNumber"].to_numpy(dtype=np.int64)
        if "rlnClassNumber" in df.columns
        else np.ones(len(df), dtype=np.int64)
    )
    maxp = (
        df["rlnMaxValueProbDistribution"].to_numpy(dtype=np.float64)
        if "rlnMaxValueProbDistribution" in df.columns
        else None
    )
    return Poses(names, rotations, shifts, classes, maxp)


def read_class_maps(folder: Path) -> tuple[np.ndarray, float | None]:
    """`(K, N, N, N)` ``class_001.mrc ... class_K.mrc`` of a folder and their voxel size."""
    found = {}
    for f in folder.iterdir():
        m = _CLASS_FILE.match(f.name)
        if m:
            found[int(m.group(1))] = f
    if not found:
        raise ValueError(f"{folder} holds no class_NNN.mrc maps")
    numbers = sorted(found)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{folder}: class maps must be numbered 1..K, found {numbers}")
    vols, voxel = [], None
    for k in numbers:
        vol, vs = read_volume(found[k])
        if vols and vol.shape != vols[0].shape:
            raise ValueError(f"{found[k]} is {vol.shape}, class 1 is {vols[0].shape}")
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"{found[k]} is not a cubic volume: {vol.shape}")
        vols.append(vol)
        voxel = voxel or vs
    return np.stack(vols), voxel


def read_simulation(folder: str | os.PathLike[str]) -> Simulation:
    """Read the truth of a simulation directory (see the module docstring)."""
    folder = Path(folder)
    truth = folder / "truth"
    if not truth.is_dir():
        raise ValueError(f"{folder} is not a simulation directory (no truth/ folder)")
    info_path = truth / "truth.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    maps, header_voxel = read_class_maps(truth)
    voxel = float(info.get("voxel_size") or header_voxel or 0.0)
    star = truth / "particles.star"
    if not star.exists():
        raise ValueError(f"{folder}: truth/particles.star is missing")
    poses = read_poses(star, voxel or None)
    if not voxel:
        _, blocks = _particles_block(star)
        voxel = _star_pixel(blocks) or 0.0
    if not voxel:
        raise ValueError(f"{folder}: no voxel size in truth/truth.json, the maps or the STAR file")
    if poses.classes.min() < 1 or poses.classes.max() > len(maps):
        raise ValueError(
            f"{star}: true classes must lie in 1..{len(maps)} (the truth maps), got "
            f"{poses.classes.min()}..{poses.classes.max()}"
        )
    tilt = info.get("tilt_range")
    tilt_range = (float(tilt[0]), float(tilt[1])) if tilt is not None else None
    return Simulation(folder, voxel, maps, poses, tilt_range, info)


def read_run(folder: str | os.PathLike[str], voxel_size: float) -> RunOutput:
    """Read a run directory's class maps, particles and ``run.json`` (when present)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory")
    maps, _ = read_class_maps(folder)
    star = folder / "particles.star"
    if not star.exists():
        raise ValueError(f"{folder}: particles.star is missing")
    poses = read_poses(star, voxel_size)
    if poses.classes.min() < 1 or poses.classes.max() > len(maps):
        raise ValueError(
            f"{star}: classes must lie in 1..{len(maps)} (the class maps), got "
            f"{poses.classes.min()}..{poses.classes.max()}"
        )
    info_path = folder / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return RunOutput(folder, maps, poses, info)


def run_resolution(info: dict) -> float | None:
    """The run's last resolution estimate (Å) from ``run.json``, or ``None``."""
    history = info.get("iterations")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        value = history[-1].get("resolution_angstrom")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None
