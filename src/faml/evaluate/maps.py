"""A map against its true structure: global alignment, local refinement, correlation, FSC.

A class average is only defined up to a rigid transform of its frame, so it is first brought
onto the truth:

1. global search: :func:`faml.align.fast_align` of the map (as the "particle", full Fourier
   weight: both are complete maps) against the truth (as the "average") proposes candidate
   transforms ``(G, s)``; the identity is added as one more start (a map already in the
   truth's frame);
2. local refinement: from the best starts (by masked correlation), Powell's method on a
   rotation vector and a sub-voxel shift maximises the masked real-space Pearson correlation
   of the map with the truth placed by ``(G, s)`` (cubic B-spline, prefiltered once).

``G`` (``global_rotation``) and ``s`` (``global_shift``, ``(x, y, z)`` voxels) mean
``map ~ T_(G, s) truth`` in the sense of :func:`faml.geometry.transform.transform_volume`:
what sits at ``p`` in the truth sits at ``c + G (p - c) + s`` in the map (``c = N // 2``).
So ``G`` maps the truth's coordinates to the map's: a particle pose ``(R, t)`` estimated
against the map (``particle ~ T_(R, t) map``) is ``T_(R, t) T_(G, s) = (R G, t + R s)``
against the truth (:func:`faml.evaluate.poses.pose_errors`).

Scores of the aligned pair: the masked Pearson correlation (soft sphere, optionally after
low-passing both to the same resolution), the FSC of the masked maps and the resolutions
where it crosses 0.5 and 0.143 (interpolated between shells).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from faml.align import fast_align
from faml.geometry.axes import box_center, matrix_xyz_to_zyx, xyz_to_zyx
from faml.geometry.masks import default_mask
from faml.geometry.rotations import distinct, rotation_distance
from faml.geometry.transform import transform_volume
from faml.ml.fourier import fsc, fsc_resolution, shell_power

__all__ = [
    "MapAlignment",
    "MapScore",
    "align_map",
    "default_mask",
    "fsc_resolution",
    "lowpass",
    "masked_correlation",
    "score_map",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapScore:
    """Correlation and FSC of a map with its aligned truth.

    Attributes
    ----------
    correlation
        Masked Pearson correlation of the map with the placed truth (soft-sphere weights, no
        filtering).
    fsc
        `(N//2 + 1,)` FSC of the masked map with the masked placed truth, shells ``0..N//2``.
    resolution_05
        Ångström where the FSC first crosses 0.5 (interpolated between shells).
    global_rotation
        `(3, 3)` ``G``: maps the truth's ``(x, y, z)`` coordinates to the map's.
    global_shift
        `(3,)` ``s``, ``(x, y, z)`` voxels: ``map ~ T_(G, s) truth``.
    resolution_0143
        Ångström where the FSC first crosses 0.143.
    correlation_lowpass
        Masked Pearson correlation with both low-passed to ``lowpass_angstrom`` (NaN when no
        low-pass was asked for).
    lowpass_angstrom
        The low-pass resolution, or ``None``.
    voxel_size
        Ångström per voxel used for the resolutions.
    """

    correlation: float
    fsc: np.ndarray
    resolution_05: float
    global_rotation: np.ndarray
    global_shift: np.ndarray
    resolution_0143: float = float("nan")
    correlation_lowpass: float = float("nan")
    lowpass_angstrom: float | None = None
    voxel_size: float = float("nan")

    @property
    def global_angle_deg(self) -> float:
        """Rotation angle of ``G`` (degrees)."""
        return float(rotation_distance(self.global_rotation, np.eye(3)))

    def to_dict(self) -> dict:
        """JSON-serialisable figures (the FSC curve as a list)."""
        return {
            "correlation": float(self.correlation),
            "correlation_lowpass": _finite_or_none(self.correlation_lowpass),
            "lowpass_angstrom": self.lowpass_angstrom,
            "fsc05_angstrom": float(self.resolution_05),
            "fsc0143_angstrom": float(self.resolution_0143),
            "global_rotation": np.asarray(self.global_rotation).tolist(),
            "global_shift_voxels": np.asarray(self.global_shift).tolist(),
            "global_angle_deg": self.global_angle_deg,
            "fsc": np.asarray(self.fsc).tolist(),
        }


@dataclass(frozen=True)
class MapAlignment:
    """The transform that brings the truth onto a map: ``map ~ T_(rotation, shift) truth``.

    Attributes
    ----------
    rotation
        `(3, 3)` ``G`` (truth ``(x, y, z)`` -> map coordinates).
    shift
        `(3,)` ``s``, ``(x, y, z)`` voxels.
    correlation
        The masked correlation it reaches (of the maps as aligned: low-passed if asked).
    starts
        How many starting transforms were refined.
    evaluations
        Correlations evaluated by the refinement.
    """

    rotation: np.ndarray
    shift: np.ndarray
    correlation: float
    starts: int = 0
    evaluations: int = field(default=0)


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _check_cube(name: str, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"{name} must be a cubic (N, N, N) volume, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two `(N, N, N)` volumes weighted by ``mask`` (default sphere).

    ``sum w (a - <a>)(b - <b>) / sqrt(sum w (a - <a>)^2 sum w (b - <b>)^2)`` with the
    weighted means ``<.>`` of ``w = mask``. 0 when either is constant inside the mask.
    """
    a = _check_cube("a", a).astype(np.float64)
    b = _check_cube("b", b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"volumes differ in shape: {a.shape} and {b.shape}")
    w = default_mask(a.shape[0]) if mask is None else np.asarray(mask)
    if w.shape != a.shape:
        raise ValueError(f"mask must be {a.shape}, got {w.shape}")
    w = w.astype(np.float64) / max(float(w.sum()), 1e-300)
    a = a - np.sum(w * a)
    b = b - np.sum(w * b)
    den = np.sqrt(np.sum(w * a * a) * np.sum(w * b * b))
    return float(np.sum(w * a * b) / den) if den > 0 else 0.0


