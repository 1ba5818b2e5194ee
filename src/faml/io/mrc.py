"""MRC volumes: read as float32 ``(z, y, x)`` arrays with their voxel size, write atomically.

``mrcfile`` returns data with the first index the slowest axis (z): that is faml's array order,
so no axis is swapped here. The voxel size is read from the header (Angstrom); a header that
carries none (0) gives ``None``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import mrcfile
import numpy as np

from faml.io.atomic import atomic_path

__all__ = ["VolumeHeader", "read_header", "read_volume", "write_volume"]


@dataclass(frozen=True)
class VolumeHeader:
    """What an MRC header says about a volume.

    Attributes
    ----------
    shape
        ``(nz, ny, nx)``.
    voxel_size
        Angstrom per voxel (x), or ``None`` when the header has none.
    """

    shape: tuple[int, int, int]
    voxel_size: float | None


def _voxel(m: mrcfile.mrcfile.MrcFile) -> float | None:
    v = float(m.voxel_size.x)
    return v if v > 0 else None


def read_header(path: str | os.PathLike[str]) -> VolumeHeader:
    """Read only the header of an MRC file (cheap: no data is loaded).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file has no valid MRC header (the message names the file).
    """
    try:
        with mrcfile.open(path, header_only=True, permissive=False) as m:
            h = m.header
            shape = (int(h.nz), int(h.ny), int(h.nx))
            return VolumeHeader(shape, _voxel(m))
    except ValueError as exc:  # mrcfile's messages do not name the file
        raise ValueError(f"{path} is not a readable MRC file ({exc})") from exc


def read_volume(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read a 3D MRC volume.

    Returns
    -------
    volume
        `(nz, ny, nx)` float32, C-contiguous.
    voxel_size
        Angstrom per voxel, or ``None`` when the header has none.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a valid MRC file or not a 3D volume.
    """
    try:
        with mrcfile.open(path, permissive=False) as m:
            data = np.asarray(m.data)
            voxel = _voxel(m)
    except FileNotFoundError:
        raise  # says which path; no other reading can help
    except (ValueError, OSError) as exc:
        # Some writers leave header fields such as the machine stamp empty; mrcfile reads
        # those files in permissive mode (it warns), as long as the data are complete.
        data = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                with mrcfile.open(path, permissive=True) as m:
                    if m.data is not None:
                        data = np.asarray(m.data)
                        voxel = _voxel(m)
        except (ValueError, OSError):
            pass
        if data is None:
            raise ValueError(f"{path} is not a readable MRC file ({exc})") from exc
    # 3D data counts as a volume whatever the space group says: subtomogram writers differ
    # (some mark single volumes as image stacks, ispg 0).
    if data.ndim != 3:
        raise ValueError(f"{path} holds an array of shape {data.shape}, not a 3D volume")
    return np.ascontiguousarray(data, dtype=np.float32), voxel


def write_volume(
    path: str | os.PathLike[str], volume: np.ndarray, voxel_size: float | None
) -> None:
    """Write a `(z, y, x)` volume as float32 MRC with its voxel size, atomically."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"write_volume needs a 3D array, got shape {volume.shape}")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(volume)
            if voxel_size:
                m.voxel_size = float(voxel_size)
