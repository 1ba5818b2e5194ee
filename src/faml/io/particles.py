"""The particle table: the one description of the data set the engine sees.

A :class:`ParticleTable` lists each particle's file, its Fourier weight (a tilt range or a 3D
weight file in RELION's ``rlnCtfImage`` layouts), the common box and voxel size, and, when
known, the true pose and class (simulated data). Volumes are read lazily, one particle at a
time (:meth:`ParticleTable.load`): memory does not grow with the number of particles.

Tables come from a RELION particles STAR file (:func:`faml.io.star.read_particles_star`) or
from a directory / glob of MRC files (:func:`from_mrc_files`).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from faml.geometry.wedge import read_weight, wedge_mask
from faml.io._relion import CTF_FLAG, STACKS_KEY
from faml.io.mrc import VolumeHeader, read_header, read_volume

__all__ = [
    "CTF_FORMS",
    "ParticleTable",
    "TableRows",
    "from_mrc_files",
    "with_ctf_form",
    "with_weight_scale",
]

logger = logging.getLogger(__name__)

CTF_FORMS = ("auto", "multiplied", "premultiplied")
"""``faml run --ctf-form``: as the input says, or one of the two forms of DESIGN.md section 2."""

WEIGHT_SCALE_SAMPLE = 16
"""How many particles (evenly spaced over the table) set a premultiplied set's weight scale."""


@lru_cache(maxsize=8)
def _cached_wedge(box: int, lo: float, hi: float) -> np.ndarray:
    mask = wedge_mask(box, (lo, hi))
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class ParticleTable:
    """Particles of one data set (all the same cubic box and voxel size).

    Attributes
    ----------
    paths
        File of each particle (absolute).
    names
        ``rlnImageName`` of each particle as it will be written back (as read from a STAR
        file, or the path).
    box
        ``N``: every particle is `(N, N, N)`.
    voxel_size
        Angstrom per voxel.
    tilt_ranges
        `(n, 2)` tilt range (degrees, about Y) of each particle, used where it has no weight
        file.
    weight_paths
        Per particle a 3D Fourier weight file (RELION ``rlnCtfImage``: full cube or FFTW half
        volume) or ``None``.
    tomo_names
        ``rlnTomoName`` per particle, or ``None``.
    subtomo_rotations
        `(n, 3, 3)` RELION 5 ``rlnTomoSubtomogramRot/Tilt/Psi`` matrices (identity if absent):
        the particle's total pose is ``A_subtomo @ A_particle``.
    prior_rotations, prior_shifts
        The poses the input gives (`(n, 3, 3)` RELION's sense, `(n, 3)` voxels ``(x, y, z)``,
        in the particle's own frame), e.g. from template matching or an earlier run, or
        ``None``: the priors of a local search (``faml run --local-search``).
    true_rotations, true_shifts, true_classes
        Ground truth for simulated data (`(n, 3, 3)`, `(n, 3)` voxels, `(n,)` 1-based), or
        ``None``.
    extra
        Other per-particle columns read from a STAR file, written back unchanged.
    optics
        Optics-group values read from a STAR file (voltage, Cs, amplitude contrast, ...),
        written back into the optics block.
    ctf_premultiplied
        The CTF form of every particle (DESIGN.md section 2; RELION's
        ``rlnCtfDataAreCtfPremultiplied``). ``False``: the weight multiplies the reference,
        ``X = c * T(A) + noise`` (``c`` a binary wedge, ``|CTF|`` of phase-flipped data or the
        signed CTF, values in ``[-1, 1]``). ``True``: the data are CTF-premultiplied,
        ``D = C * T(A) + noise`` with noise variance ``∝ C`` and ``C`` a sum of CTF² (RELION
        4/5 and WarpTools pseudo-subtomograms, faml's own 2D-stack reconstructions), ``C >= 0``
        of any scale.
    weight_scale
        Premultiplied data: one data-set-wide constant that ``D`` and ``C`` are divided by
        as they are loaded into the engine (:func:`faml.ml.em.load_particle`), so that the
        weights sit near ``[0, 1]`` as every other form's do and the M-step's floors mean the
        same. A constant for the whole set leaves the model as it is (``sigma^2`` absorbs it).
    """

    paths: tuple[str, ...]
    names: tuple[str, ...]
    box: int
    voxel_size: float
    tilt_ranges: np.ndarray
    weight_paths: tuple[str | None, ...]
    tomo_names: tuple[str, ...] | None = None
    subtomo_rotations: np.ndarray | None = None
    prior_rotations: np.ndarray | None = None
    prior_shifts: np.ndarray | None = None
    true_rotations: np.ndarray | None = None
    true_shifts: np.ndarray | None = None
    true_classes: np.ndarray | None = None
    extra: dict[str, tuple] = field(default_factory=dict)
    optics: dict[str, object] = field(default_factory=dict)
    ctf_premultiplied: bool = False
    weight_scale: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.paths)
        if n == 0:
            raise ValueError("the particle table is empty")
        if len(self.names) != n or len(self.weight_paths) != n:
            raise ValueError("names and weight_paths must have one entry per particle")
        if np.shape(self.tilt_ranges) != (n, 2):
            raise ValueError(f"tilt_ranges must be ({n}, 2), got {np.shape(self.tilt_ranges)}")
        if self.voxel_size <= 0:
            raise ValueError(f"voxel size must be positive, got {self.voxel_size}")
        if not (np.isfinite(self.weight_scale) and self.weight_scale > 0):
            raise ValueError(f"weight_scale must be positive, got {self.weight_scale}")
        if (self.prior_rotations is None) != (self.prior_shifts is None) or (
            self.prior_rotations is not None
            and (
                np.shape(self.prior_rotations) != (n, 3, 3) or np.shape(self.prior_shifts) != (n, 3)
            )
        ):
            raise ValueError(f"prior poses must be ({n}, 3, 3) rotations and ({n}, 3) shifts")

    def __len__(self) -> int:
        return len(self.paths)

    def wedge(self, index: int) -> np.ndarray:
        """`(N, N, N//2 + 1)` float32 Fourier weight of particle ``index`` (``rfftn`` layout).

        As stored: in the particle's CTF form (:attr:`ctf_premultiplied`), not yet divided by
        :attr:`weight_scale`.
        """
        wp = self.weight_paths[index]
        if wp is not None:
            return read_weight(wp, self.box, self.ctf_premultiplied)
        lo, hi = (float(v) for v in self.tilt_ranges[index])
        return _cached_wedge(self.box, lo, hi)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Particle ``index``: its `(N, N, N)` float32 volume and its Fourier weight, as stored."""
        vol, _ = read_volume(self.paths[index])
        if vol.shape != (self.box,) * 3:
            raise ValueError(
                f"particle {self.paths[index]} is {vol.shape}, the data set's box is "
                f"{(self.box,) * 3}"
            )
        return vol, self.wedge(index)

    def path(self, index: int) -> str:
        """File of particle ``index``."""
        return self.paths[index]

    def subset(self, indices: np.ndarray) -> ParticleTable:
        """The table of the particles ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)

        def pick(seq):
            return None if seq is None else tuple(seq[i] for i in idx)

        def pick_arr(a):
            return None if a is None else np.asarray(a)[idx]

        return replace(
            self,
            paths=pick(self.paths),
            names=pick(self.names),
            tilt_ranges=np.asarray(self.tilt_ranges)[idx],
            weight_paths=pick(self.weight_paths),
            tomo_names=pick(self.tomo_names),
            subtomo_rotations=pick_arr(self.subtomo_rotations),
            prior_rotations=pick_arr(self.prior_rotations),
            prior_shifts=pick_arr(self.prior_shifts),
            true_rotations=pick_arr(self.true_rotations),
            true_shifts=pick_arr(self.true_shifts),
            true_classes=pick_arr(self.true_classes),
            extra={k: pick(v) for k, v in self.extra.items()},
        )


