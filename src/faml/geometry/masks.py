"""Real-space masks in ``(z, y, x)`` arrays."""

from __future__ import annotations

import numpy as np

from faml.geometry.axes import box_center

__all__ = ["soft_sphere"]


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
