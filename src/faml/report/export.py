"""A finished run as the starting point of a RELION refinement (``faml export --to relion``).

The paper's conclusion proposes FAML's averages as initial models for refinement. For each
class this writes:

- ``class_KKK_lp.mrc``: the final map (FSC-filtered, masked) low-passed to the class's
  half-set FSC 0.143 resolution (or the user's), with a raised-cosine edge of
  ``edge_shells`` Fourier shells; float32, voxel size in the header, origin and start
  indices 0 (RELION reads the pixel size from the header and centres maps on ``N // 2``,
  as faml does);
- ``particles.star`` (RELION 3.1+, optics block; poses, ``rlnOrigin*Angst``,
  ``rlnClassNumber``, ``rlnRandomSubset``; image and weight names absolute, so RELION can
  run from any project folder; ``rlnCtfDataAreCtfPremultiplied`` the set's CTF form) and,
  with K > 1, ``class_KKK_particles.star`` per class;
- ``relion_refine.txt``: the commands to run; for a CTF-premultiplied set, which RELION
  versions read its CTF² sums as they are (4 and 5) and what RELION 3.1 needs instead
  (``sqrt(C)`` as ``rlnCtfImage``: 3.1 squares a premultiplied 3D CTF image, measured with
  ``relion_reconstruct`` 3.1 in ``benchmarks/relion31_premultiplied.py``); with
  ``relion_version="3.1"`` the export is for RELION 3.1: those ``sqrt(C)`` in ``ctf_sqrt/``
  and a RELION 3.1 STAR file.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import mrcfile
import numpy as np

from faml.evaluate.maps import fsc_resolution, lowpass
from faml.geometry.masks import DEFAULT_MASK_RADIUS
from faml.geometry.wedge import read_weight
from faml.io.atomic import atomic_path, write_text_atomic
from faml.io.mrc import read_volume, write_volume
from faml.io.star import read_particles_star, write_particles_star
from faml.report._run import read_run_files

__all__ = ["RelionExport", "export_relion", "write_relion_map"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelionExport:
    """What :func:`export_relion` wrote.

    ``maps`` one low-passed map per class, ``resolutions`` their low-pass (Ångström),
    ``star`` all particles, ``class_stars`` per class (K > 1, else empty), ``commands`` the
    file with the ``relion_refine`` commands.
    """

    folder: Path
    maps: tuple[Path, ...]
    resolutions: tuple[float, ...]
    star: Path
    class_stars: tuple[Path, ...]
    commands: Path


def write_relion_map(path: str | os.PathLike[str], volume: np.ndarray, voxel_size: float) -> None:
    """Write a `(z, y, x)` map as RELION reads a reference: float32, voxel size, origin 0."""
    volume = np.asarray(volume, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(volume)
            m.voxel_size = float(voxel_size)
            m.header.origin = (0.0, 0.0, 0.0)
            m.header.nxstart = m.header.nystart = m.header.nzstart = 0
            m.header.mapc, m.header.mapr, m.header.maps = 1, 2, 3


def export_relion(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    lowpass_angstrom: float | None = None,
    edge_shells: float = 3.0,
    relion_version: str = "5",
) -> RelionExport:
    """Export a finished run for ``relion_refine --ref`` (see the module docstring).

    Parameters
    ----------
    run_dir
        A finished run (``class_NNN.mrc``, ``particles.star``, ``iterations/``).
    out
        Output folder (default ``run_dir/relion``).
    lowpass_angstrom
        Low-pass of every map; default each class's half-set FSC 0.143 resolution.
    edge_shells
        Width of the raised-cosine edge of the low-pass, Fourier shells.
    relion_version
        ``"4"`` or ``"5"``: the weights as they are. ``"3.1"``: a RELION 3.1 STAR file, and
        a CTF-premultiplied set's weights as ``sqrt(C)`` (``ctf_sqrt/`` in ``out``): RELION
        3.1 squares a premultiplied 3D CTF image (module docstring).

    Raises
    ------
    ValueError
        If the run has not finished or a particle file cannot be found.
    """
    if relion_version not in ("3.1", "4", "5"):
        raise ValueError(f"RELION version {relion_version!r}: faml exports for 3.1, 4 or 5")
    run_dir = Path(run_dir)
    star = run_dir / "particles.star"
    if not star.exists():
        raise ValueError(f"{run_dir} has no particles.star: has the run finished?")
    run = read_run_files(run_dir)
    folder = Path(out) if out is not None else run_dir / "relion"
    folder.mkdir(parents=True, exist_ok=True)
    box, voxel, last = run.box, run.voxel_size, run.last

    maps, resolutions = [], []
    for k in range(run.classes):
        vol, _ = read_volume(run_dir / f"class_{k + 1:03d}.mrc")
        res = lowpass_angstrom or fsc_resolution(last.fsc[k], box, voxel, 0.143)
        res = max(float(res), 2.0 * voxel)  # not beyond Nyquist
        path = folder / f"class_{k + 1:03d}_lp.mrc"
        write_relion_map(path, lowpass(vol, res, voxel, edge_shells=edge_shells), voxel)
        maps.append(path)
        resolutions.append(res)

    table = read_particles_star(star)
    if len(table) != last.classes.size:
        raise ValueError(
            f"{star} has {len(table)} particles, iteration {last.number} {last.classes.size}"
        )
    extra = dict(table.extra)
    sqrt_weights = relion_version == "3.1" and table.ctf_premultiplied
    if any(w is not None for w in table.weight_paths):
        weights = _sqrt_weights(table, folder / "ctf_sqrt") if sqrt_weights else table.weight_paths
        extra["rlnCtfImage"] = tuple(weights)
    table = replace(table, names=table.paths, extra=extra)
    version = {"relion5_version": 30001} if relion_version == "3.1" else {}
    with np.load(last.folder / "particles.npz") as z:
        rotations, shifts, halves = z["rotations"], z["shifts"], z["halves"]
    classes, maxp = last.classes, last.max_probability
    out_star = folder / "particles.star"
    write_particles_star(
        out_star, table, rotations, shifts, classes + 1, maxp, halves + 1, **version
    )
    class_stars: dict[int, Path] = {}
    if run.classes > 1:
        for k in range(run.classes):
            idx = np.flatnonzero(classes == k)
            if idx.size == 0:
                continue
            path = folder / f"class_{k + 1:03d}_particles.star"
            write_particles_star(
                path, table.subset(idx), rotations[idx], shifts[idx], classes[idx] + 1,
                maxp[idx], halves[idx] + 1, **version,
            )  # fmt: skip
            class_stars[k] = path
    commands = folder / "relion_refine.txt"
    write_text_atomic(
        commands,
        _commands(folder, maps, resolutions, class_stars, run, table, extra, sqrt_weights),
    )
    logger.info("RELION export of %s in %s", run_dir, folder)
    return RelionExport(
        folder, tuple(maps), tuple(resolutions), out_star, tuple(class_stars.values()), commands
    )


def _sqrt_weights(table, folder: Path) -> list[str | None]:
    """``sqrt(C)`` of each CTF² sum ``C`` of a premultiplied table, written once per file.

    Half volumes (``rfftn`` layout, `(N, N, N//2+1)`: RELION takes them as they are) named
    by the first particle that uses them; ``None`` stays ``None``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for i, w in enumerate(table.weight_paths):
        if w is not None and w not in written:
            written[w] = str((folder / f"particle_{i + 1:06d}_ctf.mrc").resolve())
            c = read_weight(w, table.box, premultiplied=True)
            write_volume(written[w], np.sqrt(c), table.voxel_size)
    return [None if w is None else written[w] for w in table.weight_paths]


