"""RELION 5 subtomogram particle sets: optimisation sets, 2D stacks, poses, and the writer.

RELION 5 particle files have three blocks: ``data_general``
(``rlnTomoSubTomosAre2DStacks``), ``data_optics`` (per optics group ``rlnImagePixelSize`` —
the binned pixel, ``rlnTomoTiltSeriesPixelSize x rlnTomoSubtomogramBinning`` —,
``rlnImageSize``, ``rlnImageDimensionality`` 2 for 2D stacks or 3 for 3D subtomograms,
``rlnCtfDataAreCtfPremultiplied``, voltage, Cs, amplitude contrast) and ``data_particles``
(``rlnTomoName``, ``rlnTomoParticleName``, ``rlnCenteredCoordinate{X,Y,Z}Angst``,
``rlnOrigin{X,Y,Z}Angst``, ``rlnAngleRot/Tilt/Psi``, optionally
``rlnTomoSubtomogramRot/Tilt/Psi``, ``rlnImageName``, ``rlnCtfImage`` for 3D weights,
``rlnTomoVisibleFrames`` for 2D stacks). An *optimisation set* is a one-block STAR file naming
the particles (``_rlnTomoParticlesFile``) and tomograms (``_rlnTomoTomogramsFile``) files.

Poses (RELION 5 ``src/jaz/tomography/particle_set.cpp``): with ``A_sub`` the matrix of
``rlnTomoSubtomogramRot/Tilt/Psi`` and ``A`` that of ``rlnAngleRot/Tilt/Psi`` (both RELION's
``Euler_angles2matrix``, :func:`faml.geometry.euler.euler_to_matrix`), the particle's pose in
the tomogram is ``A_sub @ A`` (``getMatrix3x3``) and its position is
``coordinate - A_sub @ origin`` (``getPosition``): the origin is in the subtomogram's frame.
The 3D subtomograms (and faml's reconstructions of 2D stacks) are boxed in the subtomogram's
frame, so faml aligns them to ``A`` and writes ``A`` into ``rlnAngle*`` with the subtomogram
angles kept (``frame="subtomogram"``, what ``relion_refine`` reads with the same images);
``frame="tomogram"`` writes the composed pose ``A_sub @ A`` and origin ``A_sub @ origin``
with zero subtomogram angles (for re-extraction or tools that ignore the subtomogram angles).

2D tilt stacks (``rlnTomoSubTomosAre2DStacks 1``): faml reconstructs them in the z-mirrored
box frame that the real data require (:mod:`faml.io.tiltstacks`, "Handedness"), in which the
pose of a particle is ``F A F`` and its displacement ``F d`` (``F = diag(1, 1, -1)``):
:func:`star_poses` and the writer convert (:func:`stack_frame`, its own inverse), so the
files keep RELION's ``rlnAngle*``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from faml.geometry.euler import (
    euler_to_matrix,
    matrix_to_euler,
    origin_angst_to_shift,
    shift_to_origin_angst,
)
from faml.io._relion import CTF_FLAG, STACKS_KEY, _resolve
from faml.io.atomic import atomic_path
from faml.io.mrc import read_header
from faml.io.particles import ParticleTable

__all__ = [
    "CTF_FLAG",
    "STACKS_KEY",
    "ctf_form",
    "find_tomograms_star",
    "is_relion5_table",
    "optics_pixel_size",
    "pose_columns",
    "read_optimisation_set",
    "relion5_blocks",
    "stack_frame",
    "star_poses",
    "star_classes",
    "star_priors",
    "table_from_blocks",
    "write_relion5_star",
]

_SUB = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
_OWN = (
    "rlnImageName",
    *_ANGLES,
    *_ORIGINS,
    "rlnClassNumber",
    "rlnMaxValueProbDistribution",
    "rlnRandomSubset",
    "rlnTomoName",
)


def read_optimisation_set(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The particles and tomograms files an optimisation set names (resolved), or raise."""
    path = Path(path)
    blocks = starfile.read(path, always_dict=True)
    for block in blocks.values():
        if isinstance(block, dict) and "rlnTomoParticlesFile" in block:
            base = path.resolve().parent

            def resolve(name: str, base: Path = base) -> Path:
                p = Path(name)
                if p.is_absolute():
                    return p
                return base / p if (base / p).exists() else Path.cwd() / p

            tomo = block.get("rlnTomoTomogramsFile")
            return resolve(str(block["rlnTomoParticlesFile"])), (
                resolve(str(tomo)) if tomo else None
            )
    raise ValueError(f"{path} is not a RELION optimisation set (no rlnTomoParticlesFile)")


