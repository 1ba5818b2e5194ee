"""Rigid transforms of volumes: rotate about the centre voxel, then shift.

Convention
----------
Volumes are float32 ``(z, y, x)`` arrays of side ``N``; the rotation centre is the voxel
``c = N // 2`` along every axis (RELION, :func:`faml.geometry.axes.box_center`). A transform is
a pair ``(R, t)``: ``R`` a `(3, 3)` rotation matrix acting on ``(x, y, z)`` coordinates, in
RELION's sense (it maps reference coordinates to particle coordinates), and ``t`` a shift
``(x, y, z)`` in voxels. Applied to a volume ``V`` it gives ``V'`` with::

    V'(x) = V(R^T (x - c - t) + c)        for every voxel coordinate x = (x, y, z),

i.e. the content is rotated by ``R`` about ``c`` and then displaced by ``t``: what sits at
``p`` in ``V`` sits at ``c + R (p - c) + t`` in ``V'``. With ``(R, t)`` the pose of a particle,
the particle is the reference transformed by ``T_(R,t)``.

In array index order, with ``P`` the axis reversal (:mod:`faml.geometry.axes`) and ``u = P x``,
this is ``V'[u] = V[M u + offset]`` with::

    M = P R^T P,        offset = c - M (c + P t)          (c = (N//2, N//2, N//2)),

which is what ``scipy.ndimage.affine_transform(V, M, offset)`` computes.

Interpolation
-------------
``order=1``: trilinear, a compiled kernel (:mod:`faml.geometry._kernels`). ``order=3``: cubic
B-spline; the volume is prefiltered once per call (for all transforms of a batch) with
``scipy.ndimage.spline_filter(mode="mirror")`` and then each transform is evaluated with
``scipy.ndimage.affine_transform(prefilter=False, mode="constant")``. This is exactly scipy's
own one-shot ``affine_transform(order=3, mode="constant")`` with the prefilter hoisted out of
the loop. Mirror rather than ``"grid-wrap"``: the transforms are not periodic (points outside
the box read 0), and a periodic prefilter would couple opposite faces of the box, whose values
differ in a subtomogram, spreading ringing from that seam into the volume.

In both orders a sample point outside the box ``[0, N - 1]^3`` reads 0, with no interpolation
across the faces. The trilinear kernel lets points within ``1e-6`` voxel of a face read the face
(so 90° rotations keep their outer planes despite rounding in the matrix); scipy's cubic path
has no such tolerance.

Resampling
----------
:func:`resample_volume` puts a volume onto another grid (voxel size and box) about the same
centre: voxel ``n // 2`` of the volume and ``N // 2`` of the new box are the same point, the
scale the ratio of the voxel sizes (cubic B-spline as above; a Fourier low-pass to the new
Nyquist frequency first when the new grid is coarser).

Fourier shifts
--------------
:func:`shift_fourier` and :func:`shift_volume` apply a shift ``t`` as the phase ramp
``exp(-2 pi i k . t)``: the same direction as :func:`transform_volume` with ``R = I``, but
periodic (content leaving one face re-enters at the opposite one; an integer shift is
``np.roll``).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from faml.geometry._kernels import affine_trilinear
from faml.geometry.axes import box_center, matrix_xyz_to_zyx, xyz_to_zyx

__all__ = [
    "transform_volume",
    "inverse_transform",
    "compose",
    "resample_volume",
    "shift_fourier",
    "shift_volume",
]


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_volume(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """A cubic `(N, N, N)` volume, N >= 2, as C-contiguous float32."""
    v = np.asarray(volume)
    if v.ndim != 3 or len(set(v.shape)) != 1 or v.shape[0] < 2:
        raise ValueError(f"{name} must be a cubic array of shape (N, N, N), N >= 2, got {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float32)


def _check_volumes(volumes: np.ndarray) -> tuple[np.ndarray, bool]:
    """`(N, N, N)` or `(B, N, N, N)` float32 -> (`(B, N, N, N)`, batched)."""
    v = np.asarray(volumes)
    if v.ndim not in (3, 4) or len(set(v.shape[-3:])) != 1 or v.shape[-1] < 2:
        raise ValueError(f"volume must have shape (N, N, N) or (B, N, N, N), N >= 2, got {v.shape}")
    return np.asarray(v.reshape((-1, *v.shape[-3:])), dtype=np.float32), v.ndim == 4


def _check_box(box: int) -> int:
    """The side of a box: an integer >= 2."""
    if isinstance(box, bool) or not float(box).is_integer() or box < 2:
        raise ValueError(f"box must be an integer >= 2, got {box!r}")
    return int(box)


def _check_rotations(rotations: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """`(3, 3)`, `(B, 3, 3)` or None -> (`(B, 3, 3)` float64, batched)."""
    if rotations is None:
        return np.eye(3)[None], False
    r = np.asarray(rotations, dtype=np.float64)
    if r.ndim not in (2, 3) or r.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (3, 3) or (B, 3, 3), got {r.shape}")
    return r.reshape(-1, 3, 3), r.ndim == 3


def _check_shifts(shifts: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """`(3,)`, `(B, 3)` or None -> (`(B, 3)` float64, batched)."""
    if shifts is None:
        return np.zeros((1, 3)), False
    t = np.asarray(shifts, dtype=np.float64)
    if t.ndim not in (1, 2) or t.shape[-1:] != (3,):
        raise ValueError(f"shifts must have shape (3,) or (B, 3), got {t.shape}")
    return t.reshape(-1, 3), t.ndim == 2


def _batch_size(*sizes: tuple[int, bool]) -> int:
    """The common batch size of arguments given as (leading size, batched) pairs."""
    batched = {n for n, is_batched in sizes if is_batched}
    if len(batched) > 1:
        raise ValueError(f"batch sizes differ: {sorted(batched)}")
    return batched.pop() if batched else 1


# --------------------------------------------------------------------------------------------
# Real-space transforms
# --------------------------------------------------------------------------------------------


def _affine_zyx(
    rotations: np.ndarray, shifts: np.ndarray, box: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index-space form of ``T_(R,t)``: ``V'[u] = V[M u + offset]`` with ``u`` in `(z, y, x)`.

    ``M = P R^T P`` and ``offset = c - M (c + P t)``; `(B, 3, 3)`, `(B, 3)` in, same out.
    """
    m = matrix_xyz_to_zyx(np.swapaxes(rotations, -1, -2))
    c = float(box_center(box))
    offsets = c - np.einsum("bij,bj->bi", m, c + xyz_to_zyx(shifts))
    return np.ascontiguousarray(m), np.ascontiguousarray(offsets)


