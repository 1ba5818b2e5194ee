"""Sampling Fourier spectra on concentric spherical shells.

Spectra are Friedel-symmetric real quantities (magnitudes, wedge weights) stored in numpy's
``rfftn`` layout `(N, N, N//2 + 1)` of a `(z, y, x)` volume (DC at ``[0, 0, 0]``). Shell ``r``
is the sphere of radius ``r`` Fourier voxels about DC; it is sampled on the nodes of a
:class:`~faml.align._sphere.SphereGrid` by trilinear interpolation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from faml.align._kernels import gather_half_spectrum
from faml.align._sphere import SphereGrid, sphere_grid
from faml.geometry.axes import xyz_to_zyx

__all__ = ["shell_coordinates", "sample_shells", "default_band_limit", "shell_degree_caps"]


def default_band_limit(box: int) -> int:
    """The outermost shell used by default: ``N // 2 - 1``.

    It lies inside the cube's inscribed sphere, with room for the interpolation's neighbour.
    """
    return max(1, int(box) // 2 - 1)


def shell_degree_caps(radii: np.ndarray, degree: int) -> np.ndarray:
    """Highest degree a shell of radius ``r`` can carry: ``min(L, floor(pi r))``.

    A shell of radius ``r`` voxels has a circumference of about ``2 pi r`` samples, so it holds
    angular frequencies up to about ``pi r``; higher degrees on inner shells are noise.
    """
    return np.minimum(int(degree), np.floor(np.pi * np.asarray(radii))).astype(np.int64)


@lru_cache(maxsize=32)
def shell_coordinates(radii: tuple[int, ...], degree: int) -> np.ndarray:
    """`(S * n_theta * n_phi, 3)` float64 ``(kz, ky, kx)`` index coordinates of the shell nodes.

    Ordered shell by shell, then ``theta``, then ``phi`` (the grid's ``directions`` order).
    """
    grid = sphere_grid(degree)
    dirs_zyx = xyz_to_zyx(grid.directions)  # (n_theta, n_phi, 3) as (z, y, x)
    coords = np.asarray(radii, dtype=np.float64)[:, None, None, None] * dirs_zyx[None]
    coords = np.ascontiguousarray(coords.reshape(-1, 3))
    coords.setflags(write=False)
    return coords


def sample_shells(spectra: np.ndarray, radii: np.ndarray, grid: SphereGrid) -> np.ndarray:
    """Sample Friedel-symmetric spectra on shells.

    Parameters
    ----------
    spectra
        `(C, N, N, N//2 + 1)` real, ``rfftn`` layout (DC at ``[0, 0, 0]``), symmetric under
        ``k -> -k`` (magnitudes, squared magnitudes, weights).
    radii
        `(S,)` shell radii in Fourier voxels, ``0 < r < N / 2``.
    grid
        The spherical grid of the nodes.

    Returns
    -------
    np.ndarray
        `(C, S, n_theta, n_phi)` float32 samples.
    """
    spectra = np.ascontiguousarray(spectra, dtype=np.float32)
    if spectra.ndim != 4 or spectra.shape[-1] != spectra.shape[1] // 2 + 1:
        raise ValueError(f"spectra must be (C, N, N, N//2+1) in rfft layout, got {spectra.shape}")
    radii = tuple(int(r) for r in np.asarray(radii).ravel())
    box = spectra.shape[1]
    if min(radii) < 1 or max(radii) >= box / 2:
        raise ValueError(f"shell radii must lie in [1, {box / 2}), got {min(radii)}..{max(radii)}")
    coords = shell_coordinates(radii, grid.degree)
    out = np.empty((spectra.shape[0], coords.shape[0]), dtype=np.float32)
    gather_half_spectrum(spectra, coords, out)
    return out.reshape(spectra.shape[0], len(radii), grid.n_theta, grid.n_phi)
