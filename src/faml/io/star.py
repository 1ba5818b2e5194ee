"""RELION particles STAR files: read 3D subtomogram particles, write faml's results.

Read: RELION 3.1 / 4 / 5 layouts (``data_optics`` + ``data_particles``, optionally
``data_general``) and the single-block RELION 3.0 layout. Image names are resolved relative
to the STAR file's folder first, then to the two folders above it and the current folder
(RELION writes them relative to its project folder; its STAR files sit in
``PROJECT/Type/jobNNN/``). The voxel size comes from the optics group's
``rlnImagePixelSize``, else ``rlnPixelSize`` / ``rlnDetectorPixelSize``, else the first
particle's MRC header, else the caller's ``voxel_size``. ``rlnCtfImage`` (a 3D weight per
particle) replaces the tilt range for that particle. The CTF form
(:attr:`~faml.io.particles.ParticleTable.ctf_premultiplied`) is the optics block's
``rlnCtfDataAreCtfPremultiplied`` (:func:`faml.io.relion5.ctf_form`); without it the set is
not premultiplied (RELION 3.0 sets, signed CTFs, WarpTools' 3D exports). RELION 5
``rlnTomoSubtomogramRot/Tilt/Psi`` are read as the subtomogram frame and kept. RELION 5
sets (a ``data_general`` block or ``rlnTomo*`` optics columns), their optimisation sets and
2D-stack sets are read by :mod:`faml.io.relion5` and :mod:`faml.io.tiltstacks` (2D stacks
need a cache folder for their reconstructions) and are
written back in RELION 5's layout (:func:`faml.io.relion5.write_relion5_star`).

Write: RELION 3.1+ layout with an optics block (``rlnImagePixelSize``, ``rlnImageSize``,
``rlnImageDimensionality 3``, voltage, Cs and amplitude contrast as read or RELION's
defaults) and per particle ``rlnImageName``, ``rlnAngleRot/Tilt/Psi``,
``rlnOriginX/Y/ZAngst`` (minus the displacement, Angstrom), ``rlnClassNumber``,
``rlnMaxValueProbDistribution``, plus the columns read (e.g. ``rlnTomoName``,
``rlnCtfImage``, coordinates) unchanged; ``rlnCtfDataAreCtfPremultiplied`` is the table's
CTF form.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from faml.geometry.euler import euler_to_matrix
from faml.io import relion5
from faml.io._relion import CTF_FLAG, _resolve, _resolve_all, _row_line
from faml.io.atomic import atomic_path
from faml.io.mrc import read_header
from faml.io.particles import ParticleTable, first_cubic_header
from faml.io.relion5 import is_relion5_table, pose_columns, write_relion5_star
from faml.io.tiltstacks import prepare_stacks

__all__ = ["pose_columns", "read_particles_star", "write_particles_star"]

_WRITTEN = (
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnOriginZAngst",
    "rlnClassNumber",
    "rlnMaxValueProbDistribution",
    "rlnOpticsGroup",
    "rlnRandomSubset",
)


_NUMERIC = ("rlnAngle", "rlnOrigin", "rlnCoordinate", "rlnTomoSubtomogram", "rlnOpticsGroup",
            "rlnPixelSize", "rlnDetectorPixelSize", "rlnImagePixelSize", "rlnClassNumber",
            "rlnDefocus", "rlnRandomSubset", "rlnVoltage", "rlnSphericalAberration",
            "rlnAmplitudeContrast", "rlnImageSize", "rlnCtfDataAreCtfPremultiplied")  # fmt: skip


def _check_numbers(path: Path, table: pd.DataFrame, what: str, block: str = "") -> None:
    """Raise ValueError naming the first non-number in a numeric RELION column.

    A column that appears twice in the block is an error too.
    """
    twice = sorted({str(c) for c in table.columns[table.columns.duplicated()]})
    if twice:
        where = f" data_{block}" if block else ""
        raise ValueError(f"{path}:{where} column {', '.join(twice)} appears more than once")
    for col in table.columns:
        if col == "rlnOpticsGroupName" or not str(col).startswith(_NUMERIC):
            continue
        if pd.api.types.is_numeric_dtype(table[col]):
            continue
        parsed = pd.to_numeric(table[col], errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            row = int(bad[0])
            line = _row_line(path, block, row)
            at = f" (line {line})" if line else ""
            raise ValueError(
                f"{path}: {what} {row + 1}{at}: {col} {table[col].iloc[row]!r} is not a number"
            )


def read_particles_star(
    path: str | os.PathLike[str],
    tilt_range: tuple[float, float] = (-60.0, 60.0),
    voxel_size: float | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tomograms_star: str | os.PathLike[str] | None = None,
    strict: bool = True,
) -> ParticleTable:
    """Read a RELION particles STAR file (or RELION 5 optimisation set) into a table.

    Parameters
    ----------
    path
        The STAR file.
    tilt_range
        Tilt range (degrees, about Y) of particles without an ``rlnCtfImage`` weight.
    voxel_size
        Angstrom per voxel when neither the STAR file nor the MRC headers give it.
    cache_dir
        Where 2D-stack particles (``rlnTomoSubTomosAre2DStacks 1``) are reconstructed into
        3D (:func:`faml.io.tiltstacks.prepare_stacks`); required for such sets.
    tomograms_star
        The tomograms STAR file of a 2D-stack set (default: from the optimisation set, or
        found beside the particles file).
    strict
        ``False``: a particle or weight file that is not there is kept (beside the STAR
        file) for :func:`faml.io.validate.validate_table` to report, and the box comes from
        the first particle whose header reads as a cubic volume.
    """
    path = Path(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # starfile raises a variety of parser errors
        raise ValueError(f"{path} is not a readable STAR file ({exc})") from exc
    if relion5.is_optimisation_set(blocks):
        path, tomos = relion5.read_optimisation_set(path)
        tomograms_star = tomograms_star or tomos
        blocks = starfile.read(path, always_dict=True)
    if relion5.is_stacks(blocks):
        if cache_dir is None:
            raise ValueError(
                f"{path} holds 2D tilt-stack particles: they are reconstructed into 3D first "
                "(faml run does it in its output folder; or faml.io.tiltstacks.prepare_stacks)"
            )
        return prepare_stacks(path, cache_dir, tomograms_star=tomograms_star, blocks=blocks)
    if not blocks:
        raise ValueError(f"{path} holds no data blocks (an empty STAR file?)")
    if "particles" in blocks:
        particles = blocks["particles"]
    elif len(blocks) == 1:
        particles = next(iter(blocks.values()))  # RELION 3.0: one unnamed block
    else:
        raise ValueError(f"{path} has no data_particles block (blocks: {', '.join(blocks)})")
    if not isinstance(particles, pd.DataFrame) or len(particles) == 0:
        raise ValueError(f"{path} holds no particles")
    if "rlnImageName" not in particles.columns:
        raise ValueError(f"{path} has no rlnImageName column")
    block = "particles" if "particles" in blocks else ""
    _check_numbers(path, particles, "particle", block)
    optics = blocks.get("optics")
    if isinstance(optics, pd.DataFrame):
        _check_numbers(path, optics, "optics group row", "optics")
    paths = tuple(_resolve_all(path, particles, "rlnImageName", strict, block))
    if "general" in blocks or (
        isinstance(optics, pd.DataFrame) and any(c.startswith("rlnTomo") for c in optics.columns)
    ):
        weights5: list[str | None] = [None] * len(particles)
        if "rlnCtfImage" in particles.columns:
            weights5 = _resolve_all(path, particles, "rlnCtfImage", strict, block)
        return relion5.table_from_blocks(
            path,
            {**blocks, "particles": particles},
            paths=list(paths),
            names=[str(v) for v in particles["rlnImageName"]],
            weight_paths=weights5,
            tilt_range=tilt_range,
            voxel_size=voxel_size,
        )

    optics = blocks.get("optics")
    pixel = None
    if isinstance(optics, pd.DataFrame) and "rlnImagePixelSize" in optics.columns:
        pixel = relion5.optics_pixel_size(optics, particles, optics["rlnImagePixelSize"], path)
    for col in ("rlnPixelSize", "rlnDetectorPixelSize"):
        if pixel is None and col in particles.columns:
            pixel = float(particles[col].iloc[0])
    header = read_header(paths[0]) if strict else first_cubic_header(paths)
    if len(set(header.shape)) != 1:
        raise ValueError(f"particle {paths[0]} is not cubic: {header.shape}")
    if pixel is not None and not pixel > 0:
        raise ValueError(f"{path}: the pixel size {pixel} is not positive")
    pixel = pixel or header.voxel_size or voxel_size
    if not pixel:
        raise ValueError(f"{path}: no pixel size in the STAR file or MRC header; give --voxel-size")

    n = len(particles)
    weights: tuple[str | None, ...] = (None,) * n
    if "rlnCtfImage" in particles.columns:
        weights = tuple(_resolve_all(path, particles, "rlnCtfImage", strict, block))
    tomo = tuple(str(t) for t in particles["rlnTomoName"]) if "rlnTomoName" in particles else None
    sub_cols = ["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]
    subtomo = None
    if all(c in particles.columns for c in sub_cols):
        subtomo = euler_to_matrix(particles[sub_cols].to_numpy(dtype=np.float64))
    optics_values: dict[str, object] = {}
    if isinstance(optics, pd.DataFrame) and len(optics):
        optics_values = {
            c: optics[c].iloc[0]
            for c in optics.columns
            if c
            not in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize")
        }
    extra = {
        c: tuple(particles[c].tolist())
        for c in particles.columns
        if c not in _WRITTEN and c != "rlnTomoName"
    }
    return ParticleTable(
        paths=paths,
        names=tuple(str(v) for v in particles["rlnImageName"]),
        box=header.shape[0],
        voxel_size=float(pixel),
        tilt_ranges=np.tile(np.asarray(tilt_range, dtype=np.float64), (n, 1)),
        weight_paths=weights,
        tomo_names=tomo,
        subtomo_rotations=subtomo,
        extra=extra,
        optics=optics_values,
        ctf_premultiplied=relion5.ctf_form(optics, particles, path),
    )


def write_particles_star(
    path: str | os.PathLike[str],
    table: ParticleTable,
    rotations: np.ndarray,
    shifts: np.ndarray,
    classes: np.ndarray,
    max_probability: np.ndarray,
    random_subset: np.ndarray | None = None,
    *,
    relion5_version: int = 50001,
) -> None:
    """Write faml's result for every particle as a RELION 3.1+ particles STAR file (atomic).

    Tables read from a RELION 5 set are written in RELION 5's layout instead
    (:func:`faml.io.relion5.write_relion5_star`, poses relative to the subtomogram frame,
    its ``version``: ``relion5_version``, 30001 for RELION 3.1's tools).

    Parameters
    ----------
    table
        The particles (names, voxel size, columns to carry over).
    rotations
        `(n, 3, 3)` poses in RELION's sense (reference -> particle).
    shifts
        `(n, 3)` displacements ``(x, y, z)`` in voxels (written as ``rlnOrigin*Angst`` =
        ``-shift * voxel_size``).
    classes
        `(n,)` 1-based class numbers.
    max_probability
        `(n,)` largest responsibility of each particle.
    random_subset
        Optional `(n,)` half-set (1 or 2) of each particle (``rlnRandomSubset``).
    """
    if is_relion5_table(table):
        write_relion5_star(path, table, rotations, shifts, classes, max_probability,
                           random_subset, version=relion5_version)  # fmt: skip
        return
    n = len(table)
    # RELION's ObservationModel needs voltage, Cs and amplitude contrast in every optics
    # group (relion_reconstruct stops with "trying to read image with empty file name"
    # without them): the values read are kept, else RELION's usual 300 kV, 2.7 mm, 0.1.
    columns = {
        "rlnOpticsGroup": 1,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1,
        "rlnImageDimensionality": 3,
    }
    columns.update(table.optics)
    columns.update({"rlnImagePixelSize": table.voxel_size, "rlnImageSize": table.box})
    columns[CTF_FLAG] = int(table.ctf_premultiplied)  # as read, or --ctf-form's
    optics = pd.DataFrame({k: [v] for k, v in columns.items()})
    star_dir = Path(path).resolve().parent
    cols: dict[str, object] = {"rlnImageName": written_names(table.names, table.paths, star_dir)}
    if table.tomo_names is not None:
        cols["rlnTomoName"] = list(table.tomo_names)
    cols.update(pose_columns(rotations, shifts, classes, table.voxel_size))
    cols.update(
        {
            "rlnMaxValueProbDistribution": np.asarray(max_probability, dtype=np.float64),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        }
    )
    if random_subset is not None:
        cols["rlnRandomSubset"] = np.asarray(random_subset, dtype=np.int64)
    for key, values in table.extra.items():
        if key not in cols and key != "rlnOpticsGroup":
            cols[key] = list(values)
    if "rlnCtfImage" in cols:
        cols["rlnCtfImage"] = written_names(cols["rlnCtfImage"], table.weight_paths, star_dir)
    particles = pd.DataFrame(cols)
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp, float_format="%.6f")
        # RELION 3.1+ recognises its own layout (optics groups) by this line before each
        # block; without it, it reads the file as RELION 3.0 and finds no images.
        text = tmp.read_text()
        tmp.write_text(text.replace("\ndata_", "\n# version 30001\ndata_"))


def written_names(names, files, star_dir: Path) -> list:
    """The file names a STAR file in ``star_dir`` gives, so that they lead to ``files``.

    Each name as read where it still resolves from ``star_dir`` to its file (by the readers'
    rules: the STAR file's folder, the two above it, the cwd; so names relative to a RELION
    project stay as they are), else the file's absolute path: a run's ``particles.star`` is
    then a valid input of the next run wherever the first run's input was.
    """
    out = []
    for name, file in zip(names, files, strict=True):
        if file is None or not isinstance(name, str):
            out.append(name)
            continue
        target = Path(file).resolve()
        found = Path(_resolve(name, star_dir, strict=False)).resolve()
        out.append(name if found == target else str(target))
    return out


def write_model_star(
    path: str | os.PathLike[str],
    *,
    box: int,
    voxel_size: float,
    maps: list[str],
    alpha: np.ndarray,
    curves: list[dict[str, np.ndarray]],
    resolutions: list[float],
    gold_standard: bool,
) -> None:
    """The run's model in RELION's ``model.star`` layout (as ``run_model.star``).

    Blocks: ``model_general`` (size, pixel size, classes, resolution), ``model_classes``
    (reference map, class distribution, estimated resolution at FSC 0.143) and per class
    ``model_class_K``: spectral index, resolution (1/Å and Å) and the FSC curves
    (``rlnGoldStandardFsc``: between the half maps; with a mask correction,
    ``rlnFourierShellCorrelationCorrected`` and the masked, unmasked and phase-randomised
    curves). ``gold_standard``: whether the halves were refined independently (else the
    half-map FSC is optimistic); written as a comment.
    """
    n = box // 2 + 1
    shells = np.arange(n)
    with np.errstate(divide="ignore"):
        ang = np.where(shells > 0, box * voxel_size / np.maximum(shells, 1), 999.0)
    blocks: dict[str, pd.DataFrame] = {
        "model_general": pd.DataFrame(
            {
                "rlnReferenceDimensionality": [3],
                "rlnOriginalImageSize": [box],
                "rlnCurrentImageSize": [box],
                "rlnPixelSize": [voxel_size],
                "rlnNrClasses": [len(maps)],
                "rlnCurrentResolution": [1.0 / min(resolutions)],
            }
        ),
        "model_classes": pd.DataFrame(
            {
                "rlnReferenceImage": maps,
                "rlnClassDistribution": np.asarray(alpha, dtype=np.float64),
                "rlnEstimatedResolution": np.asarray(resolutions, dtype=np.float64),
            }
        ),
    }
    names = {
        "gold": "rlnGoldStandardFsc",
        "corrected": "rlnFourierShellCorrelationCorrected",
        "masked": "rlnFourierShellCorrelationMaskedMaps",
        "unmasked": "rlnFourierShellCorrelationUnmaskedMaps",
        "random": "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
    }
    for k, curve in enumerate(curves):
        cols = {
            "rlnSpectralIndex": shells,
            "rlnResolution": shells / (box * voxel_size),
            "rlnAngstromResolution": ang,
        }
        for key, label in names.items():
            if key in curve:
                cols[label] = np.asarray(curve[key], dtype=np.float64)[:n]
        blocks[f"model_class_{k + 1}"] = pd.DataFrame(cols)
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        note = (
            "# faml: half maps refined independently (gold standard)\n"
            if gold_standard
            else "# faml: half maps aligned to the joint average: their FSC is optimistic\n"
        )
        tmp.write_text(note + tmp.read_text().replace("\ndata_", "\n# version 30001\ndata_"))
