"""RELION 5 / WarpTools 2D tilt-stack particles -> 3D subtomograms and weights for faml.

A RELION 5 particle set with ``rlnTomoSubTomosAre2DStacks 1`` stores each particle as a
stack of 2D tilt images (``rlnImageName``, one `(T, n, n)` MRC stack, one image per frame of
its tilt series, even the frames it does not use); the geometry, CTF and dose of every frame
are in the tomograms STAR file (``data_global`` and one ``data_<rlnTomoName>`` block per
tilt series). faml aligns 3D volumes, so each particle is reconstructed once, by direct
Fourier inversion, into a 3D subtomogram ``X`` and its Fourier weight ``W``.

Geometry
--------
Frame ``f`` of tilt series ``s`` has the projection matrix ``P_f`` (rows
``rlnTomoProjX/Y/Z/W``): a point ``p`` of the tomogram (``(x, y, z)``, tilt-series pixels)
lands at image pixel ``(P_f p)_x, (P_f p)_y``. Its rotation rows ``e_x = P_f[0, :3]``,
``e_y = P_f[1, :3]`` are the image axes in the tomogram frame, so by the central-slice
theorem the image's 2D frequency ``(k_x, k_y)`` is the tomogram's 3D frequency
``k_x e_x + k_y e_y``. The particle's 3D box is the tomogram frame rotated by its
``rlnTomoSubtomogramRot/Tilt/Psi`` matrix ``A_sub`` (RELION 5: tomogram coordinates
``= A_sub @`` box coordinates, identity when absent), so the plane is inserted at
``A_sub^T (k_x e_x + k_y e_y)``. The particle's ``rlnAngle*`` are then relative to that box,
as RELION 5 reads them (``ParticleSet::getMatrix3x3 = A_sub @ A_particle``).

Handedness
----------
On real WarpTools stacks (EMPIAR-10499, ``benchmarks/empiar10499_geometry.py``) the tilt
images are the projections ``P_f A_sub A F`` of the set's own reconstruction, with
``F = diag(1, 1, -1)``: a reference that is mirrored in z before the pose acts. Projected
so, the reference matches the 1430 tilt images with a mean correlation of 0.062 (40 Å);
without ``F`` 0.007, no better than random poses, and every other candidate convention
(``P^T``, ``A^T``, image flips and transposes) stays under 0.02. That reconstruction has the
hand of the 70S ribosome's atomic model (4V4R), its mirror does not (correlation 0.89 against
0.76), so ``F`` is not a mirrored reference: it belongs to the geometry. Since
``P A_sub A F`` projects as ``(F P F)(F A_sub F)(F A F)`` (a mirror along the beam does not
change a projection), this is the stated geometry with every matrix conjugated by ``F``,
i.e. tilt angles and the Euler ``tilt`` negated (``F A(rot, tilt, psi) F =
A(rot, -tilt, psi)``). faml therefore reconstructs 2D-stack particles in that mirrored box
frame (the plane at ``F A_sub^T (k_x e_x + k_y e_y)``), in which a particle is the reference
at the pose ``F A F`` and displacement ``F d``; :mod:`faml.io.relion5` converts the poses it
reads from and writes to a 2D-stack set (:func:`faml.io.relion5.stack_frame`), so the
``rlnAngle*`` in the files keep RELION's meaning.

CTF, dose, exposure
-------------------
Per frame, at spatial frequency ``s`` (1/Å) of azimuth ``phi`` in the image:

* defocus ``(U + V)/2 + (U - V)/2 cos(2 (phi - rlnDefocusAngle))`` plus the particle's depth
  ``hand * (P_f[2, :3] . c)``, ``c`` its ``rlnCenteredCoordinate{X,Y,Z}Angst`` (RELION 5's
  ``Tomogram::getCtf``; without centred coordinates the frame's defocus is used: at 12 Å per
  pixel a 1000 Å depth error moves the CTF phase at Nyquist by about 0.1 rad);
* ``CTF`` in RELION's convention (:func:`faml.imaging.ctf.ctf`, amplitude contrast, Cs and
  voltage from ``data_global``);
* the exposure filter ``h = scale * exp(-B s²/4) * exp(-D / (2 N_e(s)))``: ``rlnCtfScalefactor``
  (frames with 0 are dropped, as WarpTools marks excluded tilts), ``rlnCtfBfactor``, and the
  Grant & Grigorieff (2015) critical exposure ``N_e(s) = 0.245 s^-1.665 + 2.81`` e/Å²
  (:func:`faml.imaging.exposure.critical_exposure`) at the frame's cumulative dose ``D``
  (``rlnMicrographPreExposure``), the dose weighting RELION 5 applies to tomography frames.

Frames with ``rlnTomoVisibleFrames`` 0 (the particle outside that image) are left out.

What faml's engine expects of X and W
-------------------------------------
faml's engine (DESIGN.md section 2) takes a particle in one of RELION's two CTF forms; the
reconstruction is the *premultiplied* pair, ``D = C * T_phi A + noise`` with noise variance
``∝ C``, whose M-step is ``sum T^-1(D) / sum T^-1(C)`` — RELION's own pair (data
``sum c y``, weight ``sum c²``), which keeps every frame's information without dividing by
a CTF that crosses zero. With ``c_f = CTF_f h_f`` the total modulation of frame ``f`` and
``v`` the trilinear insertion weights (on a twice-padded grid):

* CTF-premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``, WarpTools' and RELION's
  stacks: ``y = CTF * raw``, the raw image carrying ``c P`` plus noise): the data term is
  ``D = sum v h y`` (the matched filter's remaining factor ``h``) and ``C = sum v c²``;
  otherwise ``D = sum v c y``. Either way ``D = C P + noise`` with noise variance ``∝ C``.
* Both are divided by ``V = sum v``, the sampling density (a per-voxel constant of the
  insertion, not of the CTF: the pair keeps its meaning): the volume ``X = D / V`` and the
  weight ``W = C / V``, the mean ``c²`` of the frames reaching a voxel (about ``[0, 1]``:
  ``rlnCtfScalefactor`` above 1 may take it over 1), 0 where no frame reaches it or beyond
  Nyquist — the same quantity faml's simulator writes (:mod:`faml.simulate.tiltseries`),
  and RELION's ``rlnCtfImage`` (CTF² with dose-weighted sampling) normalised by the
  sampling density. ``X / W`` where ``W`` is not tiny is the CTF-corrected particle.

The returned table is marked premultiplied (``ParticleTable.ctf_premultiplied``), whatever
the 2D images' flag (which says only how ``D`` was formed).
The subtomogram is then restricted in Fourier space to ``W > 0`` (as the simulator does).
:func:`prepare_stacks` writes the volumes and weights into a cache folder of the run's output
directory and returns a :class:`~faml.io.particles.ParticleTable` whose written
``rlnImageName`` stay the original 2D stacks: faml's results STAR then feeds ``relion_refine``
on the original stacks (RELION 5 layout, ``rlnTomoSubTomosAre2DStacks 1``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
import starfile

from faml.geometry.axes import box_center
from faml.geometry.euler import euler_to_matrix
from faml.imaging.ctf import ctf
from faml.imaging.exposure import critical_exposure
from faml.imaging.slices import hermitian_planes, insert_planes
from faml.io._relion import _resolve_all
from faml.io.mrc import read_volume, write_volume
from faml.io.relion5 import find_tomograms_star, table_from_blocks

__all__ = [
    "STACK_MIRROR",
    "TiltSeries",
    "critical_exposure",
    "read_tomograms_star",
    "reconstruct_particle",
    "prepare_stacks",
]

logger = logging.getLogger(__name__)

_CACHE_VERSION = 4  # 4: the premultiplied pair (D / V, C / V); 3 wrote X = D / C

#: ``F = diag(1, 1, -1)`` (as a row to multiply by): faml's box frame for 2D-stack particles
#: is RELION's subtomogram frame mirrored in z (module docstring, "Handedness").
STACK_MIRROR = np.array([1.0, 1.0, -1.0])


@dataclass(frozen=True)
class TiltSeries:
    """One tilt series of a RELION 5 tomograms STAR file.

    Attributes
    ----------
    name
        ``rlnTomoName``.
    projections
        `(T, 3, 4)` ``rlnTomoProjX/Y/Z/W`` rows (only the first three rows are used).
    defocus_u, defocus_v, defocus_angle
        `(T,)` Å, Å, degrees.
    dose
        `(T,)` cumulative exposure ``rlnMicrographPreExposure`` (e/Å²), 0 if absent.
    scale, bfactor
        `(T,)` ``rlnCtfScalefactor`` (1 if absent) and ``rlnCtfBfactor`` (0 if absent).
    handedness
        ``rlnTomoHand`` (defocus slope sign), 1 if absent.
    pixel_size
        ``rlnTomoTiltSeriesPixelSize`` (Å).
    voltage, cs, amplitude_contrast
        kV, mm, fraction.
    """

    name: str
    projections: np.ndarray
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    dose: np.ndarray
    scale: np.ndarray
    bfactor: np.ndarray
    handedness: float
    pixel_size: float
    voltage: float
    cs: float
    amplitude_contrast: float

    def __len__(self) -> int:
        return len(self.defocus_u)


def _vectors(column: pd.Series) -> np.ndarray:
    """RELION's ``[a,b,c,d]`` vector strings -> `(T, 4)` float64."""
    out = [[float(v) for v in str(s).strip().strip("[]").split(",")] for s in column.tolist()]
    return np.asarray(out, dtype=np.float64)


