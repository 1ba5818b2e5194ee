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


def _check_declared_size(path: str | os.PathLike[str]) -> None:
    """Raise ValueError if the header declares more bytes than the file holds.

    mrcfile would first allocate them (extended header and data): a damaged header can ask
    for gigabytes.
    """
    with open(path, "rb") as fh:
        head = fh.read(1024)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < 1024:
        raise ValueError(f"{path} is not a readable MRC file ({size} bytes: no full header)")
    # the machine stamp gives the byte order (0x11: big-endian; anything else: little)
    order = ">" if head[212] == 0x11 else "<"
    nx, ny, nz, mode = np.frombuffer(head, f"{order}i4", 4).tolist()
    nsymbt = int(np.frombuffer(head, f"{order}i4", 1, 92)[0])
    itemsize = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 1}.get(mode)
    if min(nx, ny, nz) < 0 or nsymbt < 0:
        raise ValueError(
            f"{path} is not a readable MRC file: negative sizes in its header "
            f"(nx {nx}, ny {ny}, nz {nz}, nsymbt {nsymbt})"
        )
    if itemsize is None:
        return  # mrcfile's own message is clear for an unknown mode
    declared = 1024 + nsymbt + (nx * ny * nz * itemsize if mode != 101 else nx * ny * nz // 2)
    if declared > size:
        raise ValueError(
            f"{path} is not a readable MRC file: its header declares {declared} bytes "
            f"({nx} x {ny} x {nz} voxels of mode {mode}, {nsymbt} bytes of extended header) "
            f"but the file holds {size}"
        )


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
    _check_declared_size(path)
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
    if data.size == 0:
        raise ValueError(f"{path} holds an empty volume (shape {data.shape})")
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
