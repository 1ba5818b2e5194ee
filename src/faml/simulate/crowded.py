"""Crowded mode: tomograms packed with proteins, tilt series, WBP, subtomograms cut at picks.

Where the realistic mode (:mod:`faml.simulate.tiltseries`) makes each particle alone in its
box, this mode makes the subtomograms as they come out of real tomograms: with neighbouring
density, back-projection streaks and the CTF of the whole tilt series in every box.

For each tomogram (``N`` the box; step 1 is :mod:`faml.simulate.specimen`'s, the rest this
module's):

1. **Specimen.** A slab of ``Lxy x Lxy x Lz`` voxels (``CrowdedSettings.tomogram_size`` boxes;
   ``x, y`` even, e.g. ``4.5 N`` and ``2 N``), widened in ``x`` on both sides by
   ``ceil(Lz / 2 tan θmax) + 2`` voxels so that every ray through the tomogram at every tilt
   crosses a full specimen (a lamella is wider than the field of view). Objects are posed
   structures (``x = R x_ref + p`` about the structure's voxel ``n // 2``); each is bounded by a
   sphere (radius: the farthest voxel above 5 % of the structure's maximum, + 0.5 voxel) and
   spheres do not overlap. First the **targets** (the user's structures, rotation uniform on
   SO(3), centre uniform, such that the box plus three picking-error s.d. fits in the
   tomogram), then **distractors** (the crowd structures, each drawn uniformly, random
   rotation, centre anywhere in the specimen) by random sequential addition until the spheres
   fill ``crowding`` of the specimen's volume (or no more fit: a warning). Distractors are
   scaled to the targets' mean density (the mean over voxels above 20 % of the maximum), i.e.
   protein of one density. Default crowd: :func:`pseudo_proteins`, four blob-shaped
   pseudo-proteins of different sizes (no file needed).
2. **Tilt series.** Tilts ``min, min + step, ...`` about +Y (the convention of
   :mod:`faml.simulate.tiltseries`: image ``u = x cos θ + z sin θ`` about the tilt axis, the
   centre of the specimen, ``v = y``), one image of ``Ly x Lsx`` pixels (the widened specimen)
   per tilt. Each object's projection is its central slice (the realistic mode's kernel, the
   structure padded to ``2n``, gridding-corrected) with a 2D phase ramp for its sub-pixel
   position, added at its integer position. Each image's spectrum (zero-padded to ``2 Lsx``
   in ``u``) is multiplied by the CTF (:func:`faml.imaging.ctf.ctf`, one defocus per tilt
   series, no defocus gradient, no astigmatism), the detector MTF and the exposure filter
   ``exp(-D_t / (2 N_e(s)))`` (Grant & Grigorieff critical exposure,
   :func:`faml.imaging.exposure.critical_exposure`) with ``D_t`` the tilt's pre-exposure in a
   dose-symmetric order (0° first, then ``+step, -step, +2 step, ...``; ``D_t`` = tilts taken
   before it x ``dose_per_tilt``), and cut at the Nyquist circle. White Gaussian noise of one
   s.d. ``σ`` per tomogram is added to every detector pixel.
3. **Reconstruction** by **real-space weighted back-projection**: each image is phase-flipped
   (spectrum times ``sign(CTF)``; ``SimulationSettings.ctf_form`` ``"flipped"``, the default),
   R-weighted (the discrete Ram-Lak ramp, ``|k_u|`` in cycles/pixel with its exact DC term,
   times the tilt step in radians, so that amplitudes come out as the structure's inside the
   wedge) and back-projected along its rays with linear interpolation
   (:func:`faml.imaging.slices.backproject`) into the ``(Lz, Lxy, Lxy)`` tomogram. The
   streaks of WBP (gaps between the tilts' planes, the wedge's edges) are thus those of the
   real method. ``"signed"``: not flipped. ``"premultiplied"``: each image's spectrum (noise
   included) is multiplied once more by its ``CTF x MTF x exposure`` instead, not R-weighted
   (the unweighted back-projection of CTF-premultiplied images, whose sampling density the
   weight carries, as RELION's pseudo-subtomograms) and divided by ``2N``.
4. **Subtomograms.** Each target's pick is its true centre plus Gaussian error (s.d.
   ``pick_error`` voxels per axis), rounded to a voxel (kept inside the tomogram); the box
   ``N³`` is cut with voxel ``N // 2`` at the pick. The true pose written: the target's
   rotation, and the shift ``t = true centre - pick`` (``(x, y, z)`` voxels, so ``rlnOrigin``
   = ``-t`` Å), as in :mod:`faml.simulate.dataset`. No Fourier restriction is applied: the
   neighbours' and the noise's leakage across the wedge edges stays, as in real data.
   Weight: per tilt series (``g = CTF x MTF x E``), in the particles' CTF form:

   * flipped: the realistic mode's weight with the exposure filter included,
     ``W(k) = wedge(k) * sum_i w_i(k) |g|(k_i) / sum_i w_i(k)``, values in ``[0, 1]``;
   * signed: the same mean of the signed ``g``, values in ``[-1, 1]``;
   * premultiplied: ``C``, the weight of a point at the box centre: imaged, filtered by
     ``g²``, back-projected (unweighted, linear interpolation) into the ``N³`` box about it
     and divided by ``2N`` exactly as the particles are, ``rfftn`` (real part: the
     point-spread function is even), clipped at 0, times the wedge mask. Then
     ``rfftn(D) ≈ C ⊙ rfftn(T(A))`` at the same scale (noise-free isolated target:
     correlation 0.9998, ``D / C`` 0.99; the realistic mode's cropped sum of trilinear
     weights instead gave 0.76 and a scale that changes with frequency). ``2N`` makes ``C`` the sum
     of ``g²`` over the tilt planes that reach a voxel in the realistic mode's units (in the
     dense low-frequency region the back-projection through an ``N`` box is ``2N`` times the
     trilinear sum on the ``2N`` grid that the realistic mode samples); values reach about
     half the number of tilts.

   RELION ``rlnCtfImage``, `(N, N, N//2+1)`. Flipped and signed: one file per tilt series
   (``weights/weight_tomogram_NNN.mrc``) that all its particles name; premultiplied: a copy
   per particle, RELION 4/5's ``Subtomograms/tomogram_NNN/<k>_weights.mrc`` beside
   ``<k>_data.mrc`` (``k`` 1-based within the tilt series).

SNR
---
``snr = sum_j var(S_j) / sum_j var(E_j)`` over the targets ``j`` of a tomogram, ``S_j`` the
noise-free subtomogram as cut (the target, its neighbours, the CTF) and ``E_j`` the noise part
of the same box, variances over the ``N³`` voxels: one ``σ`` per tilt series, chosen from a
reconstruction of its own unit-variance noise so that the ratio is met exactly. For an isolated
particle this is the realistic mode's definition; neighbours count as signal. ``σ`` is always
calibrated on the flipped form (reconstructed for it when another form is asked for): the
three forms of one seed share poses, picks, neighbours, noise images and noise level.

Randomness
----------
Classes (shuffled), target rotations and the tomograms' defocus values come from
``numpy.random.default_rng(seed)`` in this order; everything of tomogram ``t`` (positions,
distractors, picking errors, noise) from its own stream
``SeedSequence([seed, 0x63726f77], spawn_key=(t,))``. Tomograms are made in parallel; the data
do not depend on the number of workers.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from faml.geometry.axes import box_center
from faml.geometry.wedge import wedge_mask
from faml.imaging.ctf import ctf, detector_mtf
from faml.imaging.exposure import critical_exposure
from faml.imaging.slices import backproject, extract_slices, hermitian_planes, insert_planes
from faml.io.mrc import write_volume
from faml.parallel import make_executor
from faml.simulate import dataset as _ds
from faml.simulate.fast import Truth
from faml.simulate.specimen import (
    CrowdedSettings,
    _Geometry,
    _geometry,
    _inner_mean,
    _layout,
    pseudo_proteins,
    structure_radius,
)
from faml.simulate.tiltseries import (
    PreparedStructure,
    SimulationSettings,
    _transfer,
)

__all__ = ["CrowdedSettings", "pseudo_proteins", "simulate_crowded", "structure_radius"]

logger = logging.getLogger(__name__)

_TOMOGRAMS = "tomograms"
_TARGET_FILL = 0.1  # default targets per tomogram: their spheres fill this share of it
_METHOD = {
    "flipped": "real-space weighted back-projection of phase-flipped, CTF/MTF/exposure-"
    "filtered tilt series of crowded slabs (faml.simulate.crowded)",
    "signed": "real-space weighted back-projection of CTF/MTF/exposure-filtered tilt series "
    "of crowded slabs, not phase-flipped (faml.simulate.crowded)",
    "premultiplied": "real-space back-projection, not R-weighted, of CTF/MTF/exposure-filtered "
    "tilt series of crowded slabs multiplied again by their CTF x MTF x exposure, divided by "
    "2N: CTF-premultiplied, with the CTF^2 sum as weight (faml.simulate.crowded)",
}
_STREAM = 0x63726F77  # "crow": the tomograms' streams differ from the particles' of dataset


def _tomogram_rng(seed: int, t: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM], spawn_key=(t,)))


@dataclass(frozen=True)
class _Job:
    """What a worker needs to make tomograms (pickled to worker processes)."""

    token: str
    settings: SimulationSettings
    crowd: CrowdedSettings
    geometry: _Geometry
    seed: int
    structures: tuple[np.ndarray, ...]  # targets first, then distractors (scaled)
    n_targets: int  # structures[:n_targets] are the classes
    radii: tuple[float, ...]
    classes: np.ndarray
    rotations: np.ndarray
    members: tuple[tuple[int, ...], ...]  # particle indices per tomogram
    defocus_um: np.ndarray  # per tomogram
    particle_paths: tuple[str, ...]
    weight_paths: tuple[str, ...]  # per particle (a tomogram's particles may share one)
    tomogram_paths: tuple[str, ...]


def _prepared(job: _Job, k: int) -> PreparedStructure:
    """Structure ``k`` of the job, prepared once per process.

    The cache of :mod:`faml.simulate.dataset`, keyed by the job's token.
    """
    return _ds._prepared(job, k)


def _tilt_order(tilts: np.ndarray) -> np.ndarray:
    """`(T,)` rank of each tilt in a dose-symmetric acquisition (0° first, then +, -, ...)."""
    key = np.lexsort((-tilts, np.round(np.abs(tilts), 6)))
    rank = np.empty(tilts.size, dtype=np.int64)
    rank[key] = np.arange(tilts.size)
    return rank


def _render(job, kinds, rots, centres, cos_t, sin_t) -> np.ndarray:
    """`(T, Ly, Lsx)` float32 noise-free projections of the objects (no CTF)."""
    g = job.geometry
    xa, za = g.axis
    images = np.zeros((cos_t.size, g.lxy, g.lsx), dtype=np.float32)
    zero = np.zeros(3)
    for k, rot, p in zip(kinds, rots, centres, strict=True):
        prep = _prepared(job, k)
        m = 2 * prep.box
        h = m // 2
        nx = h + 1
        spec = np.empty((cos_t.size, m, nx), dtype=np.complex64)
        ones = np.ones((m, nx), dtype=np.float32)
        extract_slices(prep.spectrum, np.ascontiguousarray(rot.T), cos_t, sin_t, zero, ones, spec)
        u = (p[0] - xa) * cos_t + (p[2] - za) * sin_t + xa
        u0 = np.floor(u)
        v0 = math.floor(p[1])
        ku = np.arange(nx) / m
        kv = np.fft.fftfreq(m)
        ramp = np.exp(-2j * np.pi * (u - u0)[:, None, None] * ku[None, None, :])
        ramp = ramp * np.exp(-2j * np.pi * (p[1] - v0) * kv)[None, :, None]
        proj = scipy.fft.irfft2(spec * ramp.astype(np.complex64), s=(m, m), workers=1)
        proj = np.fft.fftshift(proj, axes=(-2, -1)).astype(np.float32)
        for t in range(cos_t.size):
            a, b = v0 - h, int(u0[t]) - h
            ya, yb = max(a, 0), min(a + m, g.lxy)
            xa_, xb = max(b, 0), min(b + m, g.lsx)
            if ya < yb and xa_ < xb:
                images[t, ya:yb, xa_:xb] += proj[t, ya - a : yb - a, xa_ - b : xb - b]
    return images


def _exposure(s: np.ndarray, dose: np.ndarray) -> np.ndarray:
    """`(T, ...)` exposure filter ``exp(-D_t / (2 N_e(s)))``."""
    return np.exp(-dose.reshape((-1,) + (1,) * s.ndim) / (2.0 * critical_exposure(s))[None])


def _image_transfer(shape, settings: SimulationSettings, defocus_um: float, dose: np.ndarray):
    """`(T, Ly, Lu//2+1)` CTF x MTF x exposure of `(Ly, Lu)` images; Nyquist circle cut."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    ku = np.fft.rfftfreq(shape[1])[None, :]
    k = np.sqrt(ky**2 + ku**2)  # cycles/pixel
    out = np.ones_like(k)
    if settings.ctf:
        out = out * ctf(
            k / settings.voxel_size,
            defocus_um * 1e4,
            voltage_kv=settings.voltage_kv,
            cs_mm=settings.cs_mm,
            amplitude_contrast=settings.amplitude_contrast,
        )
    if settings.mtf:
        out = out * detector_mtf(2.0 * k)
    out = np.where(k < 0.5, out, 0.0)
    return out[None] * _exposure(k / settings.voxel_size, dose)


