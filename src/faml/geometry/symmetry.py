"""Point-group symmetry of class averages: Cn and Dn in RELION's axes.

Conventions (RELION's ``--sym``): the n-fold axis of Cn and Dn is z; the two-fold axes of Dn
lie in the xy plane, one of them along x. A group is listed by its rotations ``R_g``
`(G, 3, 3)` acting on ``(x, y, z)`` about the box centre ``N // 2``
(:mod:`faml.geometry.transform`).

Two uses in a run (:mod:`faml.ml.mstep`):

- :func:`symmetry_frame` finds, once, the rigid transform that brings a reference-free
  average into the group's frame (its centre of mass to the box centre, its n-fold axis to
  z, for Dn a two-fold axis to x): a coarse search over axis directions on a low-passed
  copy, then a local refinement on the map itself;
- the M-step's sums are averaged over the group (:func:`faml.ml.mstep.symmetrize_stats`),
  ``S_sym(k) = 1/G sum_g S(R_g^T k)`` and the same for the weights ``W``, so that every
  symmetry copy of a particle fills its share of the others' missing wedges.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import optimize

from faml.geometry.axes import box_center
from faml.geometry.masks import soft_sphere
from faml.geometry.rotations import rotation_about_axis
from faml.geometry.transform import transform_volume

__all__ = [
    "PointGroup",
    "parse_symmetry",
    "symmetry_frame",
    "symmetry_correlation",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointGroup:
    """A point group ``Cn`` or ``Dn``.

    Attributes
    ----------
    kind
        ``"C"`` or ``"D"``.
    order
        ``n >= 1``.
    """

    kind: str
    order: int

    @property
    def name(self) -> str:
        """RELION's name, e.g. ``"D7"``."""
        return f"{self.kind}{self.order}"

    @property
    def trivial(self) -> bool:
        """``C1``: no symmetry."""
        return self.kind == "C" and self.order == 1

    def rotations(self) -> np.ndarray:
        """`(G, 3, 3)` the group's rotations (identity first): ``G = n`` (Cn) or ``2n`` (Dn)."""
        turns = [rotation_about_axis("z", 360.0 * j / self.order) for j in range(self.order)]
        if self.kind == "D":
            flip = rotation_about_axis("x", 180.0)
            turns += [t @ flip for t in turns]
        return np.stack(turns)


def parse_symmetry(text: str | None) -> PointGroup:
    """``"C7"``, ``"d7"``, ``"c1"`` or ``None`` (C1) as a :class:`PointGroup`."""
    if text is None:
        return PointGroup("C", 1)
    match = re.fullmatch(r"\s*([CcDd])\s*(\d+)\s*", str(text))
    if not match or int(match.group(2)) < 1:
        raise ValueError(
            f"symmetry must be Cn or Dn with n >= 1 (RELION's names, e.g. C7 or D7), got {text!r}"
        )
    return PointGroup(match.group(1).upper(), int(match.group(2)))


# -- finding the frame -----------------------------------------------------------------------


def _weighted_corr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    sw = w.sum()
    ma, mb = (a * w).sum() / sw, (b * w).sum() / sw
    da, db = a - ma, b - mb
    den = np.sqrt((w * da * da).sum() * (w * db * db).sum())
    return float((w * da * db).sum() / den) if den > 0 else 0.0


def symmetry_correlation(
    volume: np.ndarray, rotations: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Mean masked correlation of a map with its copies under ``rotations``.

    Identities are skipped; about 1 for a map with that symmetry.
    """
    v = np.asarray(volume, dtype=np.float32)
    box = v.shape[0]
    w = _sphere(box) if mask is None else np.asarray(mask, dtype=np.float32)
    rots = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    rots = rots[np.abs(rots - np.eye(3)).max(axis=(1, 2)) > 1e-9]
    if not len(rots):
        return 1.0
    copies = transform_volume(v, rots, order=1).reshape(-1, box, box, box)
    return float(np.mean([_weighted_corr(v, c, w) for c in copies]))


def _sphere(box: int) -> np.ndarray:
    return soft_sphere(box, 0.45 * box - 2.0, edge=2.0)


def _axis_to_z(axis: np.ndarray) -> np.ndarray:
    """A rotation ``Q`` with ``Q axis = z`` (``(x, y, z)``)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(a, z)
    s, c = np.linalg.norm(v), float(a @ z)
    if s < 1e-12:
        return np.eye(3) if c > 0 else rotation_about_axis("x", 180.0)
    k = v / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def _fibonacci_hemisphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # (0, 1]: one of each +-axis pair
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _crop(volume: np.ndarray, size: int) -> np.ndarray:
    """Fourier crop of an `(N, N, N)` map to `(size,) * 3` (the same object, coarser voxels)."""
    box = volume.shape[0]
    if size >= box:
        return np.asarray(volume, dtype=np.float32)
    spec = np.fft.fftshift(scipy.fft.fftn(volume, workers=1))
    lo = box // 2 - size // 2
    cut = spec[lo : lo + size, lo : lo + size, lo : lo + size]
    out = scipy.fft.ifftn(np.fft.ifftshift(cut), workers=1).real * (size / box) ** 3
    return out.astype(np.float32)


def _centre_of_mass(volume: np.ndarray) -> np.ndarray:
    """``(x, y, z)`` voxels of the positive density (the box centre if there is none)."""
    rho = np.clip(np.asarray(volume, dtype=np.float64), 0.0, None)
    total = rho.sum()
    box = volume.shape[0]
    if not total > 0:
        return box_center(box).astype(np.float64)
    idx = np.indices(volume.shape, dtype=np.float64).reshape(3, -1)
    return (idx @ rho.reshape(-1) / total)[::-1]


def _cn_score(volume, mask, order, axis) -> float:
    turns = np.stack([rotation_about_axis(axis, 360.0 * j / order) for j in range(1, order)])
    return symmetry_correlation(volume, turns, mask)


def _unit(theta: float, phi: float) -> np.ndarray:
    return np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])