def is_optimisation_set(blocks: dict) -> bool:
    """Whether STAR blocks (``starfile.read(..., always_dict=True)``) are an optimisation set."""
    return any(isinstance(b, dict) and "rlnTomoParticlesFile" in b for b in blocks.values())


def is_stacks(blocks: dict) -> bool:
    """Whether a particles STAR file's ``data_general`` says its particles are 2D stacks."""
    general = blocks.get("general")
    if isinstance(general, dict):
        return bool(int(general.get(STACKS_KEY, 0)))
    if isinstance(general, pd.DataFrame) and STACKS_KEY in general:
        return bool(int(general[STACKS_KEY].iloc[0]))
    return False


def find_tomograms_star(particles_star: str | os.PathLike[str]) -> Path:
    """The tomograms STAR file of a particles STAR file, from its folder.

    The optimisation set there that names this particles file, else the only
    ``*tomograms.star`` there; otherwise a ``ValueError`` asks for it explicitly.
    """
    particles_star = Path(particles_star).resolve()
    folder = particles_star.parent
    for candidate in sorted(folder.glob("*.star")):
        try:
            parts, tomos = read_optimisation_set(candidate)
        except Exception:  # not an optimisation set
            continue
        if tomos is not None and parts.resolve() == particles_star:
            return tomos
    found = sorted(folder.glob("*tomograms.star"))
    if len(found) == 1:
        return found[0]
    raise ValueError(
        f"cannot tell the tomograms STAR file of {particles_star}: give it (--tomograms) or "
        "give the optimisation set instead"
    )


def _optics_values(optics: pd.DataFrame | None, groups: list[int]) -> dict[str, object]:
    """Optics columns: one value each for one group, else a tuple per group (sorted)."""
    if not isinstance(optics, pd.DataFrame) or len(optics) == 0:
        return {}
    if "rlnOpticsGroup" in optics.columns and len(optics) > 1:
        rows = optics[optics["rlnOpticsGroup"].isin(groups)].sort_values("rlnOpticsGroup")
        return {c: tuple(rows[c].tolist()) for c in rows.columns}
    return {c: optics[c].iloc[0] for c in optics.columns if c != "rlnOpticsGroup"}


def _pixel_size(optics: pd.DataFrame | None, particles: pd.DataFrame, where: Path) -> float | None:
    if not isinstance(optics, pd.DataFrame):
        return None
    if "rlnImagePixelSize" in optics.columns:
        sizes = optics["rlnImagePixelSize"].astype(float)
    elif {"rlnTomoTiltSeriesPixelSize", "rlnTomoSubtomogramBinning"} <= set(optics.columns):
        sizes = optics["rlnTomoTiltSeriesPixelSize"] * optics["rlnTomoSubtomogramBinning"]
    else:
        return None
    return optics_pixel_size(optics, particles, [round(float(v), 6) for v in sizes], where)


def _used_values(optics: pd.DataFrame, particles: pd.DataFrame, values, where) -> dict:
    """``{optics group: value}`` of the groups the particles use (``values``: one per row).

    Without ``rlnOpticsGroup`` in both blocks every row counts (keyed by its row number).
    A particle's group that is not in ``optics`` raises ``ValueError``.
    """
    if "rlnOpticsGroup" in optics.columns and "rlnOpticsGroup" in particles.columns:
        by_group = dict(zip(optics["rlnOpticsGroup"], values, strict=True))
        unknown = [g for g in particles["rlnOpticsGroup"] if g not in by_group]
        if unknown:
            raise ValueError(
                f"{where}: rlnOpticsGroup {unknown[0]!r} of a particle is not in data_optics "
                f"(groups: {', '.join(str(g) for g in by_group)})"
            )
        return {g: by_group[g] for g in sorted(set(particles["rlnOpticsGroup"]))}
    return {i + 1: v for i, v in enumerate(values)}