def read_tomograms_star(path: str | os.PathLike[str]) -> dict[str, TiltSeries]:
    """Read a RELION 5 tomograms STAR file (``data_global`` + one block per tilt series).

    Raises
    ------
    ValueError
        If the file lacks ``data_global``, a tilt series' block, or its projection matrices
        (tilt-angle-only files, RELION 4's ``rlnTomoXTilt``... are not supported: RELION 5
        and WarpTools always write the matrices).
    """
    path = Path(path)
    blocks = starfile.read(path, always_dict=True)
    glob = blocks.get("global")
    if not isinstance(glob, pd.DataFrame):
        raise ValueError(f"{path} has no data_global block: not a RELION 5 tomograms STAR file")
    out: dict[str, TiltSeries] = {}
    for _, row in glob.iterrows():
        name = str(row["rlnTomoName"])
        frames = blocks.get(name)
        if not isinstance(frames, pd.DataFrame):
            raise ValueError(f"{path}: no data_{name} block for tilt series {name}")
        cols = ["rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW"]
        if not all(c in frames.columns for c in cols):
            raise ValueError(f"{path}: data_{name} has no rlnTomoProjX/Y/Z/W matrices")
        proj = np.stack([_vectors(frames[c]) for c in cols], axis=1)
        n = len(frames)

        def col(key, default, frames=frames, n=n):
            if key in frames.columns:
                return frames[key].to_numpy(dtype=np.float64)
            return np.full(n, default, dtype=np.float64)

        out[name] = TiltSeries(
            name=name,
            projections=proj,
            defocus_u=col("rlnDefocusU", np.nan),
            defocus_v=col("rlnDefocusV", np.nan),
            defocus_angle=col("rlnDefocusAngle", 0.0),
            dose=col("rlnMicrographPreExposure", 0.0),
            scale=col("rlnCtfScalefactor", 1.0),
            bfactor=col("rlnCtfBfactor", 0.0),
            handedness=float(row.get("rlnTomoHand", 1.0)),
            pixel_size=float(row["rlnTomoTiltSeriesPixelSize"]),
            voltage=float(row.get("rlnVoltage", 300.0)),
            cs=float(row.get("rlnSphericalAberration", 2.7)),
            amplitude_contrast=float(row.get("rlnAmplitudeContrast", 0.07)),
        )
        if np.isnan(out[name].defocus_u).any():
            raise ValueError(f"{path}: data_{name} has no rlnDefocusU")
    return out


