"""Compiled kernels of volume transforms (numba, one thread: faml parallelises over particles)."""

from __future__ import annotations

import math

import numba
import numpy as np

# A sample point within this distance (in voxels) outside the box reads the face value instead
# of 0, so that exact 90° rotations built from floating-point matrices keep their outer planes.
EDGE_TOL = 1e-6

# fastmath without "reassoc": the interpolation (1 - t) a + t b must not be rewritten as
# a + t (b - a), which is not exact at t = 1 (the identity transform must return its input).
_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _row_range(start, step, upper, n):  # pragma: no cover - compiled
    """Indices ``[i0, i1)`` of ``[0, n)`` where ``start + i step`` lies in ``[0, upper]``.

    The interval is widened by ``EDGE_TOL`` on both sides.
    """
    lo = -EDGE_TOL
    hi = upper + EDGE_TOL
    if step > 1e-12:
        a = (lo - start) / step
        b = (hi - start) / step
    elif step < -1e-12:
        a = (hi - start) / step
        b = (lo - start) / step
    elif lo <= start <= hi:
        return 0, n
    else:
        return 0, 0
    i0 = max(math.ceil(a), 0.0)
    i1 = min(math.floor(b) + 1.0, float(n))
    if i1 <= i0:
        return 0, 0
    return int(i0), int(i1)


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def affine_trilinear(volume, matrices, offsets, out):  # pragma: no cover - compiled
    """Trilinear samples of one volume at affinely mapped points, 0 outside the box.

    ``out[b, k, j, i]`` is ``volume`` sampled at ``q = matrices[b] @ (k, j, i) + offsets[b]``,
    everything in array index order ``(z, y, x)`` (the convention of
    ``scipy.ndimage.affine_transform``). A point outside ``[0, n - 1]`` along any axis (beyond
    ``EDGE_TOL``) reads 0; there is no interpolation across the faces (scipy's
    ``mode="constant"``).

    ``volume``: `(nz, ny, nx)` float32, C-contiguous, each side >= 2; ``matrices``:
    `(B, 3, 3)` float64; ``offsets``: `(B, 3)` float64; ``out``: `(B, nz, ny, nx)` float32,
    C-contiguous, written in place.

    ``q`` is never built as an array. For each output row ``(k, j)`` the start point is
    ``offset + k m[:, 0] + j m[:, 1]``; the run of ``i`` whose points lie inside the box is found
    in closed form (a row maps to a straight line), the voxels before and after it are zeroed,
    and along the run each step adds the column ``m[:, 2]``: no bounds test in the inner loop.
    Coordinates are float64, the interpolation itself float32; flat unsigned indices spare
    numba's negative-index wrap-around checks (together about 1.4x faster).
    """
    nz, ny, nx = volume.shape
    flat = volume.reshape(-1)
    sy = np.uint64(nx)  # flat strides of a step in y and in z
    sz = np.uint64(ny * nx)
    one = np.uint64(1)
    unit = np.float32(1.0)
    zmax = nz - 1.0
    ymax = ny - 1.0
    xmax = nx - 1.0
    for b in range(matrices.shape[0]):
        res = out[b].reshape(-1)
        m = matrices[b]
        dz = m[0, 2]
        dy = m[1, 2]
        dx = m[2, 2]
        for k in range(nz):
            for j in range(ny):
                row = (k * ny + j) * nx
                qz = offsets[b, 0] + k * m[0, 0] + j * m[0, 1]
                qy = offsets[b, 1] + k * m[1, 0] + j * m[1, 1]
                qx = offsets[b, 2] + k * m[2, 0] + j * m[2, 1]
                az, bz = _row_range(qz, dz, zmax, nx)
                ay, by = _row_range(qy, dy, ymax, nx)
                ax, bx = _row_range(qx, dx, xmax, nx)
                i0 = max(az, ay, ax)
                i1 = max(min(bz, by, bx), i0)
                res[row : row + i0] = 0.0
                res[row + i1 : row + nx] = 0.0
                qz += i0 * dz
                qy += i0 * dy
                qx += i0 * dx
                for i in range(row + i0, row + i1):
                    # Clamp (points within EDGE_TOL of a face, rounding at the run's ends), then
                    # take the lower corner so that the upper one stays inside: q = n - 1 is
                    # read as corner n - 2 with weight 1 on corner n - 1.
                    cz = min(max(qz, 0.0), zmax)
                    cy = min(max(qy, 0.0), ymax)
                    cx = min(max(qx, 0.0), xmax)
                    z0 = min(int(cz), nz - 2)
                    y0 = min(int(cy), ny - 2)
                    x0 = min(int(cx), nx - 2)
                    tz = np.float32(cz - z0)
                    ty = np.float32(cy - y0)
                    tx = np.float32(cx - x0)
                    p00 = np.uint64((z0 * ny + y0) * nx + x0)  # corners (z0, y0, x0) ...
                    p01 = p00 + sy  # ... (z0, y0 + 1, x0)
                    p10 = p00 + sz  # ... (z0 + 1, y0, x0)
                    p11 = p10 + sy  # ... (z0 + 1, y0 + 1, x0)
                    # (1 - t) a + t b, not a + t (b - a): exact at t = 0 and at t = 1.
                    c00 = (unit - tx) * flat[p00] + tx * flat[p00 + one]
                    c01 = (unit - tx) * flat[p01] + tx * flat[p01 + one]
                    c10 = (unit - tx) * flat[p10] + tx * flat[p10 + one]
                    c11 = (unit - tx) * flat[p11] + tx * flat[p11 + one]
                    c0 = (unit - ty) * c00 + ty * c01
                    c1 = (unit - ty) * c10 + ty * c11
                    res[i] = (unit - tz) * c0 + tz * c1
                    qz += dz
                    qy += dy
                    qx += dx