def ctf_form(
    optics: pd.DataFrame | None, particles: pd.DataFrame, where: str | os.PathLike[str]
) -> bool:
    """The CTF form of a 3D particle set: ``rlnCtfDataAreCtfPremultiplied`` of its optics.

    ``False`` (RELION's default) when the optics block or the column is absent: RELION 3.0
    sets, WarpTools' 3D exports (3D CTF volumes) and RELION 3.0 signed-CTF sets are not
    premultiplied. Only the groups the particles use count.

    Raises
    ------
    ValueError
        When the particles' optics groups differ in the flag: faml takes one CTF form per
        data set.
    """
    if not isinstance(optics, pd.DataFrame) or CTF_FLAG not in optics.columns or not len(optics):
        return False
    flags = [bool(int(float(v))) for v in optics[CTF_FLAG]]
    used = _used_values(optics, particles, flags, where)
    if len(set(used.values())) > 1:
        first = {v: g for g, v in reversed(list(used.items()))}
        a, b = sorted(first.values())
        raise ValueError(
            f"{where}: optics group {a} has {CTF_FLAG} {int(used[a])}, group {b} "
            f"{int(used[b])}: faml takes one CTF form per data set; run the premultiplied "
            "particles and the others separately"
        )
    return next(iter(used.values()))


def optics_pixel_size(
    optics: pd.DataFrame, particles: pd.DataFrame, sizes, where: str | os.PathLike[str]
) -> float | None:
    """The one pixel size of the particles, from ``sizes`` (one per row of ``optics``).

    With ``rlnOpticsGroup`` in both blocks only the particles' groups count. ``None`` when
    ``optics`` has no rows.

    Raises
    ------
    ValueError
        A particle's group that is not in ``optics``, pixel sizes that differ between the
        particles, or a pixel size that is not positive.
    """
    used = {float(v) for v in _used_values(optics, particles, sizes, where).values()}
    if len(used) > 1:
        raise ValueError(f"{where}: particles have different pixel sizes {sorted(used)}")
    pixel = used.pop() if used else None
    if pixel is not None and not pixel > 0:
        raise ValueError(f"{where}: the pixel size {pixel} is not positive")
    return pixel


def table_from_blocks(
    star: str | os.PathLike[str],
    blocks: dict,
    *,
    paths: list[str],
    names: list[str],
    weight_paths: list[str | None],
    tilt_range: tuple[float, float] = (-60.0, 60.0),
    voxel_size: float | None = None,
    ctf_premultiplied: bool | None = None,
) -> ParticleTable:
    """A :class:`ParticleTable` of a RELION 5 particle set whose volumes are ``paths``.

    Keeps what the RELION 5 writer needs to write the set back: ``data_general``'s
    ``rlnTomoSubTomosAre2DStacks`` and every optics group (``table.optics``: one value per
    column, or a tuple per group when there are several), each particle's optics group and
    other columns (``table.extra``), ``rlnTomoName`` and the subtomogram angles.
    ``ctf_premultiplied``: the volumes' CTF form; ``None`` reads it from the optics block
    (:func:`ctf_form`; a 2D-stack set's flag describes its images, not faml's
    reconstructions of them).
    """
    star = Path(star)
    particles = blocks["particles"]
    optics = blocks.get("optics")
    header = read_header(paths[0])
    if len(set(header.shape)) != 1:
        raise ValueError(f"particle {paths[0]} is not cubic: {header.shape}")
    pixel = _pixel_size(optics, particles, star) or header.voxel_size or voxel_size
    if not pixel:
        raise ValueError(f"{star}: no pixel size in the STAR file or MRC header; give --voxel-size")
    if "rlnOpticsGroup" in particles.columns and particles["rlnOpticsGroup"].isna().any():
        row = int(np.flatnonzero(particles["rlnOpticsGroup"].isna().to_numpy())[0])
        raise ValueError(f"{star}: particle {row + 1} has no rlnOpticsGroup (a short row?)")
    groups = (
        sorted({int(g) for g in particles["rlnOpticsGroup"]})
        if "rlnOpticsGroup" in particles.columns
        else [1]
    )
    if ctf_premultiplied is None:
        ctf_premultiplied = ctf_form(optics, particles, star)
    optics_values = _optics_values(optics, groups)
    optics_values[STACKS_KEY] = int(is_stacks(blocks))
    n = len(particles)
    subtomo = None
    if all(c in particles.columns for c in _SUB):
        subtomo = euler_to_matrix(particles[list(_SUB)].to_numpy(dtype=np.float64))
    extra = {c: tuple(particles[c].tolist()) for c in particles.columns if c not in _OWN}
    return ParticleTable(
        paths=tuple(paths),
        names=tuple(names),
        box=header.shape[0],
        voxel_size=float(pixel),
        tilt_ranges=np.tile(np.asarray(tilt_range, dtype=np.float64), (n, 1)),
        weight_paths=tuple(weight_paths),
        tomo_names=(
            tuple(str(t) for t in particles["rlnTomoName"]) if "rlnTomoName" in particles else None
        ),
        subtomo_rotations=subtomo,
        extra=extra,
        optics=optics_values,
        ctf_premultiplied=ctf_premultiplied,
    )