def reconstruct_particle(
    images: np.ndarray,
    series: TiltSeries,
    pixel_size: float,
    *,
    visible: np.ndarray | None = None,
    position_angst: np.ndarray | None = None,
    subtomo_rotation: np.ndarray | None = None,
    premultiplied: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One particle's 3D subtomogram and Fourier weight from its 2D tilt images.

    Parameters
    ----------
    images
        `(T, n, n)` tilt images ``(frame, y, x)``, centre at pixel ``n // 2``, one per frame
        of ``series``.
    series
        The particle's tilt series.
    pixel_size
        Å per pixel of the images (``rlnImagePixelSize``).
    visible
        `(T,)` ``rlnTomoVisibleFrames`` (frames with 0 are left out); all if ``None``.
    position_angst
        `(3,)` ``rlnCenteredCoordinate{X,Y,Z}Angst`` for the depth-dependent defocus, or
        ``None``.
    subtomo_rotation
        `(3, 3)` RELION matrix of ``rlnTomoSubtomogramRot/Tilt/Psi`` (identity if ``None``).
    premultiplied
        ``rlnCtfDataAreCtfPremultiplied``: the images are already multiplied by the CTF.

    Returns
    -------
    volume, weight
        The CTF-premultiplied pair: `(n, n, n)` float32 subtomogram ``D / V`` ``(z, y, x)``
        and its `(n, n, n//2+1)` float32 CTF² weight ``C / V >= 0`` (``rfftn`` layout, DC at
        ``[0, 0, 0]``); see the module docstring.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (T, n, n), got {images.shape}")
    t_all, n, _ = images.shape
    if t_all != len(series):
        raise ValueError(f"{t_all} images but tilt series {series.name} has {len(series)} frames")
    use = series.scale > 0
    if visible is not None:
        vis = np.asarray(visible).astype(bool)
        if vis.shape != (t_all,):
            raise ValueError(f"visible frames must be ({t_all},), got {vis.shape}")
        use &= vis
    frames = np.flatnonzero(use)
    m = 2 * n
    nx = m // 2 + 1
    # Image spectra on the twice-padded grid, centre pixel n//2 -> m//2 -> 0.
    o = box_center(m) - box_center(n)
    padded = np.zeros((frames.size, m, m), dtype=np.float32)
    padded[:, o : o + n, o : o + n] = images[frames]
    spectra = scipy.fft.rfft2(np.fft.ifftshift(padded, axes=(-2, -1)), workers=1)
    ky = np.fft.fftfreq(m, d=1.0 / m)[:, None]
    kx = np.fft.rfftfreq(m, d=1.0 / m)[None, :]
    s = np.hypot(kx, ky) / (m * pixel_size)  # 1/Å
    azimuth = np.arctan2(ky, kx)
    rot = np.eye(3) if subtomo_rotation is None else np.asarray(subtomo_rotation, np.float64)
    data = np.empty((frames.size, m, nx), dtype=np.complex64)
    ctf2 = np.empty((frames.size, m, nx), dtype=np.float32)
    basis = np.empty((frames.size, 2, 3), dtype=np.float64)
    for j, f in enumerate(frames):
        p = series.projections[f, :3, :3]
        depth = 0.0
        if position_angst is not None:
            depth = series.handedness * float(p[2] @ np.asarray(position_angst, np.float64))
        u, v = series.defocus_u[f] + depth, series.defocus_v[f] + depth
        angle = np.radians(series.defocus_angle[f])
        defocus = 0.5 * (u + v) + 0.5 * (u - v) * np.cos(2.0 * (azimuth - angle))
        c = ctf(
            s,
            defocus,
            voltage_kv=series.voltage,
            cs_mm=series.cs,
            amplitude_contrast=series.amplitude_contrast,
        )
        h = (
            series.scale[f]
            * np.exp(-0.25 * series.bfactor[f] * s * s)
            * np.exp(-series.dose[f] / (2.0 * critical_exposure(s)))
        )
        data[j] = spectra[j] * (h if premultiplied else c * h)
        ctf2[j] = np.square(c * h)
        e = p[:2] / np.linalg.norm(p[:2], axis=1, keepdims=True)
        # rows: F A_sub^T e, the image axes in faml's (z-mirrored) box frame
        basis[j] = (e @ rot) * STACK_MIRROR
    acc_data = np.zeros((m, m, nx), dtype=np.complex64)
    acc_ctf2 = np.zeros((m, m, nx), dtype=np.float32)
    acc_w = np.zeros((m, m, nx), dtype=np.float32)
    insert_planes(data, ctf2, basis, acc_data, acc_ctf2, acc_w)
    hermitian_planes(acc_data, True)
    hermitian_planes(acc_ctf2, False)
    hermitian_planes(acc_w, False)
    reached = acc_w > 1e-6
    x_m = np.zeros_like(acc_data)
    np.divide(acc_data, acc_w, out=x_m, where=reached)
    mean_c2 = np.zeros_like(acc_w)
    np.divide(acc_ctf2, acc_w, out=mean_c2, where=reached)
    weight = mean_c2[::2, ::2, ::2]  # the n-grid frequencies
    kz = np.fft.fftfreq(n, d=1.0 / n)
    radius = np.sqrt(
        kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None] ** 2
    )
    weight = np.where(radius <= n / 2, np.maximum(weight, 0.0), 0.0).astype(np.float32)
    vol_m = np.fft.fftshift(scipy.fft.irfftn(x_m, s=(m, m, m), workers=1))
    vol = vol_m[o : o + n, o : o + n, o : o + n]
    spec = scipy.fft.rfftn(vol, workers=1) * (weight > 0)
    volume = scipy.fft.irfftn(spec, s=(n, n, n), workers=1)
    return np.ascontiguousarray(volume, dtype=np.float32), np.ascontiguousarray(weight)


