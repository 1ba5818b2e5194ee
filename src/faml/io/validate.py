"""Input checks of a run, before any work: every particle, weight and the mask.

:func:`validate_table` checks, per particle: the file exists and is readable, its MRC header
is valid, the data are float (mode 2 float32 or mode 12 float16: integer and complex modes
are refused), 3D, cubic, of the data set's box and voxel size (1e-3 A), and the file is as
long as its header says (not truncated); its weight volume (``rlnCtfImage``), when it has
one, has the full-cube `(N, N, N)` or half `(N, N, N//2+1)` shape, finite values in the
range of the set's CTF form (``[-1, 1]`` not premultiplied, ``>= 0`` premultiplied:
:func:`faml.geometry.wedge.weight_from_volume`) and is not all zero; else its tilt range
satisfies -90 < min < max < 90. When every weight breaks its form's range, or every weight
of a premultiplied set is zero, that is one line for the set (the flag is the likelier
mistake than every file), not one per particle. What the weights hold (their range, whether
binary) is kept for the run's plan (:class:`WeightSummary`). With
``check_data`` every particle is read once, one at a time (memory stays flat), for NaN / Inf
voxels and constant volumes. Globally: ``classes`` is at most the number of good particles,
and the mask (a file or an array) has the box's shape, values in [0, 1] and is not empty.

Nothing raises for a bad input: the problems are collected in a :class:`ValidationReport`
(the caller stops, or drops the bad particles: :meth:`ValidationReport.good_indices`).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import mrcfile
import numpy as np

from faml.geometry.masks import reference_mask
from faml.geometry.wedge import weight_from_volume
from faml.io.mrc import read_volume

__all__ = ["ParticleProblem", "ValidationReport", "WeightSummary", "validate_table"]

_VOXEL_TOLERANCE = 1e-3  # Angstrom
_FLOAT_MODES = {2: "float32", 12: "float16"}
_MODE_NAMES = {0: "int8", 1: "int16", 3: "complex int16", 4: "complex64", 6: "uint16",
               101: "4-bit"}  # fmt: skip


@dataclass(frozen=True)
class ParticleProblem:
    """What is wrong with one particle: ``index`` (0-based, in the table), its file, why."""

    index: int
    path: str
    reason: str

    def line(self) -> str:
        """``particle 3 (/data/p003.mrc): not cubic: ...`` (1-based, as in the STAR file)."""
        return f"particle {self.index + 1} ({self.path}): {self.reason}"


@dataclass
class WeightSummary:
    """What the readable weight files (``rlnCtfImage``) of a set hold, as the checks read them.

    ``files``: how many were read; ``low``, ``high``: the smallest and largest value of any;
    ``binary``: every value of every one is 0 or 1.
    """

    files: int = 0
    low: float = np.inf
    high: float = -np.inf
    binary: bool = True

    def add(self, low: float, high: float, binary: bool) -> None:
        """Count one more weight file."""
        self.files += 1
        self.low, self.high = min(self.low, low), max(self.high, high)
        self.binary = self.binary and binary

    def kind(self) -> str | None:
        """``"signed"`` (values below 0), ``"binary"`` (0 and 1 only), ``"abs"``, or ``None``."""
        if not self.files:
            return None
        if self.low < 0:
            return "signed"
        return "binary" if self.binary else "abs"


@dataclass
class ValidationReport:
    """The problems found: per particle, and global (not tied to one particle)."""

    n: int
    particles: list[ParticleProblem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds_headers: float = 0.0
    seconds_data: float = 0.0
    weights: WeightSummary = field(default_factory=WeightSummary)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.particles and not self.problems

    def bad_indices(self) -> list[int]:
        """0-based indices of the particles with a problem (each once, in order)."""
        return sorted({p.index for p in self.particles})

    def good_indices(self) -> np.ndarray:
        """0-based indices of the particles without a problem."""
        bad = set(self.bad_indices())
        return np.array([i for i in range(self.n) if i not in bad], dtype=np.int64)

    def lines(self) -> list[str]:
        """One line per problem: the global ones first, then per particle."""
        return list(self.problems) + [p.line() for p in self.particles]


def _header_problem(path: str, box: int | None, voxel_size: float | None, what: str):
    """``(problem or None, shape (z, y, x) or None)`` of an MRC file, from its header only."""
    if not os.path.exists(path):
        return "no such file", None
    if os.path.isdir(path):
        return "is a folder, not an MRC file", None
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)", None
    size = os.path.getsize(path)
    if size < 1024:
        return f"not an MRC file ({size} bytes, shorter than an MRC header)", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, header_only=True, permissive=True) as m:
                h = m.header
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
                mode, nsymbt = int(h.mode), int(h.nsymbt)
                voxel = float(m.voxel_size.x)
                map_id = bytes(h.map)
    except (ValueError, OSError) as exc:
        return f"not an MRC file ({exc})", None
    if map_id != b"MAP ":
        return "not an MRC file (no 'MAP ' tag in its header)", None
    if mode not in _FLOAT_MODES:
        name = _MODE_NAMES.get(mode, "unknown")
        return f"mode {mode} ({name}) data: {what}s must be float (MRC mode 2 or 12)", None
    if min(nx, ny, nz) < 1:
        return f"empty header dimensions {nx} x {ny} x {nz}", None
    itemsize = 4 if mode == 2 else 2
    expected = 1024 + nsymbt + nx * ny * nz * itemsize
    if size < expected:
        return f"truncated: {size} bytes, its header says {expected}", None
    shape = (nz, ny, nx)
    if box is None:  # the mask / weight callers check the shape themselves
        return None, shape
    if nz == 1:
        return f"a 2D image ({nx} x {ny}), not a 3D volume", shape
    if not nx == ny == nz:
        return f"not cubic: {nx} x {ny} x {nz} voxels (x, y, z)", shape
    if nx != box:
        return f"box {nx}, the data set's box is {box}", shape
    if voxel_size and voxel > 0 and abs(voxel - voxel_size) > _VOXEL_TOLERANCE:
        return f"voxel size {voxel:.4g} A, the data set's is {voxel_size:.4g} A", shape
    return None, shape


@dataclass(frozen=True)
class _Weight:
    """One weight file as read: the problem (or ``None``) and, when it was read, its values.

    ``form``: the problem is its values' range for the set's CTF form; ``zero``: all zero.
    """

    problem: str | None
    low: float = 0.0
    high: float = 0.0
    binary: bool = False
    read: bool = False
    form: bool = False
    zero: bool = False


def _weight_problem(path: str, box: int, premultiplied: bool) -> _Weight:
    problem, shape = _header_problem(path, None, None, "weight")
    if problem:
        return _Weight(f"weight {path}: {problem}")
    full, half = (box,) * 3, (box, box, box // 2 + 1)
    if shape not in (full, half):
        z, y, x = shape
        return _Weight(
            f"weight {path} is {x} x {y} x {z} (x, y, z); for box {box} it must be the full "
            f"cube {box} x {box} x {box} or the half volume {box // 2 + 1} x {box} x {box}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, permissive=True) as m:
                data = np.array(m.data, dtype=np.float32)
    except (ValueError, OSError) as exc:
        return _Weight(f"weight {path}: {exc}")
    finite = bool(np.all(np.isfinite(data)))
    values = {}
    if finite:
        binary = bool(np.all((data == 0) | (data == 1)))
        values = dict(low=float(data.min()), high=float(data.max()), binary=binary, read=True)
    try:
        w = weight_from_volume(data, box, premultiplied)
    except ValueError as exc:  # the shape is right: non-finite, or out of the form's range
        return _Weight(f"weight {path}: {exc}", **values, form=finite)
    if not np.any(w != 0):
        return _Weight(f"weight {path} is all zero", **values, zero=True)
    return _Weight(None, **values)


def _set_problem(weights: dict[int, _Weight], premultiplied: bool) -> str | None:
    """One line for the whole set, or ``None``.

    When every weight breaks the form's range, or (premultiplied) every weight is zero.
    ``weights``: those of the particles whose weight file was read, by particle.
    """
    n = len(weights)
    if not n:
        return None
    low = min(w.low for w in weights.values())
    high = max(w.high for w in weights.values())
    all_ = "the one particle" if n == 1 else f"all {n} particles"
    if premultiplied and all(w.zero for w in weights.values()):
        return (
            f"the CTF\u00b2 sums (rlnCtfImage) of {all_} of this CTF-premultiplied set are zero "
            "everywhere: they measure no frequency"
        )
    if n < 2 or not all(w.form for w in weights.values()):
        return None
    if premultiplied:
        return (
            f"the weights (rlnCtfImage) of {all_} go down to {low:.4g}, but CTF-premultiplied "
            "data carry CTF\u00b2 sums (>= 0): a signed CTF belongs to data that are not "
            "premultiplied (rlnCtfDataAreCtfPremultiplied 0 in the optics block, or --ctf-form "
            "multiplied)"
        )
    return (
        f"the weights (rlnCtfImage) of {all_} lie outside [-1, 1] (min {low:.4g}, max "
        f"{high:.4g}), the range of data that are not CTF-premultiplied: CTF\u00b2 sums (RELION "
        "4/5 pseudo-subtomograms) need rlnCtfDataAreCtfPremultiplied 1 in the optics block, or "
        "--ctf-form premultiplied"
    )


def _data_problem(path: str) -> str | None:
    try:
        vol, _ = read_volume(path)
    except (ValueError, OSError) as exc:
        return f"unreadable data ({exc})"
    bad = int(np.count_nonzero(~np.isfinite(vol)))
    if bad:
        return f"{bad} NaN/Inf voxel{'s' if bad > 1 else ''}"
    lo, hi = float(vol.min()), float(vol.max())
    if lo == hi:
        return f"constant: every voxel is {lo:g}"
    return None


def _mask_problem(mask, box: int) -> str | None:
    name = "the mask"
    if isinstance(mask, (str, os.PathLike)):
        name = f"mask {mask}"
        problem, shape = _header_problem(str(mask), None, None, "mask")
        if problem:
            return f"{name}: {problem}"
        if shape != (box,) * 3:
            z, y, x = shape
            return f"{name} is {x} x {y} x {z} voxels, the particles are {box} x {box} x {box}"
        mask = read_volume(mask)[0]
    try:
        reference_mask(box, 1.0, mask=np.asarray(mask))
    except ValueError as exc:
        return f"{name}: {exc}"
    return None


def validate_table(table, *, classes: int = 1, mask=None, check_data: bool = True):
    """Check a :class:`~faml.io.particles.ParticleTable` before a run (see the module).

    Parameters
    ----------
    table
        The particles.
    classes
        ``K`` of the run (at most the number of good particles).
    mask
        The reference mask: an MRC path, an `(N, N, N)` array, or ``None``.
    check_data
        Also read every particle once for NaN / Inf and constant volumes (one read of the
        data set; the header checks alone read 1 KB per file).

    Returns
    -------
    ValidationReport
    """
    box, voxel = table.box, table.voxel_size
    report = ValidationReport(len(table))
    t0 = time.perf_counter()
    header_ok = []
    premultiplied = bool(getattr(table, "ctf_premultiplied", False))
    weights_seen: dict[str, _Weight] = {}
    weights_read: dict[int, _Weight] = {}
    ranges = np.asarray(table.tilt_ranges, dtype=np.float64)
    no_weight = [i for i, w in enumerate(table.weight_paths) if w is None]
    common_range = None
    if no_weight and all(np.array_equal(ranges[i], ranges[no_weight[0]]) for i in no_weight):
        common_range = ranges[no_weight[0]]
        lo, hi = common_range
        if not -90.0 < lo < hi < 90.0:
            report.problems.append(
                f"tilt range {lo:g} {hi:g}: it must satisfy -90 < min < max < 90 degrees"
            )
    for i, path in enumerate(table.paths):
        problem, _ = _header_problem(path, box, voxel, "particle")
        wp = table.weight_paths[i]
        if problem is None and wp is not None:
            if wp not in weights_seen:
                weights_seen[wp] = _weight_problem(wp, box, premultiplied)
            problem = weights_seen[wp].problem
            if weights_seen[wp].read:
                weights_read[i] = weights_seen[wp]
        if problem is None and wp is None and common_range is None:
            lo, hi = ranges[i]
            if not -90.0 < lo < hi < 90.0:
                problem = f"tilt range {lo:g} {hi:g}: it must satisfy -90 < min < max < 90"
        if problem:
            report.particles.append(_problem(i, path, problem))
        else:
            header_ok.append(i)
    report.seconds_headers = time.perf_counter() - t0
    for w in weights_seen.values():
        if w.read and w.problem is None:
            report.weights.add(w.low, w.high, w.binary)
    whole_set = _set_problem(weights_read, premultiplied)
    if whole_set:
        report.problems.append(whole_set)
        report.particles = [p for p in report.particles if p.index not in weights_read]
        header_ok = [i for i in header_ok if i not in weights_read]
    if check_data:
        t0 = time.perf_counter()
        for i in header_ok:
            problem = _data_problem(table.paths[i])
            if problem:
                report.particles.append(_problem(i, table.paths[i], problem))
        report.particles.sort(key=lambda p: p.index)
        report.seconds_data = time.perf_counter() - t0
    good = report.n - len(report.bad_indices())
    if classes > good:
        of = f"the {good} particles" if good == report.n else f"the {good} good particles"
        report.problems.append(f"--classes {classes} is more than {of}")
    if mask is not None:
        problem = _mask_problem(mask, box)
        if problem:
            report.problems.append(problem)
    return report


def _problem(index: int, path: str, reason: str) -> ParticleProblem:
    return ParticleProblem(index, path, reason)
