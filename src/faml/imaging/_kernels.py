"""Compiled kernels of the image-formation model: central slices out of, and into, 3D spectra.

Used by the tilt-series simulator (:mod:`faml.simulate`) and the 2D tilt-stack reader
(:mod:`faml.io.tiltstacks`) through :mod:`faml.imaging.slices`. One thread each (faml
parallelises over particles). Conventions shared by the kernels:

* 3D spectra are in ``rfftn`` layout of an `(M, M, M)` ``(z, y, x)`` volume whose centre
  (voxel ``M // 2``) was moved to voxel 0 (``ifftshift``): shape `(M, M, M//2+1)`, DC at
  ``[0, 0, 0]``, frequencies in integer index units.
* 2D spectra of the tilt images are in ``rfft2`` layout: `(T, M, M//2+1)`, index ``[t, iy, ix]``
  holds ``(kx, ky) = (ix, fftfreq(M)[iy] * M)``.
* Tilt ``t`` (angle θ about +Y, see :mod:`faml.geometry.wedge`) puts the 2D frequency
  ``(kx, ky)`` at the 3D point ``q = (kx cos θ, ky, kx sin θ)`` ``(x, y, z)`` of the particle.
* Only frequencies with ``kx² + ky² < (M/2)²`` are used (a sphere inside the grid); others
  read and write 0.
* Points with ``qx < 0`` use the Friedel mate ``-q`` and the complex conjugate.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def extract_slices(spectrum, rt, cos_t, sin_t, shift, scale, out):  # pragma: no cover
    """Central slices of a rotated, shifted volume, times a 2D transfer function.

    ``out[t, iy, ix] = F(R^T q) exp(-2 pi i q . shift / M) scale[iy, ix]`` with ``q`` the 3D
    point of 2D frequency ``(ix, iy)`` at tilt ``t`` and ``F`` the trilinear interpolation of
    ``spectrum`` (the reference's spectrum). ``rt``: `(3, 3)` float64 ``R^T`` on ``(x, y, z)``;
    ``cos_t``, ``sin_t``: `(T,)` float64; ``shift``: `(3,)` float64 ``(x, y, z)`` voxels;
    ``scale``: `(M, M//2+1)` float32; ``out``: `(T, M, M//2+1)` complex64, written.
    """
    m = spectrum.shape[0]
    half = m // 2
    nx = out.shape[2]
    r2max = float(half) * float(half)
    two_pi_m = 2.0 * math.pi / m
    for t in range(out.shape[0]):
        c = cos_t[t]
        s = sin_t[t]
        for iy in range(m):
            ky = float(iy if iy < half else iy - m)
            for ix in range(nx):
                kx = float(ix)
                if kx * kx + ky * ky >= r2max:
                    out[t, iy, ix] = 0.0
                    continue
                qx = kx * c
                qy = ky
                qz = kx * s
                ux = rt[0, 0] * qx + rt[0, 1] * qy + rt[0, 2] * qz
                uy = rt[1, 0] * qx + rt[1, 1] * qy + rt[1, 2] * qz
                uz = rt[2, 0] * qx + rt[2, 1] * qy + rt[2, 2] * qz
                conj = ux < 0.0
                if conj:
                    ux = -ux
                    uy = -uy
                    uz = -uz
                x0f = math.floor(ux)
                y0f = math.floor(uy)
                z0f = math.floor(uz)
                fx = ux - x0f
                fy = uy - y0f
                fz = uz - z0f
                x0 = int(x0f)
                y0 = int(y0f) % m
                z0 = int(z0f) % m
                x1 = x0 + 1
                y1 = (y0 + 1) % m
                z1 = (z0 + 1) % m
                gx = 1.0 - fx
                gy = 1.0 - fy
                gz = 1.0 - fz
                v = (
                    gz * (gy * (gx * spectrum[z0, y0, x0] + fx * spectrum[z0, y0, x1])
                          + fy * (gx * spectrum[z0, y1, x0] + fx * spectrum[z0, y1, x1]))
                    + fz * (gy * (gx * spectrum[z1, y0, x0] + fx * spectrum[z1, y0, x1])
                            + fy * (gx * spectrum[z1, y1, x0] + fx * spectrum[z1, y1, x1]))
                )  # fmt: skip
                if conj:
                    v = v.conjugate()
                phase = -two_pi_m * (qx * shift[0] + qy * shift[1] + qz * shift[2])
                out[t, iy, ix] = v * complex(math.cos(phase), math.sin(phase)) * scale[iy, ix]


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def insert_slices(signal, noise, ctf2, cos_t, sin_t, acc_signal, acc_noise, acc_w, acc_ctf2):
    """Trilinear insertion of 2D spectra into 3D accumulators (direct Fourier inversion).

    Each 2D sample ``(ix, iy)`` of tilt ``t`` adds, at the 8 voxels around its 3D point ``q``
    (or around ``-q``, conjugated, when ``qx < 0``), ``w * signal``, ``w * noise``, ``w`` and
    ``w * ctf2[iy, ix]`` to the four accumulators, ``w`` the trilinear weight. ``signal``,
    ``noise``: `(T, M, M//2+1)` complex64; ``ctf2``: `(M, M//2+1)` float32; ``acc_signal``,
    ``acc_noise``: `(M, M, M//2+1)` complex64; ``acc_w``, ``acc_ctf2``: `(M, M, M//2+1)`
    float32; all accumulated in place.
    """  # noqa: D401
    m = acc_w.shape[0]
    half = m // 2
    nx = signal.shape[2]
    r2max = float(half) * float(half)
    for t in range(signal.shape[0]):
        c = cos_t[t]
        s = sin_t[t]
        for iy in range(m):
            ky = float(iy if iy < half else iy - m)
            for ix in range(nx):
                kx = float(ix)
                if kx * kx + ky * ky >= r2max:
                    continue
                qx = kx * c
                qy = ky
                qz = kx * s
                a = signal[t, iy, ix]
                b = noise[t, iy, ix]
                if qx < 0.0:
                    qx = -qx
                    qy = -qy
                    qz = -qz
                    a = a.conjugate()
                    b = b.conjugate()
                g = ctf2[iy, ix]
                x0f = math.floor(qx)
                y0f = math.floor(qy)
                z0f = math.floor(qz)
                fx = np.float32(qx - x0f)
                fy = np.float32(qy - y0f)
                fz = np.float32(qz - z0f)
                x0 = int(x0f)
                y0 = int(y0f) % m
                z0 = int(z0f) % m
                for dz in range(2):
                    wz = fz if dz else np.float32(1.0) - fz
                    zi = (z0 + dz) % m
                    for dy in range(2):
                        wzy = wz * (fy if dy else np.float32(1.0) - fy)
                        yi = (y0 + dy) % m
                        for dx in range(2):
                            w = wzy * (fx if dx else np.float32(1.0) - fx)
                            xi = x0 + dx
                            acc_signal[zi, yi, xi] += w * a
                            acc_noise[zi, yi, xi] += w * b
                            acc_w[zi, yi, xi] += w
                            acc_ctf2[zi, yi, xi] += w * g


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def insert_planes(data, ctf2, basis, acc_data, acc_ctf2, acc_w):  # pragma: no cover
    """Trilinear insertion of 2D spectra on arbitrary central planes (direct Fourier inversion).

    The general form of :func:`insert_slices` (any image orientation, one transfer per image):
    sample ``(ix, iy)`` of image ``t``, 2D frequency ``(kx, ky)``, sits at the 3D point
    ``q = kx * basis[t, 0] + ky * basis[t, 1]`` ``(x, y, z)`` (the image's x and y axes in the
    volume's frame, orthonormal rows); at the 8 voxels around ``q`` (around ``-q``, conjugated,
    when ``qx < 0``) it adds ``w * data``, ``w * ctf2[t, iy, ix]`` and ``w`` to the three
    accumulators, ``w`` the trilinear weight. ``data``: `(T, M, M//2+1)` complex64; ``ctf2``:
    `(T, M, M//2+1)` float32; ``basis``: `(T, 2, 3)` float64; ``acc_data``: `(M, M, M//2+1)`
    complex64; ``acc_ctf2``, ``acc_w``: `(M, M, M//2+1)` float32; accumulated in place.
    """
    m = acc_w.shape[0]
    half = m // 2
    nx = data.shape[2]
    r2max = float(half) * float(half)
    for t in range(data.shape[0]):
        ex0, ex1, ex2 = basis[t, 0, 0], basis[t, 0, 1], basis[t, 0, 2]
        ey0, ey1, ey2 = basis[t, 1, 0], basis[t, 1, 1], basis[t, 1, 2]
        for iy in range(m):
            ky = float(iy if iy < half else iy - m)
            for ix in range(nx):
                kx = float(ix)
                if kx * kx + ky * ky >= r2max:
                    continue
                qx = kx * ex0 + ky * ey0
                qy = kx * ex1 + ky * ey1
                qz = kx * ex2 + ky * ey2
                a = data[t, iy, ix]
                if qx < 0.0:
                    qx = -qx
                    qy = -qy
                    qz = -qz
                    a = a.conjugate()
                g = ctf2[t, iy, ix]
                x0f = math.floor(qx)
                y0f = math.floor(qy)
                z0f = math.floor(qz)
                fx = np.float32(qx - x0f)
                fy = np.float32(qy - y0f)
                fz = np.float32(qz - z0f)
                x0 = int(x0f)
                y0 = int(y0f) % m
                z0 = int(z0f) % m
                for dz in range(2):
                    wz = fz if dz else np.float32(1.0) - fz
                    zi = (z0 + dz) % m
                    for dy in range(2):
                        wzy = wz * (fy if dy else np.float32(1.0) - fy)
                        yi = (y0 + dy) % m
                        for dx in range(2):
                            xi = x0 + dx
                            if xi >= acc_w.shape[2]:
                                continue
                            w = wzy * (fx if dx else np.float32(1.0) - fx)
                            acc_data[zi, yi, xi] += w * a
                            acc_ctf2[zi, yi, xi] += w * g
                            acc_w[zi, yi, xi] += w


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def backproject(images_a, images_b, cos_t, sin_t, x_offset, x_axis, z_axis, out_a, out_b):
    """Real-space back-projection of two tilt series into two volumes (linear interpolation).

    Image ``t`` (tilt θ about +Y) is smeared along its rays: voxel ``(x, y, z)`` of ``out``
    gets ``image[t, y, u]`` at ``u = (x + x_offset - x_axis) cos θ + (z - z_axis) sin θ +
    x_axis``, linearly interpolated along ``u`` (0 outside the image). ``images_a``,
    ``images_b``: `(T, Ly, Lu)` float32 ``(tilt, y, u)``; ``cos_t``, ``sin_t``: `(T,)` float64;
    ``x_offset``: the specimen ``x`` of the volume's voxel 0; ``x_axis``, ``z_axis``: the tilt
    axis's ``x`` (specimen, = image ``u``) and ``z``; ``out_a``, ``out_b``: `(Lz, Ly, Lx)`
    float32 ``(z, y, x)``, accumulated in place.
    """
    nz, ny, nx = out_a.shape
    nu = images_a.shape[2]
    i0 = np.empty(nx, dtype=np.int64)
    f1 = np.empty(nx, dtype=np.float32)
    for t in range(images_a.shape[0]):
        c = cos_t[t]
        s = sin_t[t]
        for z in range(nz):
            base = (z - z_axis) * s + x_axis
            for x in range(nx):
                u = (x + x_offset - x_axis) * c + base
                uf = math.floor(u)
                i = int(uf)
                if i < 0 or i + 1 >= nu:
                    i0[x] = -1
                    f1[x] = 0.0
                else:
                    i0[x] = i
                    f1[x] = np.float32(u - uf)
            for y in range(ny):
                for x in range(nx):
                    i = i0[x]
                    if i < 0:
                        continue
                    f = f1[x]
                    g = np.float32(1.0) - f
                    out_a[z, y, x] += g * images_a[t, y, i] + f * images_a[t, y, i + 1]
                    out_b[z, y, x] += g * images_b[t, y, i] + f * images_b[t, y, i + 1]
