"""RELION's STAR conventions that :mod:`faml.io`'s readers and writers share.

The optics flags of the CTF form and of 2D stacks, and where an image name in a STAR file
points (:func:`_resolve`, :func:`_resolve_all`, with the line of a bad row:
:func:`_row_line`). The lowest of the STAR modules: :mod:`faml.io.particles`,
:mod:`faml.io.relion5`, :mod:`faml.io.tiltstacks` and :mod:`faml.io.star` import it, it
imports none of them (standard library only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    import pandas as pd

#: Key of ``ParticleTable.optics`` holding ``data_general``'s ``rlnTomoSubTomosAre2DStacks``.
STACKS_KEY = "rlnTomoSubTomosAre2DStacks"
#: The optics column of the CTF form (:attr:`faml.io.particles.ParticleTable.ctf_premultiplied`).
CTF_FLAG = "rlnCtfDataAreCtfPremultiplied"


def _resolve(
    name: str,
    star_dir: Path,
    where: str | None = None,
    strict: bool = True,
) -> str:
    """The absolute file of an image name, relative to the first folder that has it.

    The STAR file's folder, the two above it (RELION names files relative to its project
    folder, and a job's STAR file sits in ``PROJECT/Type/jobNNN/``), then the cwd.
    ``where`` (``"x.star: particle 3 (rlnImageName)"``) names the row in the error;
    ``strict=False`` returns the path beside the STAR file when there is none (the caller's
    checks then report it).
    """
    path = name.split("@")[-1]  # "1@stack.mrcs" style: a 3D particle is one whole file
    for base in (star_dir, *star_dir.parents[:2], Path.cwd()):
        candidate = (base / path) if not os.path.isabs(path) else Path(path)
        if candidate.is_dir():
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}{path!r} is a folder ({candidate.resolve()}), not a file")
        if candidate.exists():
            return str(candidate.resolve())
    if not strict:
        return str(star_dir / path) if not os.path.isabs(path) else path
    prefix = f"{where}: " if where else ""
    raise ValueError(
        f"{prefix}no such file {path!r} (relative to {star_dir}, the two folders above it or "
        f"{Path.cwd()})"
    )


def _row_line(path: Path, block: str, row: int) -> int | None:
    """1-based line of data row ``row`` (0-based) of the loop in ``data_<block>``, if found.

    ``block`` ``""``: the first data block (RELION 3.0's single block).
    """
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    inside, in_loop, seen = False, False, -1
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("data_"):
            if inside:
                return None
            inside = block == "" or line == f"data_{block}"
            in_loop = False
            continue
        if not inside or not line or line.startswith("#"):
            continue
        if line.startswith("loop_"):
            in_loop = True
        elif in_loop and not line.startswith("_"):
            seen += 1
            if seen == row:
                return number
    return None


def _resolve_all(
    path: Path, particles: pd.DataFrame, column: str, strict: bool, block: str = "particles"
) -> list[str]:
    """The files of ``particles[column]`` (:func:`_resolve`), an error naming row and line."""
    star_dir = path.resolve().parent
    out = []
    for i, n in enumerate(particles[column]):
        try:
            out.append(_resolve(str(n), star_dir, None, strict))
        except ValueError as exc:
            line = _row_line(path, block, i)
            at = f", line {line}" if line else ""
            raise ValueError(f"{path}: particle {i + 1} ({column}{at}): {exc}") from None
    return out
