"""Structures on the simulation grid: atomic models (gemmi) and maps, centred in a cubic box.

Every function here returns an `(N, N, N)` float32 volume in ``(z, y, x)`` order (``mrcfile``'s
order, x fastest) whose centre of mass sits at voxel ``N // 2`` (faml's and RELION's rotation
centre), with positive values for protein.

Atomic models
-------------
:func:`density_from_model` reads a PDB / mmCIF file (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``,
optionally gzipped) with gemmi, keeps the first model, removes waters and hydrogens, moves the
model's centre of mass onto voxel ``N // 2`` and sums the atoms' electron-scattering potentials
with ``gemmi.DensityCalculatorE`` (Peng's five-Gaussian electron form factors, each atom blurred
by its B-factor). Point-like atoms are not band-limited, so sampling them straight onto a coarse
grid aliases; instead the density is computed on a grid ``OVERSAMPLE`` = 2 times finer with an
extra Gaussian blur ``B_add`` that brings the spectrum down to ``1e-3`` at the fine grid's Nyquist
frequency (``B_add = 16 h² ln(1000)``, ``h`` the fine spacing), Fourier-cropped to the target grid
(exact band limit at its Nyquist frequency), and the extra blur is divided back out. What is left
is the potential band-limited to the grid, smoothed only by the atoms' own B-factors. Then:

* ``resolution`` given: a Gaussian low-pass ``exp(-(s * resolution)²)`` (``s`` in 1/Å), i.e.
  Chimera ``molmap``'s Gaussian with ``σ = resolution / (π √2)``: the amplitude is ``1/e`` at
  ``1/resolution``;
* ``resolution=None``: a soft spherical cut at the Nyquist frequency only (raised cosine from
  0.8 to 1.0 of Nyquist), which keeps the cube-shaped crop from ringing.

Values are gemmi's (electron-scattering potential, arbitrary but consistent scale); only their
shape matters to the simulator, which sets the noise from the signal's variance.

Maps
----
:func:`density_from_map` reads an MRC map (voxel size from its header), low-passes it to the
target Nyquist frequency when it is downsampled, and resamples it with a cubic B-spline
(``scipy.ndimage.affine_transform``) onto the target grid such that the centre of mass of its
positive part lands on voxel ``N // 2``. Maps with protein dark (negative) need ``invert=True``.

Fit
---
The simulator rotates structures about the box centre, so a structure must fit inside the
sphere inscribed in the box: every atom within ``(N - 1 - N // 2)`` voxels of voxel ``N // 2``,
with one ``resolution`` (or two voxels) to spare; for maps, 99 % of the mass above 5 % of the
maximum. Otherwise a ``ValueError`` names the smallest even box that fits.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage

from faml.geometry.axes import box_center
from faml.io.mrc import read_volume

__all__ = [
    "MODEL_SUFFIXES",
    "MAP_SUFFIXES",
    "density_from_model",
    "density_from_map",
    "load_structure",
]

logger = logging.getLogger(__name__)

MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".rec", ".mrc.gz", ".map.gz")

OVERSAMPLE = 2  # the atoms are put on a grid this many times finer, then Fourier-cropped
_ALIAS_LEVEL = 1e-3  # spectrum amplitude left at the fine grid's Nyquist frequency
_MAP_MASS_FRACTION = 0.99  # the part of a map's mass that must fit in the box
_MAP_THRESHOLD = 0.05  # map voxels above this fraction of the maximum count as mass


def _check_grid(voxel_size: float, box: int) -> tuple[float, int]:
    if not (isinstance(box, (int, np.integer)) and not isinstance(box, bool) and box >= 8):
        raise ValueError(f"box must be an integer >= 8, got {box!r}")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size must be a positive number of Å, got {voxel_size!r}")
    return float(voxel_size), int(box)


def _room(box: int) -> int:
    """Voxels from the centre ``N // 2`` to the nearest face of the box (the high side)."""
    return box - 1 - box_center(box)