def _ram_lak(length: int) -> np.ndarray:
    """`(length//2+1,)` the discrete Ram-Lak ramp (``|k|`` cycles/pixel, exact DC term)."""
    n = np.fft.fftfreq(length, d=1.0 / length)
    h = np.zeros(length)
    h[0] = 0.25
    odd = (np.abs(n) % 2) == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return np.fft.rfft(h).real


def _weight(job: _Job, defocus_um: float, tilts: np.ndarray, dose: np.ndarray) -> np.ndarray:
    """`(N, N, N//2+1)` the tilt series' 3D weight (module docstring), ``rfftn`` layout."""
    s = job.settings
    n = job.geometry.box
    m = 2 * n
    nx = m // 2 + 1
    theta = np.radians(tilts)
    if s.ctf_form == "premultiplied":
        return _premultiplied_weight(job, defocus_um, theta, dose)
    transfer = _transfer(m, s, defocus_um)[None] * _exposure(
        np.hypot(np.fft.fftfreq(m)[:, None], np.fft.rfftfreq(m)[None, :]) / s.voxel_size, dose
    )
    form = s.ctf_form
    g = {"flipped": np.abs(transfer), "signed": transfer}.get(form, np.square(transfer))
    g = g.astype(np.float32)
    basis = np.zeros((tilts.size, 2, 3))
    basis[:, 0, 0], basis[:, 0, 2], basis[:, 1, 1] = np.cos(theta), np.sin(theta), 1.0
    acc_d = np.zeros((m, m, nx), dtype=np.complex64)
    acc_g = np.zeros((m, m, nx), dtype=np.float32)
    acc_w = np.zeros((m, m, nx), dtype=np.float32)
    data = np.zeros((tilts.size, m, nx), dtype=np.complex64)
    insert_planes(data, g, basis, acc_d, acc_g, acc_w)
    hermitian_planes(acc_g, False)
    hermitian_planes(acc_w, False)
    observed = wedge_mask(n, (tilts[0], tilts[-1]), cutoff_radius=n / 2)
    mean = np.divide(acc_g, acc_w, out=np.zeros_like(acc_g), where=acc_w > 0)[::2, ::2, ::2]
    low = -1.0 if form == "signed" else 0.0
    return np.clip(mean * observed, low, 1.0).astype(np.float32)