def symmetry_frame(
    volume: np.ndarray,
    group: PointGroup,
    mask: np.ndarray | None = None,
    *,
    directions: int = 600,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The transform ``(Q, t)`` that brings a map into ``group``'s frame.

    ``transform_volume(volume, Q, t)`` has its centre of mass at the box centre, its n-fold
    axis along z and (Dn) a two-fold axis along x.

    Parameters
    ----------
    volume
        `(N, N, N)` map, ``(z, y, x)``.
    group
        The point group.
    mask
        `(N, N, N)` weights of the correlations (default: a soft sphere of 0.45 N).
    directions
        Axis directions of the coarse search (a Fibonacci hemisphere; about 6 degrees apart
        for 600), on a copy cropped to at most 32^3; the best 5 are refined on the map.

    Returns
    -------
    rotation, shift, score
        `(3, 3)` ``Q``, `(3,)` ``t`` (voxels, ``(x, y, z)``), and the symmetry correlation
        of the transformed map (mean over the group's non-identity elements).
    """
    v = np.asarray(volume, dtype=np.float32)
    box = v.shape[0]
    w = _sphere(box) if mask is None else np.asarray(mask, dtype=np.float32)
    com = _centre_of_mass(v * w)
    to_centre = box_center(box) - com
    centred = transform_volume(v, None, to_centre, order=3)
    if group.trivial:
        return np.eye(3), to_centre, 1.0
    n = group.order
    if n > 1:
        small = _crop(centred, min(box, 32))
        ws = _sphere(small.shape[0])
        axes = _fibonacci_hemisphere(directions)
        coarse = np.array([_cn_score(small, ws, n, a) for a in axes])
        best = axes[np.argsort(coarse)[::-1][:5]]

        def cost(p):
            return -_cn_score(centred, w, n, _unit(p[0], p[1]))

        refined = []
        for a in best:
            start = [np.arccos(np.clip(a[2], -1, 1)), np.arctan2(a[1], a[0])]
            options = {"xatol": 2e-3, "fatol": 1e-5, "maxiter": 80}
            res = optimize.minimize(cost, start, method="Nelder-Mead", options=options)
            refined.append((res.fun, _unit(*res.x)))
        axis = min(refined, key=lambda r: r[0])[1]
        q = _axis_to_z(axis)
    else:  # D1: only the two-fold, found below as the "x" axis of the identity frame
        q = np.eye(3)
    if group.kind == "D":
        upright = transform_volume(centred, q, order=3)
        step = 180.0 / n

        def two_fold(psi_deg: float) -> float:
            axis = np.array([np.cos(np.radians(psi_deg)), np.sin(np.radians(psi_deg)), 0.0])
            return symmetry_correlation(upright, rotation_about_axis(axis, 180.0)[None], w)

        grid = np.arange(0.0, step, 1.0)
        psi0 = float(grid[int(np.argmax([two_fold(p) for p in grid]))])
        res = optimize.minimize_scalar(lambda p: -two_fold(p), bounds=(psi0 - 1, psi0 + 1),
                                       method="bounded", options={"xatol": 0.05})  # fmt: skip
        q = rotation_about_axis("z", -float(res.x)) @ q
    shift = q @ to_centre
    framed = transform_volume(v, q, shift, order=3)
    score = symmetry_correlation(framed, group.rotations(), w)
    logger.debug("symmetry %s frame found: correlation of the copies %.3f", group.name, score)
    return q, shift, score
