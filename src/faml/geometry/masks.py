"""Real-space masks in ``(z, y, x)`` arrays."""

from __future__ import annotations

import numpy as np

from faml.geometry.axes import box_center

__all__ = ["DEFAULT_MASK_RADIUS", "default_mask", "reference_mask", "soft_sphere"]

DEFAULT_MASK_RADIUS = 0.45
"""The default soft spherical reference mask of a run: share of the box, 3-voxel cosine edge."""


def soft_sphere(box: int, radius: float, edge: float = 3.0) -> np.ndarray:
    """`(N, N, N)` float32 sphere about voxel ``N // 2`` with a raised-cosine edge.

    1 inside ``radius`` (voxels), 0 beyond ``radius + edge``, a cosine fall-off between.
    """
    if radius <= 0 or edge < 0:
        raise ValueError(f"mask radius must be > 0 and edge >= 0, got {radius}, {edge}")
    c = box_center(box)
    zz, yy, xx = np.mgrid[:box, :box, :box] - c
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    if edge == 0:
        return (r <= radius).astype(np.float32)
    m = np.clip((radius + edge - r) / edge, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * m)).astype(np.float32)


def default_mask(box: int) -> np.ndarray:
    """`(N, N, N)` float32 soft sphere of the engine's default mask (radius ``0.45 N``)."""
    return soft_sphere(box, DEFAULT_MASK_RADIUS * box - 3.0, edge=3.0)


def reference_mask(
    box: int,
    voxel_size: float,
    *,
    mask: np.ndarray | None = None,
    diameter: float | None = None,
    edge: float = 3.0,
) -> np.ndarray | None:
    """The run's reference mask: a given one (checked) or a soft sphere of a diameter.

    Parameters
    ----------
    box, voxel_size
        The particles' ``N`` and Å per voxel.
    mask
        `(N, N, N)` values in [0, 1] (RELION's soft masks); checked, never rescaled.
    diameter
        Particle diameter in Å (RELION's ``--particle_diameter``): a soft sphere of that
        diameter, ``edge`` voxels of raised cosine outside it.

    Returns
    -------
    np.ndarray or None
        `(N, N, N)` float32, or ``None`` when neither is given (the engine's default).
    """
    if mask is not None and diameter is not None:
        raise ValueError("give a mask file or a particle diameter, not both")
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != (box,) * 3:
            raise ValueError(f"the mask is {m.shape}, the particles are {(box,) * 3}")
        if not np.all(np.isfinite(m)) or m.min() < -1e-3 or m.max() > 1.0 + 1e-3:
            raise ValueError(
                f"mask values must lie in [0, 1] (a soft mask), got {m.min():.3g}..{m.max():.3g}"
            )
        if not np.any(m > 0.5):
            raise ValueError("the mask is empty (no voxel above 0.5)")
        return np.clip(m, 0.0, 1.0)
    if diameter is not None:
        radius = 0.5 * float(diameter) / float(voxel_size)
        if not radius > 1.0:
            raise ValueError(f"--particle-diameter {diameter} A is under two voxels")
        if radius + edge > box / 2:
            raise ValueError(
                f"--particle-diameter {diameter} A ({2 * radius:.0f} voxels) with its "
                f"{edge:.0f}-voxel soft edge does not fit in the {box}-voxel box"
            )
        return soft_sphere(box, radius, edge)
    return None