def transform_volume(
    volume: np.ndarray,
    rotations: np.ndarray | None = None,
    shifts: np.ndarray | None = None,
    *,
    order: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rotate a volume about its centre voxel ``N // 2``, then shift it.

    ``V'(x) = V(R^T (x - c - t) + c)`` for voxel coordinates ``x = (x, y, z)``: content at
    ``p`` moves to ``c + R (p - c) + t``. Points read from outside the box give 0.

    Parameters
    ----------
    volume
        `(N, N, N)` array, ``(z, y, x)`` order.
    rotations
        `(3, 3)` or `(B, 3, 3)` rotation matrices acting on ``(x, y, z)``, reference ->
        particle (RELION). None: the identity.
    shifts
        `(3,)` or `(B, 3)` shifts ``(x, y, z)`` in voxels, applied after the rotation. None:
        no shift. A single rotation or shift is used with every member of the other's batch.
    order
        1: trilinear (compiled kernel); 3: cubic B-spline (scipy, prefiltered once per call).
    out
        Optional float32 C-contiguous array of the result's shape, written in place.

    Returns
    -------
    np.ndarray
        `(N, N, N)` float32, or `(B, N, N, N)` if ``rotations`` or ``shifts`` is batched.
    """
    vol = _check_volume(volume)
    n = vol.shape[0]
    r, r_batched = _check_rotations(rotations)
    t, t_batched = _check_shifts(shifts)
    b = _batch_size((len(r), r_batched), (len(t), t_batched))
    r = np.broadcast_to(r, (b, 3, 3))
    t = np.broadcast_to(t, (b, 3))
    if order not in (1, 3):
        raise ValueError(f"order must be 1 (trilinear) or 3 (cubic B-spline), got {order!r}")

    shape = (b, n, n, n) if (r_batched or t_batched) else (n, n, n)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {shape}, "
            f"got {out.dtype} array of shape {out.shape}"
        )
    res = out.reshape(b, n, n, n)  # a view: out is C-contiguous

    matrices, offsets = _affine_zyx(r, t, n)
    if order == 1:
        affine_trilinear(vol, matrices, offsets, res)
    else:
        coeffs = ndimage.spline_filter(vol, order=3, output=np.float64, mode="mirror")
        for i in range(b):
            ndimage.affine_transform(
                coeffs,
                matrices[i],
                offsets[i],
                output=res[i],
                order=3,
                mode="constant",
                cval=0.0,
                prefilter=False,
            )
    return out


def inverse_transform(rotation: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The transform that undoes ``T_(R,t)``: ``(R^T, -R^T t)``.

    Parameters
    ----------
    rotation
        `(..., 3, 3)` rotation matrices on ``(x, y, z)``.
    shift
        `(..., 3)` shifts ``(x, y, z)`` in voxels (batch axes broadcast with ``rotation``'s).

    Returns
    -------
    tuple of np.ndarray
        `(..., 3, 3)` rotations and `(..., 3)` shifts, float64.
    """
    r = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(shift, dtype=np.float64)
    if r.ndim < 2 or r.shape[-2:] != (3, 3):
        raise ValueError(f"rotation must have shape (..., 3, 3), got {r.shape}")
    if t.shape[-1:] != (3,):
        raise ValueError(f"shift must have shape (..., 3), got {t.shape}")
    r_inv = np.swapaxes(r, -1, -2).copy()  # not a view of the caller's array
    return r_inv, -np.einsum("...ij,...j->...i", r_inv, t)


def compose(
    r1: np.ndarray, t1: np.ndarray, r2: np.ndarray, t2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One transform equal to ``T_(r1,t1) ∘ T_(r2,t2)``: ``T2`` applied first, then ``T1``.

    Point ``p`` goes to ``c + r2 (p - c) + t2`` and then to
    ``c + r1 r2 (p - c) + r1 t2 + t1``, so the composite is ``(r1 r2, t1 + r1 t2)``.

    Parameters
    ----------
    r1, t1
        `(..., 3, 3)` rotation and `(..., 3)` shift ``(x, y, z)`` of the transform applied second.
    r2, t2
        `(..., 3, 3)` rotation and `(..., 3)` shift of the transform applied first.

    Returns
    -------
    tuple of np.ndarray
        `(..., 3, 3)` rotations and `(..., 3)` shifts, float64 (batch axes broadcast).
    """
    mats = [np.asarray(a, dtype=np.float64) for a in (r1, r2)]
    vecs = [np.asarray(a, dtype=np.float64) for a in (t1, t2)]
    for name, a in zip(("r1", "r2"), mats, strict=True):
        if a.ndim < 2 or a.shape[-2:] != (3, 3):
            raise ValueError(f"{name} must have shape (..., 3, 3), got {a.shape}")
    for name, a in zip(("t1", "t2"), vecs, strict=True):
        if a.shape[-1:] != (3,):
            raise ValueError(f"{name} must have shape (..., 3), got {a.shape}")
    (a1, a2), (s1, s2) = mats, vecs
    return a1 @ a2, s1 + np.einsum("...ij,...j->...i", a1, s2)


# --------------------------------------------------------------------------------------------
# Fourier-space shifts
# --------------------------------------------------------------------------------------------


def resample_volume(
    volume: np.ndarray, voxel_size: float, new_voxel_size: float, new_box: int
) -> np.ndarray:
    """A cubic volume on another grid, about the same centre voxel (module docstring).

    What sits at ``p`` (voxels of ``volume``, ``(x, y, z)``) sits at
    ``N // 2 + (p - n // 2) * voxel_size / new_voxel_size`` in the result: the centre voxel
    stays the centre (the content is not re-centred on its mass). When the new grid is
    coarser the volume is first low-passed to the new Nyquist frequency (a raised-cosine
    edge from 0.9 to 1.0 of it, nothing beyond), so that nothing aliases; then each new
    voxel is read by cubic B-spline interpolation, 0 outside the volume.

    Parameters
    ----------
    volume
        `(n, n, n)` array, ``(z, y, x)`` order.
    voxel_size, new_voxel_size
        Å per voxel of the volume and of the new grid.
    new_box
        ``N``, the new grid's side.

    Returns
    -------
    np.ndarray
        `(N, N, N)` float32.
    """
    vol = _check_volume(volume).astype(np.float64)
    if not voxel_size > 0 or not new_voxel_size > 0:
        raise ValueError(f"voxel sizes must be > 0, got {voxel_size} and {new_voxel_size}")
    new_box = _check_box(new_box)
    n = vol.shape[0]
    scale = float(new_voxel_size) / float(voxel_size)  # voxels of the volume per new voxel
    if scale > 1.0 + 1e-9:
        spectrum = scipy.fft.rfftn(vol, workers=1)
        kz = np.fft.fftfreq(n)[:, None, None]
        ky = np.fft.fftfreq(n)[None, :, None]
        kx = np.fft.rfftfreq(n)[None, None, :]
        # in cycles per new voxel: the new Nyquist frequency is 0.5
        k = np.sqrt(kz**2 + ky**2 + kx**2) * scale
        t = np.clip((0.5 - k) / 0.05, 0.0, 1.0)
        spectrum *= 0.5 - 0.5 * np.cos(np.pi * t)
        vol = scipy.fft.irfftn(spectrum, s=vol.shape, workers=1)
    offset = box_center(n) - scale * box_center(new_box)
    out = ndimage.affine_transform(
        vol, np.full(3, scale), offset=np.full(3, offset), output_shape=(new_box,) * 3,
        order=3, mode="constant", cval=0.0,
    )  # fmt: skip
    return np.ascontiguousarray(out, dtype=np.float32)


def _phase_ramp(shifts: np.ndarray, box: int) -> np.ndarray:
    """``exp(-2 pi i k . t)`` on the ``rfftn`` grid: `(B, 3)` ``(x, y, z)`` -> `(B, N, N, N//2+1)`.

    Separable: the product of one 1D ramp per axis, formed in complex128, stored complex64.
    """
    tz, ty, tx = np.moveaxis(xyz_to_zyx(shifts), -1, 0)  # each (B,)
    k = scipy.fft.fftfreq(box)  # cycles/voxel along z and y
    kx = scipy.fft.rfftfreq(box)  # along x (the halved axis)
    ez = np.exp(-2j * np.pi * tz[:, None] * k)
    ey = np.exp(-2j * np.pi * ty[:, None] * k)
    ex = np.exp(-2j * np.pi * tx[:, None] * kx)
    zy = (ez[:, :, None] * ey[:, None, :]).astype(np.complex64)
    return zy[..., None] * ex[:, None, None, :].astype(np.complex64)


def shift_fourier(spectrum: np.ndarray, shifts: np.ndarray, *, box: int) -> np.ndarray:
    """Shift volumes given by their spectra: multiply by the phase ramp ``exp(-2 pi i k . t)``.

    The spectrum is in numpy/scipy ``rfftn`` layout of a ``(z, y, x)`` volume: DC at
    ``[0, 0, 0]``, not shifted, the last axis halved; ``k`` is in cycles/voxel (``fftfreq``
    along z and y, ``rfftfreq`` along x). A shift ``t`` moves content towards larger
    coordinates, as :func:`transform_volume` with the identity rotation, but periodically.

    Parameters
    ----------
    spectrum
        `(N, N, N//2+1)` or `(B, N, N, N//2+1)` complex array.
    shifts
        `(3,)` or `(B, 3)` shifts ``(x, y, z)`` in voxels. A single spectrum is shifted by each
        shift; a single shift is applied to each spectrum; with both batched, one-to-one.
    box
        ``N``, the side of the real-space volume (the last axis alone cannot tell it).

    Returns
    -------
    np.ndarray
        complex64, `(B, N, N, N//2+1)` if either argument is batched, else `(N, N, N//2+1)`.
    """
    n = _check_box(box)
    f = np.asarray(spectrum)
    half = (n, n, n // 2 + 1)
    if f.ndim not in (3, 4) or f.shape[-3:] != half:
        raise ValueError(
            f"spectrum must have shape {half} or (B, *{half}) for box {n}, got {f.shape}"
        )
    t, t_batched = _check_shifts(shifts)
    f_batched = f.ndim == 4
    b = _batch_size((len(t), t_batched), (f.shape[0], f_batched))
    out = _phase_ramp(np.broadcast_to(t, (b, 3)), n)
    out *= f.astype(np.complex64, copy=False)
    return out if (t_batched or f_batched) else out[0]


def shift_volume(volume: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift real volumes by any (sub-voxel) amount through Fourier space, periodically.

    ``irfftn(shift_fourier(rfftn(volume), shifts))``. Integer shifts equal ``np.roll`` along the
    matching axes. For even ``N`` and a non-integer shift the Nyquist terms become complex; the
    inverse transform of a real volume keeps their Hermitian part (amplitude times
    ``cos(pi t)``).

    Parameters
    ----------
    volume
        `(N, N, N)` or `(B, N, N, N)` real array, ``(z, y, x)`` order.
    shifts
        `(3,)` or `(B, 3)` shifts ``(x, y, z)`` in voxels; batches pair as in
        :func:`shift_fourier`.

    Returns
    -------
    np.ndarray
        float32, `(B, N, N, N)` if either argument is batched, else `(N, N, N)`.
    """
    vols, v_batched = _check_volumes(volume)
    n = vols.shape[-1]
    axes = (-3, -2, -1)
    spectra = scipy.fft.rfftn(vols, axes=axes, workers=1)
    if not v_batched:
        spectra = spectra[0]
    shifted = shift_fourier(spectra, shifts, box=n)
    return scipy.fft.irfftn(shifted, s=(n, n, n), axes=axes, workers=1).astype(
        np.float32, copy=False
    )