def _box_needed(radius_voxels: float) -> int:
    """Smallest even box whose inscribed sphere (about ``N // 2``) holds ``radius_voxels``."""
    n = 2 * max(4, math.ceil(radius_voxels))
    while _room(n) < radius_voxels:
        n += 2
    return n


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return "".join(path.suffixes[-2:]).lower() if name.endswith(".gz") else path.suffix.lower()


def _frequency_radius(box: int, voxel_size: float) -> np.ndarray:
    """``|s|`` in 1/Å on the ``rfftn`` grid of a ``(box,)*3`` volume: `(N, N, N//2+1)`."""
    k = scipy.fft.fftfreq(box, d=voxel_size)
    kx = scipy.fft.rfftfreq(box, d=voxel_size)
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def _band_limit(s: np.ndarray, voxel_size: float, resolution: float | None) -> np.ndarray:
    """The low-pass applied to a density's spectrum (see the module docstring)."""
    nyquist = 0.5 / voxel_size
    if resolution is not None:
        filt = np.exp(-np.square(s * float(resolution)))
        return np.where(s <= nyquist, filt, 0.0)
    t = np.clip((s / nyquist - 0.8) / 0.2, 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * t)


def density_from_model(
    path: str | os.PathLike[str],
    voxel_size: float,
    box: int,
    resolution: float | None = None,
) -> np.ndarray:
    """Electron-scattering density of an atomic model on an `(N, N, N)` grid, centred.

    Parameters
    ----------
    path
        PDB or mmCIF file (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, optionally ``.gz``). The
        first model is used (all its chains), without waters and hydrogens. Only the atoms in
        the file are used: build a biological assembly beforehand if the file holds an
        asymmetric unit.
    voxel_size
        Grid spacing in Å.
    box
        Side ``N`` of the cubic box (``>= 8``).
    resolution
        If given, Gaussian low-pass to this resolution in Å (amplitude ``1/e`` at
        ``1/resolution``, Chimera ``molmap``'s convention); ``None``: band-limited to the Nyquist
        frequency only.

    Returns
    -------
    np.ndarray
        `(N, N, N)` float32 in ``(z, y, x)`` order; the model's centre of mass (atomic masses)
        at voxel ``N // 2``.

    Raises
    ------
    ValueError
        If the file holds no atoms, or the model does not fit in the sphere inscribed in the
        box (the message names the smallest even box that does).
    ImportError
        If gemmi is not installed.
    """
    voxel_size, box = _check_grid(voxel_size, box)
    if resolution is not None and not resolution > 0:
        raise ValueError(f"resolution must be positive (Å) or None, got {resolution!r}")
    try:
        import gemmi  # imported here: only model input needs it
    except ImportError as exc:  # pragma: no cover - gemmi is a dependency
        raise ImportError("reading atomic models needs gemmi: pip install gemmi") from exc

    path = Path(path)
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable PDB/mmCIF file ({exc})") from exc
    if len(st) == 0:
        raise ValueError(f"{path} holds no model")
    st.setup_entities()
    st.remove_waters()
    st.remove_hydrogens()
    model = st[0]
    n_atoms = model.count_atom_sites()
    if n_atoms == 0:
        raise ValueError(f"{path} holds no atoms (after removing waters and hydrogens)")

    xyz = np.array([[a.pos.x, a.pos.y, a.pos.z] for a in _atoms(model)])
    com = model.calculate_center_of_mass()
    com = np.array([com.x, com.y, com.z])
    margin = resolution if resolution is not None else 2.0 * voxel_size
    radius = float(np.sqrt(np.max(np.sum((xyz - com) ** 2, axis=1)))) + margin
    if radius > _room(box) * voxel_size:
        raise ValueError(
            f"{path.name} does not fit in a {box}^3 box at {voxel_size:g} Å/voxel: it reaches "
            f"{radius:.0f} Å from its centre of mass (atoms + {margin:g} Å), the box holds "
            f"{_room(box) * voxel_size:.0f} Å; use a box of at least "
            f"{_box_needed(radius / voxel_size)} voxels or a larger voxel size"
        )

    # The centre of mass goes onto the position of voxel N//2 in a periodic P1 cell of side
    # N * voxel_size; grid point (i, j, k) of gemmi's grid is at (i, j, k) * spacing.
    centre = box_center(box) * voxel_size
    shift = gemmi.Vec3(*(centre - com))
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), shift))

    fine = OVERSAMPLE * box
    h = voxel_size / OVERSAMPLE
    blur = 16.0 * h * h * math.log(1.0 / _ALIAS_LEVEL)
    calc = gemmi.DensityCalculatorE()
    side = box * voxel_size
    calc.grid.set_unit_cell(gemmi.UnitCell(side, side, side, 90.0, 90.0, 90.0))
    calc.grid.spacegroup = gemmi.find_spacegroup_by_name("P1")
    calc.grid.set_size(fine, fine, fine)  # our grid (gemmi would size it from d_min)
    calc.grid.fill(0.0)
    calc.blur = blur
    calc.add_model_density_to_grid(model)
    calc.grid.symmetrize_sum()
    # gemmi's array is indexed [x, y, z] (x fastest in memory): transpose to (z, y, x).
    dense = np.ascontiguousarray(np.array(calc.grid, copy=False).transpose(2, 1, 0))

    spec = scipy.fft.rfftn(dense.astype(np.float32), workers=1)
    idx = np.arange(box)
    # Fine-grid index of each frequency of the target grid (fftfreq order; -N/2 for even N).
    idx = np.where(idx < (box + 1) // 2, idx, idx + fine - box)
    cropped = spec[np.ix_(idx, idx, np.arange(box // 2 + 1))]
    s = _frequency_radius(box, voxel_size)
    # Undo the anti-aliasing blur (gemmi multiplies by exp(-B s^2 / 4)), then band-limit.
    cropped = cropped * (np.exp(blur * s * s / 4.0) * _band_limit(s, voxel_size, resolution))
    out = scipy.fft.irfftn(cropped, s=(box,) * 3, workers=1) / OVERSAMPLE**3
    logger.debug("%s: %d atoms -> %d^3 at %g Å", path.name, n_atoms, box, voxel_size)
    return np.ascontiguousarray(out, dtype=np.float32)


def _atoms(model):
    """Every atom of a gemmi model (all chains, residues, alternative conformations)."""
    for chain in model:
        for residue in chain:
            yield from residue


def _positive_mass(vol: np.ndarray) -> np.ndarray:
    """The map's mass used for centring and the fit test: values above 5 % of the maximum."""
    top = float(vol.max())
    if not top > 0:
        raise ValueError("the map has no positive density (protein dark? use invert=True)")
    return np.where(vol > _MAP_THRESHOLD * top, vol, 0.0)


def density_from_map(
    path: str | os.PathLike[str],
    voxel_size: float,
    box: int,
    *,
    map_voxel_size: float | None = None,
    invert: bool = False,
) -> np.ndarray:
    """An MRC map resampled to ``voxel_size``, centred on voxel ``N // 2``, in an `(N,)*3` box.

    Parameters
    ----------
    path
        MRC map, ``(z, y, x)`` data as ``mrcfile`` reads it (need not be cubic).
    voxel_size
        Target grid spacing in Å.
    box
        Target side ``N``.
    map_voxel_size
        The map's voxel size in Å; default: its header's (required when the header has none).
    invert
        Negate the map first (for maps with protein dark).

    Returns
    -------
    np.ndarray
        `(N, N, N)` float32, ``(z, y, x)``: the centre of mass of the map's mass (values above
        5 % of its maximum) at voxel ``N // 2``. Downsampled maps are low-passed to the new
        Nyquist frequency first (raised-cosine edge from 0.8 to 1.0 of it).

    Raises
    ------
    ValueError
        If the file is not a 3D MRC map, has no voxel size, no positive density, or does not
        fit in the box (99 % of its mass within the inscribed sphere; the message names the
        smallest even box that fits).
    """
    voxel_size, box = _check_grid(voxel_size, box)
    path = Path(path)
    vol, header_voxel = read_volume(path)
    src = map_voxel_size if map_voxel_size is not None else header_voxel
    if not src or not src > 0:
        raise ValueError(f"{path} has no voxel size in its header: give map_voxel_size")
    src = float(src)
    vol = vol.astype(np.float64)
    if invert:
        vol = -vol

    mass = _positive_mass(vol)
    grids = np.indices(vol.shape, dtype=np.float64).reshape(3, -1)  # (z, y, x) indices
    weights = mass.reshape(-1)
    com = grids @ weights / weights.sum()  # (z, y, x), source voxels
    dist = np.sqrt(np.sum((grids - com[:, None]) ** 2, axis=0)) * src  # Å
    order = np.argsort(dist)
    cum = np.cumsum(weights[order]) / weights.sum()
    r_mass = float(dist[order][np.searchsorted(cum, _MAP_MASS_FRACTION)])
    if r_mass > _room(box) * voxel_size:
        raise ValueError(
            f"{path.name} does not fit in a {box}^3 box at {voxel_size:g} Å/voxel: "
            f"{_MAP_MASS_FRACTION:.0%} of its mass lies within {r_mass:.0f} Å of its centre, "
            f"the box holds {_room(box) * voxel_size:.0f} Å; use a box of at least "
            f"{_box_needed(r_mass / voxel_size)} voxels or a larger voxel size"
        )

    if voxel_size > src * (1 + 1e-6):  # downsampling: remove what the new grid cannot hold
        spec = scipy.fft.rfftn(vol, workers=1)
        kz = scipy.fft.fftfreq(vol.shape[0], d=src)
        ky = scipy.fft.fftfreq(vol.shape[1], d=src)
        kx = scipy.fft.rfftfreq(vol.shape[2], d=src)
        s = np.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
        spec *= _band_limit(s, voxel_size, None)
        vol = scipy.fft.irfftn(spec, s=vol.shape, workers=1)

    scale = voxel_size / src  # source voxels per target voxel
    c = box_center(box)
    out = ndimage.affine_transform(
        vol,
        np.full(3, scale),
        offset=com - scale * c,
        output_shape=(box,) * 3,
        order=3,
        mode="constant",
        cval=0.0,
    )
    return np.ascontiguousarray(out, dtype=np.float32)


def load_structure(
    path: str | os.PathLike[str],
    voxel_size: float,
    box: int,
    resolution: float | None = None,
) -> np.ndarray:
    """A structure from an atomic model or a map, picked by the file's suffix.

    Atomic models (:data:`MODEL_SUFFIXES`) go to :func:`density_from_model` (with
    ``resolution``), maps (:data:`MAP_SUFFIXES`) to :func:`density_from_map` (``resolution``
    then low-passes the resampled map the same way, Gaussian ``exp(-(s * resolution)²)``).

    Returns
    -------
    np.ndarray
        `(N, N, N)` float32, ``(z, y, x)``, centre of mass at voxel ``N // 2``.

    Raises
    ------
    ValueError
        For an unknown suffix, or as the two readers.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix in MODEL_SUFFIXES:
        return density_from_model(p, voxel_size, box, resolution)
    if suffix in MAP_SUFFIXES:
        vol = density_from_map(p, voxel_size, box)
        if resolution is None:
            return vol
        if not resolution > 0:
            raise ValueError(f"resolution must be positive (Å) or None, got {resolution!r}")
        s = _frequency_radius(box, float(voxel_size))
        spec = scipy.fft.rfftn(vol, workers=1) * np.exp(-np.square(s * float(resolution)))
        return scipy.fft.irfftn(spec, s=vol.shape, workers=1).astype(np.float32)
    raise ValueError(
        f"{p.name}: unknown structure format {suffix!r}; atomic models: "
        f"{', '.join(MODEL_SUFFIXES)}; maps: {', '.join(MAP_SUFFIXES)}"
    )