class TableRows:
    """Some rows of a :class:`ParticleTable`, addressed by their index in the whole table.

    What a task of the map step carries instead of the whole table: its particles' paths and
    weights only, so that a worker's memory does not grow with the data set.
    """

    def __init__(self, table: ParticleTable, indices):
        idx = np.asarray(indices, dtype=np.int64)
        self._rows = table.subset(idx)
        self._position = {int(i): j for j, i in enumerate(idx)}
        self.box = table.box
        self.voxel_size = table.voxel_size
        self.ctf_premultiplied = table.ctf_premultiplied
        self.weight_scale = table.weight_scale

    def __len__(self) -> int:
        return len(self._position)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Particle ``index`` (of the whole table): volume and Fourier weight."""
        return self._rows.load(self._position[int(index)])

    def path(self, index: int) -> str:
        """File of particle ``index`` (of the whole table)."""
        return self._rows.paths[self._position[int(index)]]


def first_cubic_header(paths) -> VolumeHeader:
    """The header of the first of ``paths`` that reads as a cubic 3D volume.

    Raises the first file's error when none does.
    """
    error: Exception | None = None
    for p in paths:
        try:
            h = read_header(p)
        except (ValueError, OSError) as exc:
            error = error or exc
            continue
        if len(set(h.shape)) == 1 and h.shape[0] > 1:
            return h
    if error is not None:
        raise error
    return read_header(paths[0])


def _expand(pattern: str | os.PathLike[str]) -> list[str]:
    p = Path(pattern)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in (".mrc", ".mrcs", ".rec"))
    else:
        files = sorted(glob.glob(str(pattern)))
    return [os.path.abspath(f) for f in files]


def from_mrc_files(
    pattern: str | os.PathLike[str],
    tilt_range: tuple[float, float] = (-60.0, 60.0),
    voxel_size: float | None = None,
    *,
    strict: bool = True,
) -> ParticleTable:
    """A table of the MRC particles in a directory or matching a glob.

    All particles share ``tilt_range``. The voxel size is ``voxel_size`` if given, else the
    first file's header; the headers of all files are checked (cheaply) for a common cubic box.
    ``strict=False``: box and voxel size come from the first file whose header reads as a
    cubic volume, and the other files are not checked here (:mod:`faml.io.validate` does,
    particle by particle).
    """
    files = _expand(pattern)
    if not files:
        raise ValueError(f"no MRC files found at {pattern}")
    first = read_header(files[0]) if strict else first_cubic_header(files)
    if len(set(first.shape)) != 1:
        raise ValueError(f"particle {files[0]} is not cubic: {first.shape}")
    for f in files[1:] if strict else ():
        h = read_header(f)
        if h.shape != first.shape:
            raise ValueError(f"particle {f} is {h.shape}, but {files[0]} is {first.shape}")
    vs = voxel_size if voxel_size else first.voxel_size
    if not vs:
        raise ValueError(f"{files[0]} has no voxel size in its header: give --voxel-size")
    n = len(files)
    return ParticleTable(
        paths=tuple(files),
        names=tuple(files),
        box=first.shape[0],
        voxel_size=float(vs),
        tilt_ranges=np.tile(np.asarray(tilt_range, dtype=np.float64), (n, 1)),
        weight_paths=(None,) * n,
    )


def with_weight_scale(table: ParticleTable) -> ParticleTable:
    """``table`` with :attr:`ParticleTable.weight_scale` set for its CTF form.

    Not premultiplied: 1 (weights already in ``[-1, 1]``). Premultiplied: the median, over
    :data:`WEIGHT_SCALE_SAMPLE` particles evenly spaced over the table, of each one's
    largest weight, so that the scaled CTF² sums reach about 1, as ``c²`` of the other forms
    do. The same table always gives the same scale (no randomness, no dependence on workers).
    """
    if not table.ctf_premultiplied:
        return replace(table, weight_scale=1.0)
    n = len(table)
    picks = np.unique(np.linspace(0, n - 1, min(n, WEIGHT_SCALE_SAMPLE)).round().astype(int))
    peaks = [float(np.max(table.wedge(int(i)))) for i in picks]
    scale = float(np.median(peaks))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(
            "the CTF-premultiplied weights of the sampled particles are all zero: "
            f"{table.weight_paths[int(picks[0])]} and others"
        )
    return replace(table, weight_scale=scale)


def with_ctf_form(table: ParticleTable, form: str = "auto") -> tuple[ParticleTable, str]:
    """``table`` in the CTF form ``form`` (:data:`CTF_FORMS`), and how that form is known.

    ``"auto"``: as read (:attr:`ParticleTable.ctf_premultiplied`). ``"multiplied"`` or
    ``"premultiplied"`` override it, with a warning where the input's
    ``rlnCtfDataAreCtfPremultiplied`` says the other form. faml's reconstructions of 2D tilt
    stacks are premultiplied whatever their images' flag: ``"multiplied"`` is refused there.

    Returns
    -------
    table, source
        The table and a few words for the run's plan: ``"rlnCtfDataAreCtfPremultiplied 1"``,
        ``"--ctf-form premultiplied"``, ...
    """
    if form not in CTF_FORMS:
        raise ValueError(f"--ctf-form {form!r}: choose one of {', '.join(CTF_FORMS)}")
    if int(table.optics.get(STACKS_KEY, 0)):
        if form == "multiplied":
            raise ValueError(
                "--ctf-form multiplied: faml's reconstructions of 2D tilt stacks are "
                f"CTF-premultiplied ({CTF_FLAG} of the optics block says how the 2D images "
                "were made)"
            )
        return replace(table, ctf_premultiplied=True), "faml's reconstruction of the 2D stacks"
    flag = table.optics.get(CTF_FLAG)
    said = None if flag is None else int(flag[0] if isinstance(flag, tuple) else flag)
    if form == "auto":
        if said is None:
            return table, f"no {CTF_FLAG}"
        return table, f"{CTF_FLAG} {int(table.ctf_premultiplied)}"
    premultiplied = form == "premultiplied"
    if said is not None and bool(said) != premultiplied:
        logger.warning(
            "--ctf-form %s overrides %s %d of the input: the weights are read as %s",
            form, CTF_FLAG, said,
            "CTF\u00b2 sums" if premultiplied else "multiplying the reference",
        )  # fmt: skip
    return replace(table, ctf_premultiplied=premultiplied), f"--ctf-form {form}"
