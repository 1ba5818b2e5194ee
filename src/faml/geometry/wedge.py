"""Missing-wedge masks of single-axis tilt series, and 3D Fourier weight volumes.

Geometry
--------
Coordinates are ``(x, y, z)``: the tilt axis is Y, the electron beam runs along z. A
projection at tilt angle θ (degrees) is the projection along z of the specimen rotated
actively by θ about +Y (right-handed, x -> z sense)::

    R_y(θ) (x, y, z) = (x cosθ + z sinθ,  y,  -x sinθ + z cosθ).

If ``f`` is the specimen, the rotated specimen is ``f(R_y(θ)^T r)`` and its Fourier transform
``F(R_y(θ)^T k)``. By the central-slice theorem the projection samples the plane ``kz = 0`` of
that transform, i.e. the specimen's Fourier points ``R_y(θ)^T (kx, ky, 0)``: the central plane
through the Y axis and the direction ``R_y(θ)^T x̂ = (cosθ, 0, sinθ)``.

So a Fourier point ``k = (kx, ky, kz)`` lies in the plane of tilt θ iff its ``(kx, kz)`` part is
parallel to ``(cosθ, sinθ)``. A plane through the origin holds ``±k``, so only the line matters:
with ``φ = atan2(kz, kx)`` folded modulo 180° into ``(-90°, 90°]`` (equivalently
``φ = atan(kz / kx)``), ``k`` is observed by a tilt series over ``[θ_min, θ_max]`` iff::

    θ_min <= φ <= θ_max        (kx != 0 or kz != 0),

and always observed on the Y axis (``kx = kz = 0``, DC included), which lies in every plane.
Points exactly on a boundary plane count as observed. The kz axis (``φ = 90°``, the beam
direction of the 0° view) is never observed since ``-90 < θ_min < θ_max < 90``. Consequences:
the wedge of ``(-50, 70)`` is the kx -> -kx mirror (and equally the kz -> -kz mirror) of the
wedge of ``(-70, 50)``; symmetric ranges are mirror-symmetric.

Fourier layouts and frequencies
-------------------------------
Volumes are ``(z, y, x)`` arrays of side ``N``; Fourier arrays keep that axis order.

``"rfft"``
    ``np.fft.rfftn`` of a ``(z, y, x)`` volume: shape `(N, N, N//2+1)`, DC at ``[0, 0, 0]``, not
    shifted; frequencies ``fftfreq(N) * N`` along z, y and ``rfftfreq(N) * N`` along x. This is
    also the FFTW half layout of RELION's 3D ``rlnCtfImage`` weight volumes.
``"full"``
    Full cube `(N, N, N)`, fftshifted: DC at ``[N//2, N//2, N//2]``.

Frequencies are in integer index units ("Fourier voxels", ``N`` times cycles/voxel). For even
``N`` the Nyquist frequency ``N/2`` is its own alias ``-N/2``: a voxel with ``|kx| = N/2`` or
``|kz| = N/2`` stands for both signs, and counts as observed if either alias is. This keeps the
mask exactly Friedel-symmetric on the grid (``w(-k) = w(k)`` under the index mirror
``i -> -i mod N``), so the ``"rfft"`` mask equals ``np.fft.ifftshift(full)[..., :N//2+1]`` and
:func:`rfft_to_full` rebuilds the full mask exactly.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from os import PathLike

import mrcfile
import numpy as np
import numpy.typing as npt
import scipy.fft

from faml.geometry.axes import box_center

__all__ = [
    "wedge_mask",
    "weight_from_volume",
    "read_weight",
    "full_to_rfft",
    "rfft_to_full",
    "whitened",
]

_LAYOUTS = ("rfft", "full")
_ANGLE_TOL_DEG = 1e-9  # boundary planes count as observed despite rounding in atan2
_WEIGHT_SLACK = 1e-6  # tolerated excursion of a weight volume outside its range


def _check_box(box: int) -> int:
    if isinstance(box, bool):
        raise ValueError(f"box must be an integer >= 2, got {box!r}")
    try:
        n = operator.index(box)
    except TypeError:
        raise ValueError(f"box must be an integer >= 2, got {box!r}") from None
    if n < 2:
        raise ValueError(f"box must be an integer >= 2, got {box!r}")
    return n


def _check_tilt_range(tilt_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in tilt_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"tilt_range must be two angles (min, max) in degrees, got {tilt_range!r}"
        ) from None
    if not (-90.0 < lo < hi < 90.0):  # also rejects NaN
        raise ValueError(
            f"tilt_range must satisfy -90 < min < max < 90 degrees, got min={lo}, max={hi}"
        )
    return lo, hi


def _frequencies(n: int, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer-unit frequencies ``(kz, ky, kx)`` of the axes of a Fourier array, as 1D arrays."""
    k = np.fft.fftfreq(n, d=1.0 / n)
    if layout == "rfft":
        return k, k, np.fft.rfftfreq(n, d=1.0 / n)
    k = np.fft.fftshift(k)
    return k, k, k