def is_relion5_table(table: ParticleTable) -> bool:
    """Whether a table came from a RELION 5 set (written back in RELION 5's layout)."""
    return STACKS_KEY in table.optics


def stack_frame(rotations: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses of 2D-stack particles between RELION's frame and faml's mirrored box frame.

    ``(F R F, F d)`` with ``F = diag(1, 1, -1)``: `(n, 3, 3)` rotations and `(n, 3)`
    displacements (voxels, ``(x, y, z)``); its own inverse (:mod:`faml.io.tiltstacks`,
    "Handedness"). In Euler angles ``(rot, tilt, psi) -> (rot, -tilt, psi)``.
    """
    f = np.array([1.0, 1.0, -1.0])
    rotations = np.asarray(rotations, dtype=np.float64) * f[:, None] * f[None, :]
    return rotations, np.asarray(shifts, dtype=np.float64) * f


def star_poses(
    path: str | os.PathLike[str], *, composed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The poses a RELION (3.1 / 4 / 5) particles STAR file gives its particles.

    Returns `(n, 3, 3)` rotations (RELION's sense, reference -> particle) and `(n, 3)`
    displacements in voxels ``(x, y, z)`` (minus the origin over the pixel size): relative to
    the subtomogram's frame, or with ``composed`` in the tomogram's (``A_sub @ A`` and
    ``A_sub @ d``). Missing angles or origins read as 0. An optimisation set is followed to
    its particles file. The poses of a 2D-stack set are returned in faml's mirrored box frame
    (:func:`stack_frame`), the frame of the subtomograms :mod:`faml.io.tiltstacks` makes.
    """
    return _poses(*_particle_blocks(path), composed=composed)


def _particle_blocks(path: str | os.PathLike[str]):
    """``(path, blocks, particles)`` of a particles STAR file.

    An optimisation set is followed to its particles file (``path`` is then that file).
    """
    path = Path(path)
    blocks = starfile.read(path, always_dict=True)
    if is_optimisation_set(blocks):
        path = read_optimisation_set(path)[0]
        blocks = starfile.read(path, always_dict=True)
    return path, blocks, blocks.get("particles", next(iter(blocks.values())))


def _poses(path: Path, blocks: dict, particles, *, composed: bool = False):
    """:func:`star_poses` of a file already read (:func:`_particle_blocks`)."""
    n = len(particles)
    angles = np.zeros((n, 3))
    for j, c in enumerate(_ANGLES):
        if c in particles.columns:
            angles[:, j] = particles[c].to_numpy(dtype=np.float64)
    origins = np.zeros((n, 3))
    for j, c in enumerate(_ORIGINS):
        if c in particles.columns:
            origins[:, j] = particles[c].to_numpy(dtype=np.float64)
    pixel = _pixel_size(blocks.get("optics"), particles, path)
    if pixel is None and "rlnImageName" in particles.columns:
        pixel = read_header(
            _resolve(str(particles["rlnImageName"].iloc[0]), path.parent)
        ).voxel_size
    if not pixel:
        raise ValueError(f"{path}: no pixel size to convert the origins")
    rotations = euler_to_matrix(angles)
    shifts = origin_angst_to_shift(origins, pixel)
    if composed and all(c in particles.columns for c in _SUB):
        sub = euler_to_matrix(particles[list(_SUB)].to_numpy(dtype=np.float64))
        rotations = sub @ rotations
        shifts = np.einsum("nij,nj->ni", sub, shifts)
    if is_stacks(blocks):
        rotations, shifts = stack_frame(rotations, shifts)
    return rotations, shifts


def star_priors(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A particles STAR file's poses as priors of a local search, or ``None`` without angles.

    :func:`star_poses` (relative to the subtomogram's frame, as faml works) when the file's
    particles have ``rlnAngleRot/Tilt/Psi``; ``None`` when they have none of them.
    """
    path, blocks, particles = _particle_blocks(path)
    if not any(c in particles.columns for c in _ANGLES):
        return None
    return _poses(path, blocks, particles)


def star_classes(path: str | os.PathLike[str]) -> np.ndarray | None:
    """A particles STAR file's ``rlnClassNumber`` per particle (1-based), or ``None``."""
    particles = _particle_blocks(path)[2]
    if "rlnClassNumber" not in particles.columns:
        return None
    return particles["rlnClassNumber"].to_numpy(dtype=np.int64)


def pose_columns(
    rotations: np.ndarray, shifts: np.ndarray, classes: np.ndarray, voxel_size: float
) -> dict[str, np.ndarray]:
    """RELION's pose and class columns of a set of particles.

    `(n, 3, 3)` rotations, `(n, 3)` shifts (voxels, ``(x, y, z)``) and `(n,)` 1-based
    classes become ``rlnAngleRot/Tilt/Psi``, ``rlnOrigin{X,Y,Z}Angst`` (``-shift *
    voxel_size``) and ``rlnClassNumber``.
    """
    n = len(classes)
    angles = matrix_to_euler(np.asarray(rotations).reshape(n, 3, 3))
    origins = shift_to_origin_angst(np.asarray(shifts).reshape(n, 3), voxel_size)
    return {
        "rlnAngleRot": angles[:, 0],
        "rlnAngleTilt": angles[:, 1],
        "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": origins[:, 0],
        "rlnOriginYAngst": origins[:, 1],
        "rlnOriginZAngst": origins[:, 2],
        "rlnClassNumber": np.asarray(classes, dtype=np.int64),
    }


def relion5_blocks(
    table: ParticleTable,
    rotations: np.ndarray,
    shifts: np.ndarray,
    classes: np.ndarray,
    max_probability: np.ndarray | None = None,
    random_subset: np.ndarray | None = None,
    *,
    frame: str = "subtomogram",
) -> dict[str, object]:
    """The ``general``, ``optics`` and ``particles`` blocks of a RELION 5 particle set.

    Parameters as :func:`write_relion5_star`. Reusable by exporters (e.g. an initial-model
    export for ``relion_refine --ref``): ``starfile.write`` the result.
    """
    if frame not in ("subtomogram", "tomogram"):
        raise ValueError(f"frame must be 'subtomogram' or 'tomogram', got {frame!r}")
    n = len(table)
    rotations = np.asarray(rotations, dtype=np.float64).reshape(n, 3, 3)
    shifts = np.asarray(shifts, dtype=np.float64).reshape(n, 3)
    extra = dict(table.extra)
    if int(table.optics.get(STACKS_KEY, 0)):
        rotations, shifts = stack_frame(rotations, shifts)  # back to RELION's frame
    if frame == "tomogram" and table.subtomo_rotations is not None:
        sub = np.asarray(table.subtomo_rotations)
        rotations = sub @ rotations
        shifts = np.einsum("nij,nj->ni", sub, shifts)
        for c in _SUB:
            extra[c] = (0.0,) * n
    optics_values = dict(table.optics)
    stacks = int(optics_values.pop(STACKS_KEY, 0))
    multi = [k for k, v in optics_values.items() if isinstance(v, tuple)]
    rows = len(optics_values[multi[0]]) if multi else 1
    defaults: dict[str, object] = {
        "rlnOpticsGroup": tuple(range(1, rows + 1)),
        "rlnOpticsGroupName": tuple(f"opticsGroup{i}" for i in range(1, rows + 1)),
        "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1,
        "rlnImageDimensionality": 2 if stacks else 3,
        "rlnImagePixelSize": table.voxel_size,
        "rlnImageSize": table.box,
        "rlnTomoSubtomogramBinning": 1.0,
    }
    values = {**defaults, **optics_values}
    if stacks:  # the 2D images' form as read (faml's reconstruction took 1 when absent)
        values.setdefault(CTF_FLAG, 1)
    else:  # the form faml read, or --ctf-form's
        values[CTF_FLAG] = int(table.ctf_premultiplied)
    if "rlnTomoTiltSeriesPixelSize" not in values:
        binning = values["rlnTomoSubtomogramBinning"]
        values["rlnTomoTiltSeriesPixelSize"] = (
            tuple(table.voxel_size / float(b) for b in binning)
            if isinstance(binning, tuple)
            else table.voxel_size / float(binning)
        )
    optics = pd.DataFrame(
        {k: list(v) if isinstance(v, tuple) else [v] * rows for k, v in values.items()}
    )
    cols: dict[str, object] = {}
    if table.tomo_names is not None:
        cols["rlnTomoName"] = list(table.tomo_names)
    cols["rlnImageName"] = list(table.names)
    cols.update(pose_columns(rotations, shifts, classes, table.voxel_size))
    if max_probability is not None:
        cols["rlnMaxValueProbDistribution"] = np.asarray(max_probability, dtype=np.float64)
    if random_subset is not None:
        cols["rlnRandomSubset"] = np.asarray(random_subset, dtype=np.int64)
    if "rlnOpticsGroup" not in extra:
        cols["rlnOpticsGroup"] = np.ones(n, dtype=np.int64)
    if not stacks and "rlnCtfImage" not in extra and any(w is not None for w in table.weight_paths):
        cols["rlnCtfImage"] = [w if w is not None else "" for w in table.weight_paths]
    for key, v in extra.items():
        if key not in cols:
            cols[key] = list(v)
    return {
        "general": {STACKS_KEY: stacks},
        "optics": optics,
        "particles": pd.DataFrame(cols),
    }


def write_relion5_star(
    path: str | os.PathLike[str],
    table: ParticleTable,
    rotations: np.ndarray,
    shifts: np.ndarray,
    classes: np.ndarray,
    max_probability: np.ndarray | None = None,
    random_subset: np.ndarray | None = None,
    *,
    frame: str = "subtomogram",
    version: int = 50001,
) -> None:
    """Write faml's result as a RELION 5 particle set (atomic).

    Parameters
    ----------
    table
        The particles (from a RELION 5 set, or any table: defaults fill the optics).
    rotations, shifts, classes, max_probability, random_subset
        As :func:`faml.io.star.write_particles_star`: `(n, 3, 3)` poses relative to the
        particle's box, `(n, 3)` displacements (voxels, ``(x, y, z)``), `(n,)` 1-based
        classes, largest responsibilities, half-sets.
    frame
        ``"subtomogram"``: ``rlnAngle*`` relative to the subtomogram frame, subtomogram angles
        kept (RELION 5's reading of the same images); ``"tomogram"``: composed pose, zero
        subtomogram angles (module docstring).
    version
        The ``# version`` line before each block (50001: RELION 5; 30001 lets RELION 3.1's
        tools, e.g. Debian's ``relion_reconstruct``, read a set of 3D subtomograms).
    """
    blocks = relion5_blocks(
        table, rotations, shifts, classes, max_probability, random_subset, frame=frame
    )
    if version < 50001:
        blocks.pop("general")
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        text = tmp.read_text()
        if not text.startswith("\n"):
            text = "\n" + text
        tmp.write_text(text.replace("\ndata_", f"\n# version {version}\ndata_"))
