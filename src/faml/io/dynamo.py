"""Dynamo tables (``.tbl``): particle poses, shifts, tilt ranges and classes.

A Dynamo table has one row per particle and at least 26 whitespace-separated numeric columns
(Dynamo's documented convention, 1-based): 1 ``tag``, 2 ``aligned``, 3 ``averaged``,
4-6 ``dx dy dz`` (shift of the particle from its box centre, pixels), 7-9
``tdrot tilt narot`` (degrees), 10 ``cc``, ..., 13 ``ftype`` (0 full range, 1 single tilt
about Y), 14-15 ``ymintilt ymaxtilt``, 16-17 ``xmintilt xmaxtilt``, ..., 20 ``tomo``,
..., 22 ``class``, ..., 24-26 ``x y z`` (position in the tomogram).

Euler angles (converted here, at the file boundary, and nowhere else): Dynamo's
``(tdrot, tilt, narot)`` are ZXZ angles whose matrix ``Rz(narot) Rx(tilt) Rz(tdrot)``
(``scipy``'s extrinsic ``"zxz"``) rotates the reference onto the particle — the same sense as
RELION's ``A`` (:mod:`faml.geometry.euler`). Writing ``Rx(b) = Rz(-90) Ry(b) Rz(90)`` and
``A = Rz(-psi) Ry(-tilt) Rz(-rot)`` gives RELION's angles
``rot = 90 - tdrot``, ``tilt = tilt``, ``psi = -90 - narot`` (the formulas of teamtomo's
``dynamo2relion`` / ``eulerangles``, tested against a brute-force matrix). The shift
``(dx, dy, dz)`` is the particle's displacement ``d`` (RELION origin ``-d * pixel``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from faml.io.particles import ParticleTable

__all__ = ["DynamoTable", "dynamo_to_matrix", "read_dynamo_table", "apply_dynamo_table"]


@dataclass(frozen=True)
class DynamoTable:
    """The columns of a Dynamo table faml uses (one entry per row, file order).

    Attributes
    ----------
    tags
        `(n,)` particle tags (column 1).
    rotations
        `(n, 3, 3)` poses in RELION's sense (reference -> particle).
    shifts
        `(n, 3)` displacements ``(x, y, z)`` in pixels (columns 4-6).
    tilt_ranges
        `(n, 2)` tilt range about Y in degrees (columns 14-15; (-90, 90) where ``ftype`` is 0).
    classes
        `(n,)` class (column 22).
    tomograms
        `(n,)` tomogram number (column 20).
    """

    tags: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    tilt_ranges: np.ndarray
    classes: np.ndarray
    tomograms: np.ndarray

    def __len__(self) -> int:
        return len(self.tags)


def dynamo_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Dynamo ``(tdrot, tilt, narot)`` `(..., 3)` degrees -> RELION-sense `(..., 3, 3)` matrices."""
    a = np.asarray(angles, dtype=np.float64)
    if a.shape[-1:] != (3,):
        raise ValueError(f"dynamo_to_matrix: expected (..., 3) angles, got {a.shape}")
    mats = Rotation.from_euler("zxz", a.reshape(-1, 3), degrees=True).as_matrix()
    return mats.reshape(a.shape[:-1] + (3, 3))


def read_dynamo_table(path: str | os.PathLike[str]) -> DynamoTable:
    """Read a Dynamo ``.tbl`` table (at least 26 numeric columns; ``%`` / ``#`` comments)."""
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines():
        line = line.split("%")[0].split("#")[0].strip()
        if line:
            rows.append([float(v) for v in line.split()])
    if not rows:
        raise ValueError(f"{path} holds no particles")
    if len({len(r) for r in rows}) != 1 or len(rows[0]) < 26:
        raise ValueError(f"{path}: a Dynamo table needs the same >= 26 columns on every row")
    t = np.asarray(rows, dtype=np.float64)
    full = t[:, 12] == 0
    tilts = np.where(full[:, None], np.array([[-90.0, 90.0]]), t[:, 13:15])
    return DynamoTable(
        tags=t[:, 0].astype(np.int64),
        rotations=dynamo_to_matrix(t[:, 6:9]),
        shifts=t[:, 3:6].copy(),
        tilt_ranges=tilts,
        classes=t[:, 21].astype(np.int64),
        tomograms=t[:, 19].astype(np.int64),
    )


def _tag_of(path: str) -> int | None:
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def apply_dynamo_table(
    table: ParticleTable, dynamo: DynamoTable
) -> tuple[ParticleTable, np.ndarray, np.ndarray]:
    """Match a table of particle files to a Dynamo table; set their tilt ranges.

    Particles are matched by the last number in their file name (Dynamo's
    ``particle_<tag>.mrc``), else, when the counts agree and names carry no numbers, in
    order. Returns the table (Dynamo rows' order, tilt ranges from the table) and the
    matched `(n, 3, 3)` rotations and `(n, 3)` shifts (voxels) of the Dynamo table.
    """
    tags = [_tag_of(p) for p in table.paths]
    index = {int(t): i for i, t in enumerate(dynamo.tags)}
    if all(t is not None and t in index for t in tags):
        rows = np.array([index[t] for t in tags])
    elif len(table) == len(dynamo):
        rows = np.arange(len(table))
    else:
        raise ValueError(
            f"cannot match {len(table)} particle files to the {len(dynamo)} rows of the Dynamo "
            "table (name the files by tag, e.g. particle_00012.mrc)"
        )
    matched = replace(table, tilt_ranges=dynamo.tilt_ranges[rows])
    return matched, dynamo.rotations[rows], dynamo.shifts[rows]