def _premultiplied_weight(job: _Job, defocus_um: float, theta: np.ndarray, dose) -> np.ndarray:
    """`(N, N, N//2+1)` the premultiplied weight: the box's view of a point's back-projection.

    A point at the box centre, imaged and filtered as the particles are (times ``(CTF MTF
    E)²``), back-projected (no R-weighting, linear interpolation) into the ``N³`` box about
    it, over ``2N``: ``rfftn`` of that (real part, the point-spread function is even) is ``C``
    with ``rfftn(D) ≈ C ⊙ rfftn(posed structure)`` (module docstring).
    """
    s = job.settings
    n = job.geometry.box
    rows, width = 2 * n, 4 * n  # room for the CTF's spread and every ray through the box
    point = np.zeros((theta.size, rows, width), dtype=np.float32)
    point[:, n, 2 * n] = 1.0
    transfer = _image_transfer((rows, width), s, defocus_um, dose)
    spec = scipy.fft.rfft2(point, workers=1) * (np.square(transfer) / (2 * n))
    images = scipy.fft.irfft2(spec, s=(rows, width), workers=1)[:, n - n // 2 : 2 * n - n // 2]
    images = np.ascontiguousarray(images, dtype=np.float32)
    psf = np.zeros((n, n, n), dtype=np.float32)
    c = float(box_center(n))
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    backproject(images, images, cos_t, sin_t, 2 * n - c, 2.0 * n, c, psf, np.zeros_like(psf))
    weight = scipy.fft.rfftn(np.fft.ifftshift(psf), workers=1).real
    observed = wedge_mask(n, (math.degrees(theta[0]), math.degrees(theta[-1])), cutoff_radius=n / 2)
    return (np.clip(weight, 0.0, None) * observed).astype(np.float32)


def _backprojected(job: _Job, signal, noise, rweight, lu: int, cos_t, sin_t):
    """`(Lz, Lxy, Lxy)` float32 back-projections of two image spectra times ``rweight``."""
    g = job.geometry
    sig = scipy.fft.irfft2(signal * rweight, s=(g.lxy, lu), workers=1).astype(np.float32)
    noi = scipy.fft.irfft2(noise * rweight, s=(g.lxy, lu), workers=1).astype(np.float32)
    rec_s = np.zeros((g.lz, g.lxy, g.lxy), dtype=np.float32)
    rec_n = np.zeros_like(rec_s)
    xa, za = g.axis
    backproject(sig, noi, cos_t, sin_t, float(g.ext), float(xa), float(za), rec_s, rec_n)
    return rec_s, rec_n


def _make_tomogram(job: _Job, t: int) -> dict:
    """Make tomogram ``t``, write its particles and weight; its figures and truth."""
    s, g, n = job.settings, job.geometry, job.geometry.box
    rng = _tomogram_rng(job.seed, t)
    tilts = s.tilt_angles()
    theta = np.radians(tilts)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    dose = _tilt_order(tilts) * job.crowd.dose_per_tilt
    defocus = float(job.defocus_um[t])

    kinds, rots, centres, crowding = _layout(job, t, rng)
    ids = job.members[t]
    n_t = len(ids)
    true_tomo = centres[:n_t] - np.array([g.ext, 0.0, 0.0])  # (x, y, z) in the tomogram
    error = rng.normal(0.0, job.crowd.pick_error, (n_t, 3)) if job.crowd.pick_error else 0.0
    size = np.array([g.lxy, g.lxy, g.lz])
    lo = box_center(n)
    picks = np.clip(np.round(true_tomo + error), lo, size - n + lo).astype(np.int64)

    images = _render(job, kinds, rots, centres, cos_t, sin_t)
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    lu = scipy.fft.next_fast_len(2 * g.lsx)
    transfer = _image_transfer((g.lxy, lu), s, defocus, dose)
    flip, cut_off = np.sign(transfer), transfer != 0
    ramp = (_ram_lak(lu) * math.radians(s.tilt_step))[None, None, :]
    spec = scipy.fft.rfft2(images, s=(g.lxy, lu), workers=1)
    noise_spec = scipy.fft.rfft2(noise, s=(g.lxy, lu), workers=1)
    del images, noise
    # the flipped form, always: it calibrates sigma, the same in every form
    filtered = spec * (transfer * flip)
    images_ctf = scipy.fft.irfft2(filtered, s=(g.lxy, lu), workers=1)[:, :, : g.lsx]
    noise_flipped = noise_spec * (flip * cut_off)
    rec_s, rec_n = _backprojected(job, filtered, noise_flipped, ramp, lu, cos_t, sin_t)
    del filtered, noise_flipped

    def cut(vol: np.ndarray, pick: np.ndarray) -> np.ndarray:
        x, y, z = pick - lo
        return vol[z : z + n, y : y + n, x : x + n]

    boxes_s = [cut(rec_s, p) for p in picks]
    boxes_n = [cut(rec_n, p) for p in picks]
    var_s = np.array([np.var(b, dtype=np.float64) for b in boxes_s])
    var_n = np.array([np.var(b, dtype=np.float64) for b in boxes_n])
    sigma = math.sqrt(var_s.sum() / (s.snr * var_n.sum())) if var_n.sum() > 0 else 0.0
    projection_snr = float(np.var(images_ctf, dtype=np.float64)) / sigma**2 if sigma else math.inf
    if s.ctf_form != "flipped":
        if s.ctf_form == "signed":  # as recorded, R-weighted
            pair = (spec * transfer, noise_spec * cut_off, ramp)
        else:  # premultiplied: times the CTF again, not R-weighted, 1/M: module docstring
            pair = (spec * np.square(transfer), noise_spec * transfer, 1.0 / (2 * n))
        del spec, noise_spec
        rec_s, rec_n = _backprojected(job, *pair, lu, cos_t, sin_t)
        boxes_s = [cut(rec_s, p) for p in picks]
        boxes_n = [cut(rec_n, p) for p in picks]
    for j, i in enumerate(ids):
        if s.components == "both":
            vol = boxes_s[j] + np.float32(sigma) * boxes_n[j]
        elif s.components == "signal":
            vol = boxes_s[j]
        else:
            vol = np.float32(sigma) * boxes_n[j]
        write_volume(job.particle_paths[i], np.ascontiguousarray(vol), s.voxel_size)
    weight = _weight(job, defocus, tilts, dose)
    for path in dict.fromkeys(job.weight_paths[i] for i in ids):  # one file, or one a particle
        write_volume(path, weight, s.voxel_size)
    if job.crowd.write_tomograms:
        tomo = {"both": rec_s + np.float32(sigma) * rec_n, "signal": rec_s}.get(
            s.components, np.float32(sigma) * rec_n
        )
        write_volume(job.tomogram_paths[t], tomo, s.voxel_size)
    return {
        "ids": list(ids),
        "shifts": (true_tomo - picks).tolist(),
        "positions": true_tomo.tolist(),
        "picks": picks.tolist(),
        "signal_variance": var_s.tolist(),
        "noise_sigma": sigma,
        "projection_snr": projection_snr,
        "crowding": crowding,
        "objects": int(kinds.size),
        "distractors": int(np.sum(kinds >= job.n_targets)),
    }


def _per_tomogram(n: int, tomograms: int | None, geometry: _Geometry, radius: float) -> int:
    if tomograms is None:
        volume = geometry.lxy**2 * geometry.lz
        per = max(1, int(_TARGET_FILL * volume / (4.0 / 3.0 * math.pi * radius**3)))
        return math.ceil(n / per)
    return min(int(tomograms), n)


def simulate_crowded(
    structures: Sequence[np.ndarray],
    names: Sequence[str],
    n_each: int | Sequence[int],
    out_dir: str | os.PathLike[str],
    settings: SimulationSettings,
    crowd: CrowdedSettings | None = None,
    *,
    crowd_structures: Sequence[np.ndarray] | None = None,
    crowd_names: Sequence[str] | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Truth:
    """Simulate crowded tomograms and write a simulation directory of their subtomograms.

    The directory is :func:`faml.simulate.simulate`'s (``particles/``, ``weights/``,
    ``particles.star``, ``truth/``), so ``faml run`` and ``faml evaluate --truth`` read it
    unchanged; the weights are one per tilt series (``weights/weight_tomogram_NNN.mrc``; a
    copy per particle beside it in ``Subtomograms/`` when premultiplied, see the module),
    ``particles.star`` also has ``rlnTomoName`` and the picks ``rlnCoordinate{X,Y,Z}``
    (voxels), and ``truth.json`` a ``crowded`` record (per tomogram: defocus, objects,
    crowding, noise; per particle: tomogram, true centre, pick). The method, the SNR and the
    random streams are in the module docstring.

    Parameters
    ----------
    structures, names, n_each, out_dir, settings, seed, workers, progress, overwrite
        As :func:`faml.simulate.simulate` (``settings.max_shift`` is not used: the shifts
        come from the picking error; ``settings.snr``: see the module docstring).
    crowd
        The crowded mode's parameters (default :class:`CrowdedSettings`).
    crowd_structures
        Distractors, each `(n, n, n)` with ``n <= N`` (any scale: they are rescaled to the
        targets' density); default :func:`pseudo_proteins`.
    crowd_names
        Their names, for ``truth.json``.

    Returns
    -------
    Truth
        Rotations `(n, 3, 3)`, shifts `(n, 3)` (voxels, true centre - pick), 0-based classes,
        particle and weight paths, ``particles.star``.
    """
    crowd = CrowdedSettings() if crowd is None else crowd
    vols, names = _ds._check_structures(structures, names)
    counts = _ds._counts(n_each, len(vols))
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    box = vols[0].shape[0]
    if crowd_structures is None:
        others = pseudo_proteins(box)
        crowd_names = [f"pseudo-protein {j + 1}" for j in range(len(others))]
    else:
        others = [np.ascontiguousarray(v, dtype=np.float32) for v in crowd_structures]
        crowd_names = [str(c) for c in (crowd_names or range(1, len(others) + 1))]
        for v in others:
            if v.ndim != 3 or len(set(v.shape)) != 1 or v.shape[0] > box:
                raise ValueError(
                    f"crowd structures must be cubes of at most {box}^3, got {v.shape}"
                )
    density = float(np.mean([_inner_mean(v) for v in vols]))
    others = [v * np.float32(density / _inner_mean(v)) for v in others]
    geometry = _geometry(box, settings, crowd)
    radii = tuple(structure_radius(v) for v in (*vols, *others))
    out = Path(out_dir)
    _ds._prepare_folder(out, overwrite, settings)
    if overwrite and (out / _TOMOGRAMS).is_dir():
        for f in (out / _TOMOGRAMS).glob("tomogram_*.mrc"):
            f.unlink()

    rng = np.random.default_rng(seed)
    classes, rotations = _ds.draw_classes_rotations(counts, settings, rng)
    n = classes.size
    n_tomo = _per_tomogram(n, crowd.tomograms, geometry, max(radii[: len(vols)]))
    defocus = settings.defocus_um + settings.defocus_jitter_um * rng.standard_normal(n_tomo)
    bounds = np.linspace(0, n, n_tomo + 1).round().astype(int)
    members = tuple(tuple(range(bounds[t], bounds[t + 1])) for t in range(n_tomo))
    tomo_of = np.repeat(np.arange(n_tomo), np.diff(bounds))

    tomo_names, particle_names, image_names, weight_names = _ds.relion_names(tomo_of)
    tomo_weights: tuple[str, ...] = ()  # one weight file per tilt series, not premultiplied
    if settings.premultiplied:  # RELION's names: each particle its own copy of the weight
        _ds._make_parents(out, image_names)
    else:
        image_names = tuple(f"{_ds._PARTICLES}/particle_{i:06d}.mrc" for i in range(n))
        tomo_weights = tuple(
            f"{_ds._WEIGHTS}/weight_{_ds._TOMOGRAM.format(t + 1)}.mrc" for t in range(n_tomo)
        )
        weight_names = tuple(tomo_weights[t] for t in tomo_of)
    if crowd.write_tomograms:
        (out / _TOMOGRAMS).mkdir(exist_ok=True)
    job = _Job(
        token=uuid.uuid4().hex,
        settings=settings,
        crowd=crowd,
        geometry=geometry,
        seed=int(seed),
        structures=(*vols, *others),
        n_targets=len(vols),
        radii=radii,
        classes=classes,
        rotations=rotations,
        members=members,
        defocus_um=defocus,
        particle_paths=tuple(str(out / p) for p in image_names),
        weight_paths=tuple(str(out / w) for w in weight_names),
        tomogram_paths=tuple(
            str(out / _TOMOGRAMS / f"tomogram_{t + 1:03d}.mrc") for t in range(n_tomo)
        ),
    )
    logger.info(
        "simulating %d particles of %d structures in %d crowded tomograms (%dx%dx%d, %d^3 "
        "boxes, SNR %g) in %s",
        n,
        len(vols),
        n_tomo,
        geometry.lxy,
        geometry.lxy,
        geometry.lz,
        box,
        settings.snr,
        out,
    )
    for k, vol in enumerate(vols):
        write_volume(out / _ds._TRUTH / f"class_{k + 1:03d}.mrc", vol, settings.voxel_size)

    start = time.perf_counter()
    results: list[dict] = []
    executor = make_executor(int(workers))
    try:
        for result in executor.map(
            _make_tomogram,
            list(range(n_tomo)),
            shared=job,
            sizes=[len(m) for m in members],
            label="simulate",
        ):
            results.append(result)
            if progress is not None:
                progress(sum(len(r["ids"]) for r in results), n)
    finally:
        executor.close()
        _ds._PREPARED.clear()
    logger.info("simulated %d crowded tomograms in %.1f s", n_tomo, time.perf_counter() - start)

    shifts = np.zeros((n, 3))
    positions = np.zeros((n, 3))
    picks = np.zeros((n, 3), dtype=np.int64)
    records: list[dict] = [{} for _ in range(n)]
    for r in results:
        for j, i in enumerate(r["ids"]):
            shifts[i], positions[i], picks[i] = r["shifts"][j], r["positions"][j], r["picks"][j]
            records[i] = {
                "noise_sigma": r["noise_sigma"],
                "signal_variance": r["signal_variance"][j],
                "projection_snr": r["projection_snr"],
            }
    ds_job = _ds._Job(
        token=job.token,
        mode="crowded",
        settings=settings,
        seed=int(seed),
        structures=vols,
        classes=classes,
        rotations=rotations,
        shifts=shifts,
        defocus_um=defocus[tomo_of],
        particle_paths=job.particle_paths,
        weight_paths=job.weight_paths,
        wedge_path="",
    )
    extra_cols = {
        "rlnTomoName": list(tomo_names),
        **({"rlnTomoParticleName": list(particle_names)} if settings.premultiplied else {}),
        "rlnCoordinateX": picks[:, 0].astype(np.float64),
        "rlnCoordinateY": picks[:, 1].astype(np.float64),
        "rlnCoordinateZ": picks[:, 2].astype(np.float64),
    }
    record = {
        "method": _METHOD[settings.ctf_form],
        "settings": crowd.as_dict(),
        "tomogram_shape_zyx": [geometry.lz, geometry.lxy, geometry.lxy],
        "specimen_width_x": geometry.lsx,
        "crowd_structures": list(crowd_names),
        "radii_voxels": list(radii),
        "tomograms": [
            {
                "name": f"tomogram_{t + 1:03d}",
                "defocus_um": float(defocus[t]),
                "particles": len(r["ids"]),
                "objects": r["objects"],
                "distractors": r["distractors"],
                "crowding": r["crowding"],
                "noise_sigma": r["noise_sigma"],
                "projection_snr": r["projection_snr"],
                "weight": tomo_weights[t] if tomo_weights else None,
            }
            for t, r in enumerate(results)
        ],
        "tomogram_of_particle": (tomo_of + 1).tolist(),
        "true_centres_voxels": positions.tolist(),
        "picks_voxels": picks.tolist(),
        "dose_per_tilt": crowd.dose_per_tilt,
        "pre_exposure": (_tilt_order(settings.tilt_angles()) * crowd.dose_per_tilt).tolist(),
    }
    _ds._write_outputs(
        out,
        ds_job,
        names,
        counts,
        image_names,
        weight_names,
        records,
        n_each,
        extra_cols=pd.DataFrame(extra_cols),
        extra_truth={"crowded": record},
    )
    return Truth(
        rotations=rotations,
        shifts=shifts,
        classes=classes,
        paths=job.particle_paths,
        weight_paths=ds_job.weight_paths,
        star_path=str(out / "particles.star"),
    )