def _in_tilt_range(kx: np.ndarray, kz: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Whether the line through ``(kx, kz)`` lies within ``[lo, hi]`` degrees (Y axis: True)."""
    # Fold modulo 180 degrees: use the representative of ±k with kx >= 0, so phi in [-90, 90].
    a = np.abs(kx)
    b = np.where(kx < 0, -kz, kz)
    phi = np.degrees(np.arctan2(b, a))
    on_y_axis = (a == 0) & (b == 0)
    return on_y_axis | ((phi >= lo - _ANGLE_TOL_DEG) & (phi <= hi + _ANGLE_TOL_DEG))


def wedge_mask(
    box: int,
    tilt_range: Sequence[float] = (-60.0, 60.0),
    *,
    layout: str = "rfft",
    cutoff_radius: float | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> np.ndarray:
    """Fourier mask of a single-axis tilt series about Y: 1 observed, 0 missing.

    ``k`` is observed iff the angle ``φ = atan(kz / kx)`` of its ``(kx, kz)`` part (taken modulo
    180°) lies in ``[min, max]``, or ``kx = kz = 0``; see the module docstring for the
    derivation and the sign convention (a view at tilt θ samples the central plane holding Y
    and ``(cosθ, 0, sinθ)``). Boundary planes count as observed.

    Parameters
    ----------
    box
        Side ``N`` of the cubic box, an integer ``>= 2``.
    tilt_range
        ``(min, max)`` tilt angles in degrees, ``-90 < min < max < 90``; need not be symmetric.
    layout
        ``"rfft"``: `(N, N, N//2+1)`, DC at ``[0, 0, 0]``, not shifted (``np.fft.rfftn`` of a
        ``(z, y, x)`` volume). ``"full"``: `(N, N, N)`, fftshifted, DC at ``[N//2] * 3``.
    cutoff_radius
        If given, zero every voxel with ``|k| > cutoff_radius``, ``|k|`` in Fourier voxels
        (integer index units). ``None``: no cutoff.
    dtype
        Data type of the result.

    Returns
    -------
    np.ndarray
        `(N, N, N//2+1)` (``"rfft"``) or `(N, N, N)` (``"full"``) array in ``(z, y, x)`` axis
        order, values 0 or 1. The ``"rfft"`` mask equals
        ``np.fft.ifftshift(full)[..., :N//2+1]`` exactly.

    Raises
    ------
    ValueError
        For a box that is not an integer ``>= 2``, a tilt range outside
        ``-90 < min < max < 90``, an unknown layout or a negative cutoff radius.
    """
    n = _check_box(box)
    lo, hi = _check_tilt_range(tilt_range)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    kz, ky, kx = _frequencies(n, layout)

    kz2, kx2 = kz[:, None], kx[None, :]
    observed = _in_tilt_range(kx2, kz2, lo, hi)
    if n % 2 == 0:
        # A Nyquist voxel is both +N/2 and -N/2; flipping the sign of kx or kz (the same line
        # up to ±k) gives the other alias. Observed if either alias is.
        nyquist = (2 * np.abs(kx2) == n) | (2 * np.abs(kz2) == n)
        observed |= nyquist & _in_tilt_range(kx2, -kz2, lo, hi)

    mask = np.broadcast_to(observed[:, None, :], (n, ky.size, kx.size))
    if cutoff_radius is not None:
        if not cutoff_radius >= 0:
            raise ValueError(f"cutoff_radius must be >= 0 or None, got {cutoff_radius!r}")
        radius2 = kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2
        mask = mask & (radius2 <= float(cutoff_radius) ** 2)
    return mask.astype(dtype)


def _mirror_index(n: int) -> np.ndarray:
    """Index of ``-k`` for each index ``k`` of an unshifted axis of length ``n``: ``-i mod n``."""
    return (-np.arange(n)) % n


def full_to_rfft(full_shifted: np.ndarray) -> np.ndarray:
    """Full fftshifted cube -> rfft half layout (a pure re-indexing, no symmetry assumed).

    Parameters
    ----------
    full_shifted
        `(N, N, N)` array, ``(z, y, x)`` frequency axes, fftshifted: DC at ``[N//2] * 3``.

    Returns
    -------
    np.ndarray
        `(N, N, N//2+1)` array, DC at ``[0, 0, 0]``, not shifted:
        ``np.fft.ifftshift(full_shifted)[..., :N//2+1]`` (same dtype, a new array).

    Raises
    ------
    ValueError
        If the input is not a cube.
    """
    full_shifted = np.asarray(full_shifted)
    if full_shifted.ndim != 3 or len(set(full_shifted.shape)) != 1:
        raise ValueError(f"expected a full cube of shape (N, N, N), got {full_shifted.shape}")
    n = full_shifted.shape[0]
    return np.ascontiguousarray(np.fft.ifftshift(full_shifted)[..., : n // 2 + 1])


def rfft_to_full(half: np.ndarray, box: int) -> np.ndarray:
    """Half (rfft) layout -> full fftshifted cube, using Friedel symmetry ``w(-k) = w(k)``.

    The kx < 0 half missing from ``half`` is filled from the index mirror ``k -> -k mod N``
    (right for real weights and for ``|F|`` of a real volume; for a complex spectrum use the
    complex conjugate of the result's missing half instead).

    Parameters
    ----------
    half
        `(N, N, N//2+1)` array, ``(z, y, x)`` frequency axes, DC at ``[0, 0, 0]``, not shifted.
    box
        Side ``N`` (needed: ``N//2+1`` is the same for ``N = 2m`` and ``2m+1``).

    Returns
    -------
    np.ndarray
        `(N, N, N)` array, fftshifted, DC at ``[N//2] * 3``, same dtype as ``half``.
        ``full_to_rfft(rfft_to_full(half, N))`` equals ``half``.

    Raises
    ------
    ValueError
        If ``half`` is not `(N, N, N//2+1)` for ``N = box``.
    """
    n = _check_box(box)
    half = np.asarray(half)
    expected = (n, n, n // 2 + 1)
    if half.shape != expected:
        raise ValueError(
            f"expected a half volume of shape {expected} for box {n}, got {half.shape}"
        )
    full = np.empty((n, n, n), dtype=half.dtype)
    full[..., : n // 2 + 1] = half
    mirror = _mirror_index(n)
    missing_x = np.arange(n // 2 + 1, n)  # kx < 0; their mirrors -kx lie in the half
    full[..., missing_x] = half[np.ix_(mirror, mirror, mirror[missing_x])]
    return np.fft.fftshift(full)


def weight_from_volume(weight: np.ndarray, box: int, premultiplied: bool = False) -> np.ndarray:
    """Turn a 3D Fourier weight (RELION ``rlnCtfImage``) into the rfft layout.

    Two layouts are accepted, as in RELION (``ml_optimiser.cpp``, 3D CTF reading):

    * full cube `(N, N, N)`, assumed fftshifted with DC at the centre voxel ``N//2`` (RELION's
      logical origin of a cube). RELION reads the weight of frequency ``k`` from the cube voxel
      ``centre - k`` ("the origin in the ctf_img lies half a pixel to the right of the actual
      center"); this does the same. For a real, Friedel-symmetric weight that is the voxel
      ``centre + k``.
    * FFTW half volume `(N, N, N//2+1)`, DC at ``[0, 0, 0]``, taken as is.

    RELION 5's stacked CTF + multiplicity form `(2N, N, N//2+1)` is not accepted.

    Parameters
    ----------
    weight
        Weight volume in ``(z, y, x)`` axis order. Its values depend on the particle's CTF
        form (DESIGN.md section 2): for data that are not CTF-premultiplied the weight
        multiplies the reference (a binary wedge, ``|CTF|`` of phase-flipped data or the
        signed CTF), values in ``[-1, 1]``; for CTF-premultiplied data
        (``rlnCtfDataAreCtfPremultiplied 1``) it is a sum of CTF², values ``>= 0`` of any
        scale.
    box
        Side ``N`` of the particle box.
    premultiplied
        The form the values are checked against.

    Returns
    -------
    np.ndarray
        `(N, N, N//2+1)` float32 weight in rfft layout (DC at ``[0, 0, 0]``), a new array,
        clipped to its form's range.

    Raises
    ------
    ValueError
        For a shape other than the two accepted, non-finite values, or values outside the
        form's range by more than ``1e-6`` (the message names the flag that marks the
        other form).
    """
    n = _check_box(box)
    w = np.asarray(weight)
    full_shape, half_shape = (n, n, n), (n, n, n // 2 + 1)
    if w.shape == full_shape:
        c = box_center(n)
        index = (c - np.arange(n)) % n  # voxel of frequency -k for each unshifted index k
        w = w[np.ix_(index, index, index[: n // 2 + 1])]
    elif w.shape != half_shape:
        raise ValueError(
            f"weight volume has shape {w.shape}; expected the full cube {full_shape} "
            f"(fftshifted, DC at the centre) or the FFTW half volume {half_shape} for box {n}"
        )
    w = np.array(w, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("weight volume holds non-finite values (NaN or inf)")
    lo, hi = float(w.min()), float(w.max())
    if premultiplied:
        if lo < -_WEIGHT_SLACK:
            raise ValueError(
                f"the weight of CTF-premultiplied data must be a CTF\u00b2 sum (>= 0), but it "
                f"goes down to {lo:.4g}: a signed CTF belongs to data that are not "
                "premultiplied (rlnCtfDataAreCtfPremultiplied 0, --ctf-form multiplied)"
            )
        return np.maximum(w, 0.0, out=w)
    if lo < -1.0 - _WEIGHT_SLACK or hi > 1.0 + _WEIGHT_SLACK:
        raise ValueError(
            f"weight volume values must lie in [-1, 1] for data that are not CTF-premultiplied, "
            f"got min={lo:.4g}, max={hi:.4g}: a CTF\u00b2 sum (RELION 4/5 pseudo-subtomograms) "
            "needs rlnCtfDataAreCtfPremultiplied 1 in the optics block or --ctf-form "
            "premultiplied"
        )
    return np.clip(w, -1.0, 1.0, out=w)


def read_weight(path: str | PathLike[str], box: int, premultiplied: bool = False) -> np.ndarray:
    """Read a 3D weight volume from an MRC file; see :func:`weight_from_volume`.

    Parameters
    ----------
    path
        MRC file (opened with ``mrcfile``, ``permissive=False``), ``(z, y, x)`` data.
    box
        Side ``N`` of the particle box.
    premultiplied
        The particle's CTF form (:func:`weight_from_volume`).

    Returns
    -------
    np.ndarray
        `(N, N, N//2+1)` float32 weight in rfft layout, DC at ``[0, 0, 0]``.

    Raises
    ------
    ValueError
        As :func:`weight_from_volume`, or when the file is not a valid MRC file.
    """
    with mrcfile.open(path, mode="r", permissive=False) as mrc:
        data = np.array(mrc.data, dtype=np.float32)
    return weight_from_volume(data, box, premultiplied)


WHITENED_FLOOR = 1e-6
"""Premultiplied components whose weight ``C`` is below this share of the particle's largest
are taken as not observed by :func:`whitened` (their whitened data would be rounding error)."""


def whitened(
    volume: np.ndarray, weight: np.ndarray, is_premultiplied: bool = False, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A particle in the one form faml's engine uses: ``X = c T(A) + white noise`` (DESIGN.md 2).

    Parameters
    ----------
    volume
        `(N, N, N)` the particle as stored, ``(z, y, x)``.
    weight
        `(N, N, N//2+1)` its weight as stored (rfft layout).
    is_premultiplied
        ``False``: the weight ``c`` already multiplies the reference (``X = c T(A) + noise``:
        a binary wedge, ``|CTF|`` or the signed CTF); volume and weight are returned as they
        are. ``True``: the volume holds premultiplied data ``D = C T(A) + noise`` with noise
        variance ``∝ C`` and the weight is ``C`` (a CTF² sum); they are whitened,
        ``X = D / sqrt(C)``, ``c = sqrt(C)``, which is the same likelihood and the same
        M-step (``sum T^-1(c X) / sum T^-1(c²) = sum T^-1 D / sum T^-1 C``). Components
        with ``C`` under :data:`WHITENED_FLOOR` of the particle's largest count as not
        observed.
    scale
        Premultiplied data only: ``D`` and ``C`` are divided by this data-set-wide constant
        first (:attr:`faml.io.particles.ParticleTable.weight_scale`).

    Returns
    -------
    tuple of np.ndarray
        The `(N, N, N)` float32 volume ``X`` and the `(N, N, N//2+1)` float32 weight ``c``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32)
    if not is_premultiplied:
        return volume, weight
    box = volume.shape[0]
    C = weight.astype(np.float64) / scale
    c = np.sqrt(np.where(C > WHITENED_FLOOR * max(float(C.max()), 0.0), C, 0.0))
    spectrum = scipy.fft.rfftn(volume, workers=1) / scale
    x = np.zeros_like(spectrum)
    np.divide(spectrum, c, out=x, where=c > 0)
    out = scipy.fft.irfftn(x, s=(box,) * 3, workers=1).astype(np.float32)
    return out, c.astype(np.float32)
