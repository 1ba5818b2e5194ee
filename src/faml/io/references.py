"""Reference maps a run starts from (``faml run --reference``), prepared for the engine.

:func:`read_references` gives :func:`faml.ml.engine.run` its ``references``: one map for
every class or one per class, each

1. read and checked (:func:`read_reference`): a 3D cubic MRC map, finite, not constant; its
   voxel size from the header (none: the particles', with a warning);
2. put on the particles' grid (:func:`faml.geometry.transform.resample_volume`) when its
   voxel size or box differs, one warning per map saying what was done. The map's centre
   voxel ``n // 2`` becomes the particles' ``N // 2``: references from RELION, an earlier
   run or EMDB are already centred, and the poses found refer to that centre, so the map is
   not re-centred on its mass;
3. low-passed to the initial resolution with a raised-cosine edge (:func:`lowpass_map`, as
   RELION's ``--ini_high``);
4. multiplied by the run's reference mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import scipy.fft

from faml.geometry.masks import default_mask
from faml.geometry.transform import resample_volume
from faml.io.mrc import read_header, read_volume

__all__ = ["check_reference_count", "lowpass_map", "read_reference", "read_references"]

logger = logging.getLogger(__name__)

LOWPASS_EDGE_SHELLS = 2.0
"""Width of the low-pass's raised-cosine edge, Fourier shells, centred on the cut-off (RELION's
``filter_edge_width`` of ``--ini_high``)."""

_MOSTLY_OUTSIDE = 0.5  # a map with less of its power inside the mask: a warning
_SAME_VOXEL_SIZE = 1e-3  # Å: voxel sizes closer than this are the same (faml.io.validate's)


def check_reference_count(count: int, classes: int) -> None:
    """1 reference (for every class) or ``classes`` (one per class), else ValueError."""
    if count not in (1, classes):
        raise ValueError(
            f"{count} references for --classes {classes}: give one reference for every class "
            f"or {classes}, one per class"
        )


def read_reference(path: str | os.PathLike[str], *, box: int, voxel_size: float) -> np.ndarray:
    """One reference map on the particles' grid: read, checked, resampled if need be.

    Parameters
    ----------
    path
        MRC file: a cubic 3D map, finite, not constant.
    box, voxel_size
        The particles' ``N`` and Å per voxel.

    Returns
    -------
    np.ndarray
        `(N, N, N)` float32 (not low-passed, not masked).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is no MRC map, not 3D and cubic, holds NaN or Inf, or is constant (one
        sentence naming the file).
    """
    shape = read_header(path).shape  # (nz, ny, nx); a damaged header: read_header's error
    if shape[0] == 1:
        raise ValueError(f"reference {path} is a 2D image of shape {shape[1:]}, not a cubic 3D map")
    if len(set(shape)) != 1:
        raise ValueError(
            f"reference {path} has shape {shape} (z, y, x), not that of a cubic 3D map"
        )
    volume, header_voxel = read_volume(path)
    if len(set(volume.shape)) != 1:  # the data disagree with the header
        raise ValueError(
            f"reference {path} has shape {volume.shape} (z, y, x), not that of a cubic 3D map"
        )
    bad = int(np.count_nonzero(~np.isfinite(volume)))
    if bad:
        raise ValueError(f"reference {path} has {bad} NaN or infinite voxels of {volume.size}")
    if float(volume.max()) == float(volume.min()):
        raise ValueError(
            f"reference {path} is constant (every voxel is {float(volume.flat[0]):g}): it "
            "holds no structure to start from"
        )
    n = volume.shape[0]
    if header_voxel is None:
        logger.warning(
            "reference %s: no voxel size in its header; taken to be the particles' %g A",
            path, voxel_size,
        )  # fmt: skip
        header_voxel = voxel_size
    same_voxel = abs(header_voxel - voxel_size) <= _SAME_VOXEL_SIZE
    if same_voxel and n == box:
        return volume
    if same_voxel:
        header_voxel = voxel_size
        what = "cropped" if n > box else "padded with zeros"
        logger.warning(
            "reference %s: %d^3 %s to the particles' %d^3 about its centre voxel (%g A)",
            path, n, what, box, voxel_size,
        )  # fmt: skip
    else:
        logger.warning(
            "reference %s: %d^3 at %g A resampled to the particles' %d^3 at %g A",
            path, n, header_voxel, box, voxel_size,
        )  # fmt: skip
    return resample_volume(volume, header_voxel, voxel_size, box)


def lowpass_map(
    volume: np.ndarray,
    resolution: float,
    voxel_size: float,
    *,
    edge_shells: float = LOWPASS_EDGE_SHELLS,
) -> np.ndarray:
    """`(N, N, N)` volume low-passed to ``resolution`` Å with a raised-cosine edge.

    RELION's ``--ini_high`` filter: the Fourier weight is 1 up to ``r - edge/2`` shells, 0
    from ``r + edge/2``, a raised cosine between, ``r = N * voxel_size / resolution`` (the
    shell of ``resolution``). Returns float32.
    """
    v = np.asarray(volume, dtype=np.float64)
    if not resolution > 0:
        raise ValueError(f"--initial-lowpass must be > 0 A, got {resolution}")
    n = v.shape[0]
    kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
    ky = np.fft.fftfreq(n, 1.0 / n)[None, :, None]
    kx = np.fft.rfftfreq(n, 1.0 / n)[None, None, :]
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    cut = n * float(voxel_size) / float(resolution)
    half = 0.5 * edge_shells
    if half > 0:
        weight = 0.5 - 0.5 * np.cos(np.pi * np.clip((cut + half - r) / (2 * half), 0.0, 1.0))
    else:
        weight = (r <= cut).astype(np.float64)
    spectrum = scipy.fft.rfftn(v, workers=1) * weight
    return scipy.fft.irfftn(spectrum, s=v.shape, workers=1).astype(np.float32)


def read_references(
    paths: Sequence[str | os.PathLike[str]],
    *,
    box: int,
    voxel_size: float,
    classes: int,
    lowpass: float,
    mask: np.ndarray | None,
) -> np.ndarray:
    """The references a run starts from, as :func:`faml.ml.engine.run` takes them.

    Parameters
    ----------
    paths
        MRC maps: one (for every class) or ``classes`` (one per class, in class order).
    box, voxel_size
        The particles' ``N`` and Å per voxel.
    classes
        The run's ``K``.
    lowpass
        Å: the initial resolution (``RunConfig.initial_lowpass``, RELION's ``--ini_high``).
    mask
        `(N, N, N)` the run's reference mask; ``None``: the engine's default
        (:func:`faml.geometry.masks.default_mask`).

    Returns
    -------
    np.ndarray
        `(len(paths), N, N, N)` float32: each map checked, on the particles' grid (module
        docstring), low-passed and masked.

    Raises
    ------
    ValueError
        A wrong number of maps, or a map that is not a finite, non-constant cubic 3D MRC, or
        one with nothing inside the mask (one sentence). A map with less than half of its
        power inside the mask is only warned about (is it centred?).
    """
    check_reference_count(len(paths), classes)
    if not lowpass > 0:
        raise ValueError(f"--initial-lowpass must be > 0 A, got {lowpass}")
    weight = default_mask(box) if mask is None else np.asarray(mask, dtype=np.float32)
    if weight.shape != (box,) * 3:
        raise ValueError(f"the mask is {weight.shape}, the particles are {(box,) * 3}")
    maps = np.empty((len(paths), box, box, box), dtype=np.float32)
    for i, path in enumerate(paths):
        volume = read_reference(path, box=box, voxel_size=voxel_size)
        filtered = lowpass_map(volume, lowpass, voxel_size)
        maps[i] = filtered * weight
        total = float(np.sum(np.square(filtered, dtype=np.float64)))
        inside = float(np.sum(np.square(maps[i], dtype=np.float64)))
        if not inside > 0:
            raise ValueError(
                f"reference {path} has nothing inside the reference mask on the particles' "
                f"{box}^3 grid"
            )
        if inside < _MOSTLY_OUTSIDE * total:
            logger.warning(
                "reference %s: only %.0f%% of its power (low-passed to %g A) lies inside the "
                "reference mask: is it centred on voxel %d, as the particles?",
                path, 100 * inside / total, lowpass, box // 2,
            )  # fmt: skip
    return maps