def _visible(value, frames: int) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    flags = [int(v) for v in str(value).strip().strip("[]").split(",") if v.strip()]
    if len(flags) != frames:
        raise ValueError(f"rlnTomoVisibleFrames has {len(flags)} entries for {frames} frames")
    return np.asarray(flags, dtype=bool)


def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256(f"faml-stacks-{_CACHE_VERSION}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def prepare_stacks(
    particles_star: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    tomograms_star: str | os.PathLike[str] | None = None,
    blocks: dict | None = None,
    progress=None,
):
    """Reconstruct every 2D-stack particle of a RELION 5 set into ``cache_dir`` (once).

    Parameters
    ----------
    particles_star
        The particles STAR file (``rlnTomoSubTomosAre2DStacks 1``).
    cache_dir
        Folder for the subtomograms and weights (inside the run's output directory, never
        next to the input); reused when the inputs have not changed (a fingerprint of the
        STAR files' and stacks' sizes and times is kept there).
    tomograms_star
        The tomograms STAR file; default: the one the optimisation set in the same folder
        names, else the only ``*tomograms.star`` there.
    blocks
        The particles STAR file's blocks if already read.
    progress
        Optional ``callable(done, total)``.

    Returns
    -------
    ParticleTable
        Volumes and weights from the cache, CTF-premultiplied (module docstring); ``names``
        are the original stacks (absolute), so that faml's results STAR is a RELION 5
        2D-stack set with faml's poses.
    """
    particles_star = Path(particles_star)
    if blocks is None:
        blocks = starfile.read(particles_star, always_dict=True)
    tomo_path = Path(tomograms_star) if tomograms_star else find_tomograms_star(particles_star)
    series = read_tomograms_star(tomo_path)
    particles = blocks["particles"]
    optics = blocks.get("optics")
    stacks = [Path(p) for p in _resolve_all(particles_star, particles, "rlnImageName", True)]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stamp = _fingerprint([particles_star, tomo_path, *stacks])
    manifest = cache / "manifest.json"
    data_paths = [cache / f"particle_{i + 1:06d}.mrc" for i in range(len(particles))]
    weight_paths = [cache / f"particle_{i + 1:06d}_weight.mrc" for i in range(len(particles))]
    fresh = (
        manifest.exists()
        and json.loads(manifest.read_text()).get("fingerprint") == stamp
        and all(p.exists() for p in data_paths + weight_paths)
    )
    group_of = {}
    if isinstance(optics, pd.DataFrame):
        group_of = {int(r["rlnOpticsGroup"]): r for _, r in optics.iterrows()}
    if not fresh:
        total = len(particles)
        for i, (_, row) in enumerate(particles.iterrows()):
            name = str(row["rlnTomoName"])
            if name not in series:
                raise ValueError(f"{particles_star}: tomogram {name} not in {tomo_path}")
            ts = series[name]
            og = group_of.get(int(row.get("rlnOpticsGroup", 1)))
            pixel = float(og["rlnImagePixelSize"]) if og is not None else None
            premult = (
                bool(int(og.get("rlnCtfDataAreCtfPremultiplied", 1))) if og is not None else True
            )
            images, header_pixel = read_volume(stacks[i])
            pixel = pixel or header_pixel
            if not pixel:
                raise ValueError(f"{stacks[i]}: no pixel size in the optics group or header")
            position = None
            if all(f"rlnCenteredCoordinate{a}Angst" in row for a in "XYZ"):
                position = np.array([row[f"rlnCenteredCoordinate{a}Angst"] for a in "XYZ"], float)
            sub = None
            if all(f"rlnTomoSubtomogram{a}" in row for a in ("Rot", "Tilt", "Psi")):
                sub = euler_to_matrix(
                    np.array([row[f"rlnTomoSubtomogram{a}"] for a in ("Rot", "Tilt", "Psi")])
                )
            volume, weight = reconstruct_particle(
                images,
                ts,
                pixel,
                visible=_visible(row.get("rlnTomoVisibleFrames"), len(ts)),
                position_angst=position,
                subtomo_rotation=sub,
                premultiplied=premult,
            )
            write_volume(data_paths[i], volume, pixel)
            write_volume(weight_paths[i], weight, pixel)
            if progress is not None:
                progress(i + 1, total)
        manifest.write_text(
            json.dumps(
                {
                    "fingerprint": stamp,
                    "particles": str(particles_star.resolve()),
                    "tomograms": str(tomo_path.resolve()),
                    "version": _CACHE_VERSION,
                    "note": "faml's CTF-premultiplied subtomograms D / V and CTF² weights "
                    "C / V (faml.io.tiltstacks)",
                },
                indent=1,
            )
        )
        logger.info("reconstructed %d 2D-stack particles into %s", len(particles), cache)
    else:
        logger.info("reusing %d reconstructed 2D-stack particles in %s", len(particles), cache)
    return table_from_blocks(
        particles_star,
        blocks,
        paths=[str(p.resolve()) for p in data_paths],
        names=[str(p) for p in stacks],
        weight_paths=[str(p.resolve()) for p in weight_paths],
        ctf_premultiplied=True,
    )
