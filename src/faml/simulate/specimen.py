"""The crowded mode's specimen: what fills each tomogram, and where.

Step 1 of :mod:`faml.simulate.crowded` (its module docstring has the whole method): the
mode's settings (:class:`CrowdedSettings`), the default crowd (:func:`pseudo_proteins`), the
bounding sphere of a structure (:func:`structure_radius`), the sizes of the tomogram
(``_geometry``) and the random sequential addition of targets and distractors whose spheres
do not overlap (``_layout``). The tilt series, the reconstruction and the cutting of the
subtomograms are :mod:`faml.simulate.crowded`'s.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from faml.geometry.axes import box_center
from faml.geometry.rotations import random_rotations
from faml.simulate.tiltseries import SimulationSettings

__all__ = ["CrowdedSettings", "pseudo_proteins", "structure_radius"]

logger = logging.getLogger("faml.simulate.crowded")  # the crowded mode's messages, one logger

_TRIES = 500  # random positions tried per object before it counts as not fitting


@dataclass(frozen=True)
class CrowdedSettings:
    """The crowded mode's own parameters (the rest is :class:`SimulationSettings`).

    Attributes
    ----------
    tomograms
        Number of tomograms; ``None``: enough that the targets' spheres fill about 10 % of
        each tomogram.
    crowding
        Share of the specimen's volume filled by the objects' bounding spheres (targets and
        distractors), ``0 <= crowding <= 0.35`` (random sequential addition of spheres jams
        near 0.38).
    pick_error
        Standard deviation of the picking error, voxels per axis.
    dose_per_tilt
        Exposure per tilt image, e/Å² (``0``: no exposure filter).
    tomogram_size
        ``(xy, z)``: the tomogram's side in ``x`` and ``y`` and its thickness ``z``, in boxes.
    write_tomograms
        Also write each tomogram (``tomograms/tomogram_NNN.mrc``).
    """

    tomograms: int | None = None
    crowding: float = 0.25
    pick_error: float = 1.0
    dose_per_tilt: float = 3.0
    tomogram_size: tuple[float, float] = (4.5, 2.0)
    write_tomograms: bool = False

    def __post_init__(self) -> None:
        t = self.tomograms
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1):
            raise ValueError(f"tomograms must be a positive integer, got {t!r}")
        if not (0.0 <= self.crowding <= 0.35):
            raise ValueError(f"crowding must be in [0, 0.35], got {self.crowding!r}")
        if not (0.0 <= self.pick_error <= 10.0):
            raise ValueError(f"pick_error must be in [0, 10] voxels, got {self.pick_error!r}")
        if not (0.0 <= self.dose_per_tilt < 1e3):
            raise ValueError(f"dose_per_tilt must be >= 0 e/A^2, got {self.dose_per_tilt!r}")
        try:
            xy, z = (float(v) for v in self.tomogram_size)
        except (TypeError, ValueError):
            raise ValueError(
                f"tomogram_size must be (xy, z) boxes, got {self.tomogram_size!r}"
            ) from None
        if not (xy >= 1.5 and 1.0 <= z <= xy):
            raise ValueError(
                f"tomogram_size must have xy >= 1.5 and 1 <= z <= xy boxes, got ({xy}, {z})"
            )
        object.__setattr__(self, "tomogram_size", (xy, z))

    def as_dict(self) -> dict:
        """The settings as a JSON-ready dict."""
        d = asdict(self)
        d["tomogram_size"] = list(self.tomogram_size)
        return d


def structure_radius(volume: np.ndarray) -> float:
    """Radius (voxels) of the sphere about voxel ``n // 2`` that bounds a structure.

    The farthest voxel above 5 % of the maximum, plus half a voxel.
    """
    vol = np.asarray(volume)
    c = box_center(vol.shape[0])
    idx = np.argwhere(vol > 0.05 * float(vol.max()))
    if idx.size == 0:
        raise ValueError("a structure has no positive density")
    return float(np.sqrt(np.max(np.sum((idx - c) ** 2, axis=1)))) + 0.5


def _inner_mean(volume: np.ndarray) -> float:
    vol = np.asarray(volume, dtype=np.float64)
    return float(vol[vol > 0.2 * vol.max()].mean())


def pseudo_proteins(box: int, count: int = 4) -> list[np.ndarray]:
    """The default crowd: ``count`` blob-shaped pseudo-proteins of different sizes.

    Each is a cluster of 3-8 overlapping balls (density ``1 - exp(-sum of Gaussians)``, so
    about uniform inside) of overall radius ``0.1 N`` to ``0.28 N``, from a fixed seed (the
    same shapes for every simulation with this box), centre of mass at voxel ``n // 2`` of its
    own box (even, just large enough).

    Returns
    -------
    list of np.ndarray
        `(n, n, n)` float32 volumes ``(z, y, x)``, ``n <= box``, maximum 1.
    """
    rng = np.random.default_rng(20260619)
    out = []
    for j, frac in enumerate(np.linspace(0.1, 0.28, count)):
        radius = max(2.0, frac * box)
        n = min(box, 2 * math.ceil(radius + 3))
        c = box_center(n)
        balls = 3 + (j * 5) // max(1, count - 1)
        a = radius / 2.0  # ball radius
        dirs = rng.standard_normal((balls, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        centres = dirs * rng.uniform(0.3, 1.0, (balls, 1)) * (radius - a)
        centres -= centres.mean(axis=0)
        grid = np.indices((n, n, n), dtype=np.float64)[::-1] - c  # (x, y, z)
        field = np.zeros((n, n, n))
        for q in centres:
            d2 = sum((grid[i] - q[i]) ** 2 for i in range(3))
            field += 3.0 * np.exp(-d2 / (2.0 * (0.6 * a) ** 2))
        vol = 1.0 - np.exp(-field)
        vol[vol < 0.02] = 0.0
        out.append((vol / vol.max()).astype(np.float32))
    return out


@dataclass(frozen=True)
class _Geometry:
    """Sizes of one tomogram (all tomograms of a simulation share them)."""

    box: int
    lxy: int  # tomogram side in x and y
    lz: int  # tomogram thickness
    ext: int  # specimen widening in x on each side
    margin: float  # targets: extra room for the picking error

    @property
    def lsx(self) -> int:
        return self.lxy + 2 * self.ext

    @property
    def axis(self) -> tuple[int, int]:
        """Tilt axis ``(x in the specimen, z)``."""
        return self.lsx // 2, self.lz // 2


def _geometry(box: int, settings: SimulationSettings, crowd: CrowdedSettings) -> _Geometry:
    def even(v: float) -> int:
        return 2 * max(1, int(round(v / 2)))

    xy, z = crowd.tomogram_size
    lxy, lz = even(xy * box), even(z * box)
    theta = math.radians(max(abs(a) for a in settings.tilt_range))
    ext = math.ceil(lz / 2 * math.tan(theta)) + 2
    margin = 3.0 * crowd.pick_error + 1.0
    if lxy < box + 2 * margin + 1:
        raise ValueError(
            f"tomogram_size {xy:g} boxes is too small for a {box}^3 box and a picking error "
            f"of {crowd.pick_error:g} voxels"
        )
    return _Geometry(box, lxy, lz, ext, margin)


def _place(rng, centres, radii, n_placed, radius, lo, hi) -> np.ndarray | None:
    """A random centre in the box ``[lo, hi]`` (x, y, z) whose sphere meets none placed."""
    for _ in range(_TRIES):
        p = rng.uniform(lo, hi)
        if n_placed == 0:
            return p
        d2 = np.sum((centres[:n_placed] - p) ** 2, axis=1)
        if np.all(d2 >= (radii[:n_placed] + radius) ** 2):
            return p
    return None


def _layout(job, t: int, rng: np.random.Generator):
    """Objects of tomogram ``t``: structure index, rotation, specimen centre (x, y, z).

    ``job``: the crowded mode's job (:class:`faml.simulate.crowded._Job`: its geometry,
    settings, structures and their radii, the targets' classes, rotations and tomograms).
    Returns the objects' structure indices, rotations, centres and the share of the
    specimen their spheres fill.
    """
    g, n = job.geometry, job.geometry.box
    ids = job.members[t]
    volume = g.lsx * g.lxy * g.lz
    cap = len(ids) + int(job.crowd.crowding * volume / (4.0 / 3.0 * math.pi * 8.0)) + 1
    centres = np.zeros((cap, 3))
    radii = np.zeros(cap)
    kinds: list[int] = []
    rots: list[np.ndarray] = []
    half = n / 2.0
    for i in ids:
        k = int(job.classes[i])
        r = job.radii[k]
        lo = np.array([g.ext + half + g.margin, half + g.margin, max(half + g.margin, r)])
        hi = np.array(
            [
                g.ext + g.lxy - half - g.margin,
                g.lxy - half - g.margin,
                g.lz - max(half + g.margin, r),
            ]
        )
        p = _place(rng, centres, radii, len(kinds), r, lo, np.maximum(lo, hi))
        if p is None:
            raise ValueError(
                f"{len(ids)} targets do not fit in a tomogram; use more tomograms "
                f"(now {len(job.members)})"
            )
        centres[len(kinds)], radii[len(kinds)] = p, r
        kinds.append(k)
        rots.append(job.rotations[i])
    filled = sum(4.0 / 3.0 * math.pi * r**3 for r in radii[: len(kinds)])
    goal = job.crowd.crowding * volume
    # a distractor that no longer fits is not drawn again, nor any as large or larger
    candidates = list(range(job.n_targets, len(job.structures)))
    while candidates and filled < goal and len(kinds) < cap:
        k = candidates[int(rng.integers(len(candidates)))]
        r = job.radii[k]
        rot = random_rotations(1, rng)[0]
        lo = np.array([r, r, r])
        hi = np.array([g.lsx - r, g.lxy - r, g.lz - r])
        p = _place(rng, centres, radii, len(kinds), r, lo, np.maximum(lo, hi))
        if p is None:
            candidates = [c for c in candidates if job.radii[c] < r]
            continue
        centres[len(kinds)], radii[len(kinds)] = p, r
        kinds.append(k)
        rots.append(rot)
        filled += 4.0 / 3.0 * math.pi * r**3
    if filled < goal and len(job.structures) > job.n_targets:
        logger.warning(
            "tomogram %d: no room for more objects at crowding %.3f (asked %.3f)",
            t + 1,
            filled / volume,
            job.crowd.crowding,
        )
    return np.asarray(kinds), np.asarray(rots), centres[: len(kinds)].copy(), filled / volume