def lowpass(
    volume: np.ndarray, resolution: float, voxel_size: float, *, edge_shells: float = 2.0
) -> np.ndarray:
    """Low-pass an `(N, N, N)` volume to ``resolution`` Ångström (raised-cosine edge).

    Fourier weight 1 below radius ``r_c - edge/2`` and 0 beyond ``r_c + edge/2`` (shells,
    ``r_c = N * voxel_size / resolution``), a cosine between. Returns float64.
    """
    v = _check_cube("volume", volume).astype(np.float64)
    if not resolution > 0 or not voxel_size > 0:
        raise ValueError(f"resolution and voxel size must be > 0, got {resolution}, {voxel_size}")
    n = v.shape[0]
    kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
    ky = np.fft.fftfreq(n, 1.0 / n)[None, :, None]
    kx = np.fft.rfftfreq(n, 1.0 / n)[None, None, :]
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    rc = n * voxel_size / resolution
    half = 0.5 * edge_shells
    if half > 0:
        t = np.clip((rc + half - r) / (2 * half), 0.0, 1.0)
        weight = 0.5 - 0.5 * np.cos(np.pi * t)
    else:
        weight = (r <= rc).astype(np.float64)
    return scipy.fft.irfftn(scipy.fft.rfftn(v) * weight, s=v.shape)