_PREMULTIPLIED_31 = [
    "# For RELION 3.1: these particles are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1),",
    "# and each rlnCtfImage (in ctf_sqrt/) is sqrt(C), the square root of the particle's CTF^2",
    "# sum C, since RELION 3.1 squares a premultiplied 3D CTF image. For RELION 4 or 5 export",
    "# again without --relion-version 3.1 (rlnCtfImage = C).",
]

_PREMULTIPLIED = [
    "# These particles are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1 in the optics",
    "# block): each rlnCtfImage is the particle's CTF^2 sum C, as RELION 4 and 5 write and read",
    "# 3D pseudo-subtomograms (their 3D CTF images hold CTF^2): run these commands with them.",
    "# RELION 3.1 squares a premultiplied 3D CTF image (relion_reconstruct 3.1 rebuilds",
    "# sum D / sum C^2 from this file): for RELION 3.1 give each particle rlnCtfImage = sqrt(C)",
    "# with the same flag: faml export --relion-version 3.1 writes them (faml's",
    "# benchmarks/relion31_premultiplied.py measures both).",
]


def _commands(folder, maps, resolutions, class_stars, run, table, extra, sqrt_weights) -> str:
    diameter = (
        2.0 * float(run.config.get("mask_radius", DEFAULT_MASK_RADIUS)) * run.box * run.voxel_size
    )
    has_weights = "rlnCtfImage" in extra
    lines = [
        f"# faml export of {run.folder.resolve()} ({run.classes} class(es), "
        f"{len(table)} particles, {run.box}^3, {run.voxel_size:g} A/voxel)",
        "# Run from this folder (image names are absolute). The maps are averages of the",
        "# particles themselves, so they are on the particles' greyscale; add --firstiter_cc",
        "# if RELION's first iteration disagrees.",
    ]
    if not has_weights:
        lines += [
            "# These particles have no rlnCtfImage: RELION then sees no missing wedge.",
            "# Give each particle a 3D weight (rlnCtfImage) and add --ctf for tomography data.",
        ]
    elif table.ctf_premultiplied:
        lines += _PREMULTIPLIED_31 if sqrt_weights else _PREMULTIPLIED
    common = [
        "--auto_refine", "--split_random_halves", "--particle_diameter", f"{diameter:.0f}",
        "--flatten_solvent", "--zero_mask", "--sym", "C1", "--healpix_order", "2",
        "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2",
        "--pad", "2", "--norm", "--scale", "--j", "4",
    ]  # fmt: skip
    if has_weights:
        common.append("--ctf")
    for k, (ref, res) in enumerate(zip(maps, resolutions, strict=True)):
        star = class_stars.get(k) if len(maps) > 1 else folder / "particles.star"
        if star is None:  # an empty class
            continue
        args = [
            "relion_refine", "--o", f"Refine3D/faml_class{k + 1:03d}/run",
            "--i", star.name, "--ref", ref.name, "--ini_high", f"{res:.1f}", *common,
        ]  # fmt: skip
        lines += ["", f"# class {k + 1}: refine its particles against its map", "mkdir -p "
                  f"Refine3D/faml_class{k + 1:03d}", shlex.join(args)]  # fmt: skip
    if len(maps) > 1:
        lines += [
            "",
            "# or classify all particles again in RELION, starting from every class",
            "# (list the maps in a STAR file with an rlnReferenceImage column, give it to --ref",
            f"# with --K {len(maps)}, and drop --auto_refine --split_random_halves).",
        ]
    return "\n".join(lines) + "\n"