class _Placer:
    """The truth placed by ``(G, s)`` at the mask's support, from spline coefficients.

    The cubic B-spline is prefiltered once (mirror boundary, as
    :func:`faml.geometry.transform.transform_volume` with ``order=3``); each call samples it
    at the support points only (where the mask is non-zero), which is all the weighted
    correlation needs.
    """

    def __init__(self, truth: np.ndarray, reference: np.ndarray, mask: np.ndarray):
        n = truth.shape[0]
        self.box = n
        self.coeffs = ndimage.spline_filter(
            truth.astype(np.float64), order=3, output=np.float64, mode="mirror"
        )
        support = mask > 0
        self.points = np.argwhere(support).astype(np.float64)  # (P, 3) (z, y, x) indices
        w = mask[support].astype(np.float64)
        self.w = w / w.sum()
        a = reference[support].astype(np.float64)
        a = a - np.sum(self.w * a)
        self.a = a
        self.aa = float(np.sum(self.w * a * a))
        self.calls = 0

    def sample(self, rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """`(P,)` values of ``T_(rotation, shift) truth`` at the support points."""
        m = matrix_xyz_to_zyx(np.asarray(rotation).T)
        c = float(box_center(self.box))
        offset = c - m @ (c + xyz_to_zyx(np.asarray(shift, dtype=np.float64)))
        coords = self.points @ m.T + offset
        self.calls += 1
        return ndimage.map_coordinates(
            self.coeffs, coords.T, order=3, mode="constant", cval=0.0, prefilter=False
        )

    def correlation(self, rotation: np.ndarray, shift: np.ndarray) -> float:
        """Masked Pearson correlation of the reference with the placed truth."""
        b = self.sample(rotation, shift)
        b = b - np.sum(self.w * b)
        den = np.sqrt(self.aa * np.sum(self.w * b * b))
        return float(np.sum(self.w * self.a * b) / den) if den > 0 else 0.0


def _refine(placer: _Placer, rotation: np.ndarray, shift: np.ndarray, tol: float):
    """Powell's method on ``(rotation vector in degrees, shift in voxels)`` from a start.

    The rotation is ``Q(x[:3]) @ rotation`` (a turn on the map side about the centre) and the
    shift ``shift + x[3:]``. Returns the refined rotation, shift and correlation.
    """

    def unpack(x):
        q = Rotation.from_rotvec(np.radians(x[:3])).as_matrix()
        return q @ rotation, shift + x[3:]

    def objective(x):
        return -placer.correlation(*unpack(x))

    res = optimize.minimize(
        objective,
        np.zeros(6),
        method="Powell",
        options={"xtol": tol, "ftol": 1e-7, "maxfev": 1500},
    )
    r, t = unpack(res.x)
    return r, t, -float(res.fun)


def align_map(
    volume: np.ndarray,
    truth: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    lowpass_angstrom: float | None = None,
    voxel_size: float | None = None,
    candidates: int = 10,
    refine: int = 3,
    tolerance: float = 1e-2,
) -> MapAlignment:
    """Find ``(G, s)`` with ``volume ~ T_(G, s) truth`` maximising the masked correlation.

    Parameters
    ----------
    volume
        `(N, N, N)` the map (e.g. a class average), ``(z, y, x)``.
    truth
        `(N, N, N)` the true structure in the reference frame.
    mask
        `(N, N, N)` weights of the correlation (default :func:`default_mask`), in the map's
        frame.
    lowpass_angstrom
        Low-pass both maps to this resolution before aligning (needs ``voxel_size``).
    voxel_size
        Ångström per voxel (only for ``lowpass_angstrom``).
    candidates
        Candidates of the global search (:func:`faml.align.fast_align`).
    refine
        How many of the best starts (by masked correlation; the identity is one of the
        starts) are refined locally. A start whose correlation is more than 0.05 below the
        best refined one so far is skipped.
    tolerance
        Powell's ``xtol`` in degrees (rotation vector) and voxels (shift); its ``ftol`` is
        ``1e-7`` (measured on noise-free planted transforms at 24^3 and 32^3: errors below
        0.006 degrees and 0.001 voxel).

    Returns
    -------
    MapAlignment
        ``G`` `(3, 3)` maps the truth's ``(x, y, z)`` to the map's; ``s`` `(3,)` voxels.
    """
    volume = _check_cube("volume", volume)
    truth = _check_cube("truth", truth)
    if volume.shape != truth.shape:
        raise ValueError(f"map {volume.shape} and truth {truth.shape} differ in shape")
    box = volume.shape[0]
    mask = default_mask(box) if mask is None else np.asarray(mask, dtype=np.float32)
    if mask.shape != volume.shape or not np.any(mask > 0):
        raise ValueError(f"mask must be a non-empty {volume.shape} volume, got {mask.shape}")
    a, b = volume, truth
    if lowpass_angstrom is not None:
        if voxel_size is None:
            raise ValueError("lowpass_angstrom needs the voxel size")
        a = lowpass(a, lowpass_angstrom, voxel_size)
        b = lowpass(b, lowpass_angstrom, voxel_size)
    if not np.ptp(a[mask > 0]) > 0 or not np.ptp(b[mask > 0]) > 0:
        logger.warning("a map is constant inside the mask: no alignment (identity)")
        return MapAlignment(np.eye(3), np.zeros(3), 0.0)
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    b32 = np.ascontiguousarray(b, dtype=np.float32)
    ones = np.ones((box, box, box // 2 + 1), np.float32)
    found = fast_align(a32, ones, b32, max_candidates=candidates)
    rots = np.stack([np.eye(3)] + [c.rotation for c in found])
    shifts = np.stack([np.zeros(3)] + [c.shift for c in found])
    placer = _Placer(b, a, mask)
    start = np.array([placer.correlation(r, t) for r, t in zip(rots, shifts, strict=True)])
    order = np.argsort(-start, kind="stable")
    keep = distinct(rots, 2.0, order=order)  # one start per basin (best first)
    best = (rots[order[0]], shifts[order[0]], float(start[order[0]]))
    refined = 0
    for i in keep[:refine]:
        if refined and start[i] < best[2] - 0.05:
            continue
        r, t, c = _refine(placer, rots[i], shifts[i], tolerance)
        refined += 1
        if c > best[2]:
            best = (r, t, c)
    logger.debug(
        "map alignment: %d starts refined, %d correlations, best %.5f",
        refined, placer.calls, best[2],
    )  # fmt: skip
    return MapAlignment(best[0], best[1], best[2], refined, placer.calls)


def amplitude_ratio(
    volume: np.ndarray,
    truth: np.ndarray,
    rotation: np.ndarray,
    shift: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """`(N//2 + 1,)` per Fourier shell ``sqrt(sum |F_map|^2 / sum |F_truth|^2)``, both masked.

    The truth is placed on the map by ``rotation``, ``shift`` (:func:`align_map`'s, or a
    :class:`MapScore`'s ``global_rotation``, ``global_shift``); each map's mean
    inside the mask is removed before the transform. A map whose
    amplitudes follow the truth's (up to one scale) gives a flat curve; a CTF-filtered map
    gives a curve that falls towards low frequencies. Shell 0 is DC (not meaningful).
    """
    volume = _check_cube("volume", volume)
    truth = _check_cube("truth", truth)
    box = volume.shape[0]
    mask = default_mask(box) if mask is None else np.asarray(mask, dtype=np.float32)
    placed = transform_volume(truth, rotation, shift, order=3)
    # each map's mean inside the mask removed first: a map's DC (the solvent level, lost
    # in tomograms) would otherwise leak into the lowest shells through the mask
    power = [
        shell_power(scipy.fft.rfftn((v - np.sum(v * mask) / np.sum(mask)) * mask))
        for v in (volume, placed)
    ]
    return np.sqrt(power[0] / np.maximum(power[1], np.finfo(np.float64).tiny))


def score_map(
    volume: np.ndarray,
    truth: np.ndarray,
    voxel_size: float,
    *,
    lowpass_angstrom: float | None = None,
    mask: np.ndarray | None = None,
    alignment: MapAlignment | None = None,
    candidates: int = 10,
    refine: int = 3,
) -> MapScore:
    """Align ``volume`` to ``truth`` (both `(N, N, N)`) and score it.

    Parameters
    ----------
    volume
        `(N, N, N)` the map.
    truth
        `(N, N, N)` the true structure.
    voxel_size
        Ångström per voxel.
    lowpass_angstrom
        If given, the alignment and ``correlation_lowpass`` use both maps low-passed to it.
    mask
        `(N, N, N)` correlation weights and FSC mask (default :func:`default_mask`).
    alignment
        A transform found before (skips :func:`align_map`).
    candidates, refine
        See :func:`align_map`.

    Returns
    -------
    MapScore
        Correlations, FSC with the 0.5 and 0.143 resolutions, and ``(G, s)``.
    """
    volume = _check_cube("volume", volume)
    truth = _check_cube("truth", truth)
    box = volume.shape[0]
    mask = default_mask(box) if mask is None else np.asarray(mask, dtype=np.float32)
    if alignment is None:
        alignment = align_map(
            volume, truth, mask=mask, lowpass_angstrom=lowpass_angstrom,
            voxel_size=voxel_size, candidates=candidates, refine=refine,
        )  # fmt: skip
    g, s = alignment.rotation, alignment.shift
    placed = transform_volume(truth, g, s, order=3)
    corr = masked_correlation(volume, placed, mask)
    corr_lp = float("nan")
    if lowpass_angstrom is not None:
        corr_lp = masked_correlation(
            lowpass(volume, lowpass_angstrom, voxel_size),
            lowpass(placed, lowpass_angstrom, voxel_size),
            mask,
        )
    curve = fsc(scipy.fft.rfftn(volume * mask), scipy.fft.rfftn(placed * mask))
    return MapScore(
        correlation=corr,
        fsc=curve,
        resolution_05=fsc_resolution(curve, box, voxel_size, 0.5),
        global_rotation=g,
        global_shift=s,
        resolution_0143=fsc_resolution(curve, box, voxel_size, 0.143),
        correlation_lowpass=corr_lp,
        lowpass_angstrom=None if lowpass_angstrom is None else float(lowpass_angstrom),
        voxel_size=float(voxel_size),
    )
