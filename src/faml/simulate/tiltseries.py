"""Realistic subtomograms (paper section 3.1): tilt series with CTF, MTF and noise, reconstructed.

For one particle (a structure ``V`` at pose ``(R, t)``):

1. **Pose.** The particle is ``T_(R,t) V`` in faml's / RELION's convention
   (:mod:`faml.geometry.transform`): ``x_particle = R x_reference + t`` about voxel ``N // 2``,
   ``t = (x, y, z)`` in voxels.
2. **Projections.** Tilt ``θ`` (about +Y, the sign convention of :mod:`faml.geometry.wedge`)
   projects the particle rotated by ``R_y(θ)`` along the beam (z). By the central-slice theorem
   its 2D spectrum is the plane ``q = (kx cos θ, ky, kx sin θ)`` of the particle's 3D spectrum,
   i.e. the reference's spectrum at ``R^T q`` times the phase ramp of ``t``. The reference is
   zero-padded to ``M = 2N`` (so each image is `(M, M)`, the whole particle at any tilt, no
   wrap-around) and pre-divided by the trilinear interpolation kernel's real-space profile
   (``sinc²(x / M)`` per axis, the gridding correction); its spectrum is then sampled by
   trilinear interpolation (:func:`faml.imaging.slices.extract_slices`). Frequencies beyond
   the Nyquist sphere (``|k| >= 0.5`` cycles/voxel) are zero. Tilts: ``min, min + step, ...``
   up to ``max`` (included when the step divides the range).
3. **Optics.** Each image's spectrum is multiplied by the CTF (:func:`faml.imaging.ctf.ctf`:
   RELION's sign convention, ``CTF(0) = +Q``, positive first lobe, defocus positive for
   underfocus; the particle's defocus is the same at every tilt, i.e. the particle sits on the
   tilt axis) and by the detector MTF ``sinc(π w / 2)``, ``w = |k| / k_Nyquist`` radial
   (:func:`faml.imaging.ctf.detector_mtf`). The detector pixel equals the voxel.
4. **Noise.** White Gaussian noise of one standard deviation ``σ`` (per particle) is added to
   every pixel of every `(M, M)` image, after the CTF and the MTF.
5. **Reconstruction** by direct Fourier inversion: each image's 2D spectrum is inserted at its
   plane into a 3D `(M, M, M//2+1)` grid with trilinear weights
   (:func:`faml.imaging.slices.insert_slices`); the sums are made Hermitian on the
   self-conjugate planes ``kx = 0`` and ``kx = M/2`` and divided voxel by voxel by the sum of
   weights (the sampling density; voxels that no plane reaches are 0), and the inverse FFT is
   cropped to the central `(N, N, N)` box. This normalised interpolation needs no real-space
   gridding correction: with one (on a noise-free, exactly rotated test) the amplitudes came out
   2-4 % high at all frequencies, without it within 1.5 % up to 0.45 cycles/voxel. Finally the
   subtomogram is restricted in Fourier space to the support of its weight volume (below): the
   exact missing wedge of the tilts used, within the Nyquist sphere. Cutting the box out of the
   padded reconstruction (as extracting a subtomogram from a tomogram does) otherwise leaks about
   10 % of the noise energy across the wedge's edges, and faml's model has the particle observed
   exactly where its weight is non-zero. Without noise, CTF and MTF the result is the particle
   multiplied by the wedge mask, up to interpolation error.

SNR
---
``snr = var(S) / var(E)``, measured **per particle on the final subtomogram**: ``S`` is the
noise-free reconstruction (steps 1-3 and 5 without step 4) and ``E`` the reconstruction of the
noise alone, both variances taken over all ``N³`` voxels of the box. Reconstruction is linear,
so the particle is ``S + E``; ``σ`` (step 4) is chosen from one reconstruction of the particle's
own unit-variance noise images so that the ratio is met exactly for that noise realisation,
always on the phase-flipped form: the signed and premultiplied forms reuse its ``σ`` (their own
ratio differs; "Weight volume" below). The
projection-level ratio ``var(noise-free images over the whole tilt series) / σ²`` differs (it is
recorded as ``projection_snr``). This is the SNR an analysis of aligned subtomograms measures
(the paper's experimental SNRs, section 3.2.2), comparable to the fast mode's.

Weight volume
-------------
Per particle, RELION's ``rlnCtfImage`` in FFTW half layout (numpy ``rfftn`` of a ``(z, y, x)``
volume: `(N, N, N//2+1)`, DC at ``[0, 0, 0]``, not shifted), in the particle's CTF form
(``SimulationSettings.ctf_form``; DESIGN.md section 2). ``g = CTF · MTF`` of a tilt sample;
all forms share step 4's noise images and ``σ``.

* ``"flipped"`` (default): the images are phase-flipped (spectrum times ``sign(CTF)``, as
  IMOD's ctfphaseflip does before a tomogram is reconstructed; white noise stays white, so the
  noise images are used as drawn), the particle carries ``|g|`` and::

      W(k) = wedge(k) * sum_i w_i(k) |g|(k_i) / sum_i w_i(k)

  the insertion-weighted mean of ``|g|`` over the tilt samples that reach voxel ``k`` (``w_i``
  their trilinear weights), 0 where none does, times the exact missing-wedge mask of the tilts
  used (:func:`faml.geometry.wedge.wedge_mask`), cut at the Nyquist sphere (``|k| <= N/2``):
  values in ``[0, 1]``, RELION's 3D CTF of phase-flipped data (``--ctf_phase_flipped``).
  Without CTF and MTF it is the wedge mask.
* ``"signed"``: the images as recorded (not flipped), the particle carries the signed ``g``,
  and ``W`` is the same mean of the signed ``g``, values in ``[-1, 1]``: ``X = W ⊙ T(A) +
  noise`` holds (measured: correlation 0.998 where ``|W| > 0.1``).
* ``"premultiplied"`` (RELION 4/5 pseudo-subtomograms, ``rlnCtfDataAreCtfPremultiplied 1``):
  each image's spectrum, noise included, is multiplied by its ``g`` (so the noise variance is
  ``∝ g²``), the sums of step 5 are *not* divided by the sampling density (the particle ``D``
  is the crop of ``irfftn(sum_i w_i g_i image_i)``), and the weight is the sum
  ``C(k) = sum_i w_i(k) g²(k_i)`` as the box sees it: its point-spread function cropped to the
  ``N`` box like the particle (:func:`_cropped`), times the wedge mask, ``>= 0``. Then
  ``rfftn(D) ≈ C ⊙ rfftn(T(A))`` at the same scale (measured on a noise-free particle:
  correlation 0.999, ``D / C`` 0.98). At low frequency every tilt reaches a voxel with
  ``w ≈ 1``, so ``C`` reaches about the number of tilts times ``g²`` (0.7 of the number of
  tilts at 6 µm defocus), like RELION's weights.

``σ`` is calibrated on the flipped form in every form (the flipped reconstruction is made
for it when another form is asked for), so the three forms of one seed hold the same poses,
noise images and noise level; ``signal_variance`` and ``projection_snr`` are the flipped
form's too. The support of the Fourier restriction of step 5 is the flipped weight's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

from faml.geometry.axes import box_center
from faml.geometry.wedge import wedge_mask
from faml.imaging.ctf import ctf, detector_mtf
from faml.imaging.slices import extract_slices, hermitian_planes, insert_slices

__all__ = [
    "COMPONENTS",
    "CTF_FORMS",
    "SimulationSettings",
    "PreparedStructure",
    "SimulatedParticle",
    "prepare_structure",
    "simulate_particle",
]

logger = logging.getLogger(__name__)

COMPONENTS = ("both", "signal", "noise")
CTF_FORMS = ("flipped", "signed", "premultiplied")
"""How simulated particles carry the CTF (``SimulationSettings.ctf_form``)."""
_AXES = (None, "x", "y", "z")
_ANGLE_TOL = 1e-6  # degrees: a last tilt this close to the range's maximum counts as it


@dataclass(frozen=True)
class SimulationSettings:
    """Physical and acquisition parameters of a simulation (both modes).

    Attributes
    ----------
    voxel_size
        Å per voxel (the detector pixel in the realistic mode).
    snr
        Target signal-to-noise ratio, signal variance / noise variance (see the module
        docstring for where it is measured).
    tilt_range
        ``(min, max)`` tilt angles about Y in degrees, ``-90 < min < max < 90``, need not be
        symmetric.
    tilt_step
        Tilt increment in degrees (realistic mode).
    defocus_um
        Defocus in µm, positive for underfocus (realistic mode).
    defocus_jitter_um
        Standard deviation of a per-particle Gaussian jitter of the defocus, in µm.
    voltage_kv
        Acceleration voltage (kV).
    cs_mm
        Spherical aberration (mm).
    amplitude_contrast
        Amplitude contrast ``Q``.
    ctf
        Apply the CTF (realistic mode).
    ctf_form
        How the particles carry the CTF (:data:`CTF_FORMS`, module docstring, "Weight
        volume"): ``"flipped"`` (default) phase-flipped images, the particle carries
        ``|CTF| MTF`` and its weight is the mean ``|CTF MTF|`` (RELION's 3D CTF of
        phase-flipped data); ``"signed"`` images as recorded, the particle carries the signed
        CTF and its weight is the mean signed ``CTF MTF`` in ``[-1, 1]``; ``"premultiplied"``
        each image multiplied by its ``CTF MTF`` (noise too) and the weight is the sum of
        ``(CTF MTF)²`` (RELION 4/5 pseudo-subtomograms, ``rlnCtfDataAreCtfPremultiplied 1``).
        The first two are not premultiplied (``X = c ⊙ T(A) + noise``), the third is
        (``D = C ⊙ T(A) + noise``, noise variance ∝ ``C``).
    mtf
        Apply the detector MTF (realistic mode).
    rotation_axis
        ``None``: rotations uniform on SO(3). ``"x"``, ``"y"`` or ``"z"``: rotations about that
        axis only, angle uniform in ``[0, 360)`` (preferred orientation, paper section 3.2.1,
        uses ``"y"``).
    max_shift
        Shifts are uniform in ``[-max_shift, max_shift]`` voxels along each axis.
    components
        What the particles hold: ``"both"`` (signal + noise), ``"signal"`` (noise-free) or
        ``"noise"`` (the noise alone, at the level the signal would set).
    """

    voxel_size: float
    snr: float
    tilt_range: tuple[float, float] = (-60.0, 60.0)
    tilt_step: float = 2.0
    defocus_um: float = 3.0
    defocus_jitter_um: float = 0.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    ctf: bool = True
    ctf_form: str = "flipped"
    mtf: bool = True
    rotation_axis: str | None = None
    max_shift: float = 2.0
    components: str = "both"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise ValueError(f"voxel_size must be positive (Å), got {self.voxel_size!r}")
        if not (self.snr > 0):  # also rejects NaN
            raise ValueError(f"snr must be positive, got {self.snr!r}")
        try:
            lo, hi = (float(a) for a in self.tilt_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"tilt_range must be (min, max) degrees, got {self.tilt_range!r}"
            ) from None
        if not (-90.0 < lo < hi < 90.0):
            raise ValueError(f"tilt_range must satisfy -90 < min < max < 90, got ({lo}, {hi})")
        object.__setattr__(self, "tilt_range", (lo, hi))
        if not (0.0 < self.tilt_step <= hi - lo):
            raise ValueError(
                f"tilt_step must be positive and at most the tilt range ({hi - lo:g}°), "
                f"got {self.tilt_step!r}"
            )
        if not (self.defocus_jitter_um >= 0):
            raise ValueError(f"defocus_jitter_um must be >= 0, got {self.defocus_jitter_um!r}")
        if not (self.voltage_kv > 0 and self.cs_mm >= 0):
            raise ValueError(f"need voltage > 0 and Cs >= 0, got {self.voltage_kv}, {self.cs_mm}")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise ValueError(f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}")
        if self.rotation_axis not in _AXES:
            raise ValueError(f"rotation_axis must be one of {_AXES}, got {self.rotation_axis!r}")
        if not (self.max_shift >= 0):
            raise ValueError(f"max_shift must be >= 0 voxels, got {self.max_shift!r}")
        if self.ctf_form not in CTF_FORMS:
            raise ValueError(f"ctf_form must be one of {CTF_FORMS}, got {self.ctf_form!r}")
        if self.components not in COMPONENTS:
            raise ValueError(f"components must be one of {COMPONENTS}, got {self.components!r}")

    @property
    def premultiplied(self) -> bool:
        """Whether the particles are CTF-premultiplied (``rlnCtfDataAreCtfPremultiplied``)."""
        return self.ctf_form == "premultiplied"

    def tilt_angles(self) -> np.ndarray:
        """`(T,)` tilt angles in degrees: ``min, min + step, ...`` while ``<= max``."""
        lo, hi = self.tilt_range
        count = int(math.floor((hi - lo) / self.tilt_step + _ANGLE_TOL)) + 1
        return lo + self.tilt_step * np.arange(count, dtype=np.float64)

    def as_dict(self) -> dict:
        """The settings as a JSON-ready dict."""
        d = asdict(self)
        d["tilt_range"] = list(self.tilt_range)
        return d


@dataclass(frozen=True)
class PreparedStructure:
    """A reference ready for slicing: its padded, gridding-corrected spectrum.

    Attributes
    ----------
    box
        ``N``, the side of the structure's box.
    spectrum
        `(M, M, M//2+1)` complex64, ``M = 2N``: ``rfftn`` of the structure divided by the
        trilinear kernel profile, zero-padded to ``M`` about voxel ``N // 2`` and ``ifftshift``-ed
        (its centre voxel at index 0); DC at ``[0, 0, 0]``.
    """

    box: int
    spectrum: np.ndarray


@dataclass(frozen=True)
class SimulatedParticle:
    """One simulated subtomogram and what it was made from.

    Attributes
    ----------
    volume
        `(N, N, N)` float32, ``(z, y, x)``: the reconstruction (the components asked for).
    weight
        `(N, N, N//2+1)` float32, ``rfftn`` layout, DC at ``[0, 0, 0]``: the 3D weight in the
        particle's CTF form (RELION ``rlnCtfImage``; module docstring, "Weight volume"):
        in ``[0, 1]`` flipped, ``[-1, 1]`` signed, ``>= 0`` (a ``CTF²`` sum) premultiplied.
    noise_sigma
        Standard deviation of the noise added to each image pixel (units of the projected
        structure: voxel values summed along the beam); the same in every CTF form.
    signal_variance
        Variance of the noise-free reconstruction over the box (of the flipped form).
    projection_snr
        Variance of the noise-free images (whole tilt series, `(M, M)` each) over ``σ²`` (of
        the flipped form).
    defocus_um
        The particle's defocus (µm).
    tilt_angles
        `(T,)` tilts in degrees.
    tilt_series
        `(T, N, N)` float32 images (central ``N x N`` crop, the components asked for, centre
        at pixel ``N // 2``, in the particle's CTF form: premultiplied images carry ``g²``
        and their noise ``g``) when asked for, else ``None``.
    """

    volume: np.ndarray
    weight: np.ndarray
    noise_sigma: float
    signal_variance: float
    projection_snr: float
    defocus_um: float
    tilt_angles: np.ndarray
    tilt_series: np.ndarray | None = None


def _kernel_profile(n: int, m: int) -> np.ndarray:
    """`(n,)` real-space profile ``sinc²(x / m)`` of trilinear interpolation on an ``m`` grid.

    ``x = i - n // 2`` for the ``n`` voxels of a box centred in the ``m`` grid.
    """
    x = np.arange(n, dtype=np.float64) - box_center(n)
    return np.sinc(x / m) ** 2


def _separable(profile: np.ndarray) -> np.ndarray:
    return profile[:, None, None] * profile[None, :, None] * profile[None, None, :]


def _pad_offset(n: int, m: int) -> int:
    """Index in the ``m`` box of voxel 0 of a centred ``n`` box (centres ``n//2`` -> ``m//2``)."""
    return box_center(m) - box_center(n)


def prepare_structure(volume: np.ndarray) -> PreparedStructure:
    """Pad and transform a reference once, for :func:`simulate_particle`.

    Parameters
    ----------
    volume
        `(N, N, N)` structure, ``(z, y, x)``, centred on voxel ``N // 2``.

    Returns
    -------
    PreparedStructure
        The reference's `(2N, 2N, N+1)` complex64 spectrum (see the class).
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"structure must be a cube (N, N, N), got shape {vol.shape}")
    n = vol.shape[0]
    m = 2 * n
    o = _pad_offset(n, m)
    padded = np.zeros((m, m, m), dtype=np.float32)
    padded[o : o + n, o : o + n, o : o + n] = vol / _separable(_kernel_profile(n, m))
    spectrum = scipy.fft.rfftn(np.fft.ifftshift(padded), workers=1).astype(np.complex64)
    return PreparedStructure(n, spectrum)


def _image_frequencies(m: int) -> np.ndarray:
    """`(M, M//2+1)` radial frequency ``|k|`` of an `(M, M)` image, in index units."""
    ky = np.fft.fftfreq(m, d=1.0 / m)
    kx = np.fft.rfftfreq(m, d=1.0 / m)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def _transfer(m: int, settings: SimulationSettings, defocus_um: float) -> np.ndarray:
    """`(M, M//2+1)` float64 CTF x MTF of an `(M, M)` image at the voxel size (1 if off)."""
    k = _image_frequencies(m)
    out = np.ones_like(k)
    if settings.ctf:
        s = k / (m * settings.voxel_size)  # 1/Å
        out *= ctf(
            s,
            defocus_um * 1e4,
            voltage_kv=settings.voltage_kv,
            cs_mm=settings.cs_mm,
            amplitude_contrast=settings.amplitude_contrast,
        )
    if settings.mtf:
        out *= detector_mtf(k / (m / 2))  # w = 1 at the pixel Nyquist frequency
    return out


def _crop(volume_m: np.ndarray, n: int) -> np.ndarray:
    """Central `(n,)*k` block of an fftshifted `(m,)*k` array (centre ``m//2`` -> ``n//2``)."""
    o = _pad_offset(n, volume_m.shape[-1])
    index = tuple(slice(o, o + n) for _ in range(volume_m.ndim))
    return volume_m[index]


@dataclass(frozen=True)
class _Inversion:
    """One direct Fourier inversion's accumulators, on the `(M, M, M//2+1)` grid (Hermitian)."""

    signal: np.ndarray  # (T, M, M//2+1) the tilt images' spectra, noise-free
    acc_signal: np.ndarray
    acc_noise: np.ndarray
    acc_w: np.ndarray  # sum of trilinear weights: the sampling density
    acc_g: np.ndarray  # sum of trilinear weights times the weight's transfer g


def _invert(structure, rt, cos_t, sin_t, shift, scale, g, noise) -> _Inversion:
    """Slices times ``scale`` and ``noise``, inserted; ``g`` (`(M, M//2+1)`) summed alike."""
    m = structure.spectrum.shape[0]
    nx = m // 2 + 1
    signal = np.empty((cos_t.size, m, nx), dtype=np.complex64)
    extract_slices(structure.spectrum, rt, cos_t, sin_t, shift, scale.astype(np.float32), signal)
    acc_signal = np.zeros((m, m, nx), dtype=np.complex64)
    acc_noise = np.zeros((m, m, nx), dtype=np.complex64)
    acc_w = np.zeros((m, m, nx), dtype=np.float32)
    acc_g = np.zeros((m, m, nx), dtype=np.float32)
    g32 = g.astype(np.float32)
    insert_slices(signal, noise, g32, cos_t, sin_t, acc_signal, acc_noise, acc_w, acc_g)
    for acc, conjugate in ((acc_signal, True), (acc_noise, True), (acc_w, False), (acc_g, False)):
        hermitian_planes(acc, conjugate)
    return _Inversion(signal, acc_signal, acc_noise, acc_w, acc_g)


def _mean_weight(inv: _Inversion, inv_w: np.ndarray) -> np.ndarray:
    """`(N, N, N//2+1)` the insertion-weighted mean of ``g`` (0 where nothing reached)."""
    return np.where(inv.acc_w > 0, inv.acc_g * inv_w, 0.0)[::2, ::2, ::2]


def _cropped(acc: np.ndarray, n: int) -> np.ndarray:
    """`(N, N, N//2+1)` a real, Hermitian `(M, M, M//2+1)` sum cut to the `N` box in real space.

    The weight of premultiplied data as the subtomogram's box sees it: the point-spread
    function ``irfftn(acc)`` (centred on voxel 0) cropped to the central ``N`` box about its
    centre and transformed back, real part (the crop's unpaired ``-N/2`` plane aside, the PSF
    is even). A premultiplied reconstruction ``acc`` ⊙ (structure) cut to the box is then
    ``rfftn(D) ≈ C ⊙ rfftn(posed structure)``; ``acc[::2, ::2, ::2]`` instead would keep the
    thin tilt planes and the far tails of the unweighted back-projection's PSF that the box
    cuts off (measured: ``D / C`` 0.38 instead of 1).
    """
    m = acc.shape[0]
    psf = _crop(np.fft.fftshift(scipy.fft.irfftn(acc, s=(m, m, m), workers=1)), n)
    return scipy.fft.rfftn(np.fft.ifftshift(psf), workers=1).real.astype(np.float32)


def simulate_particle(
    structure: PreparedStructure,
    rotation: np.ndarray,
    shift: np.ndarray,
    settings: SimulationSettings,
    rng: np.random.Generator,
    *,
    defocus_um: float | None = None,
    return_tilt_series: bool = False,
) -> SimulatedParticle:
    """One realistic subtomogram: tilt series with CTF, MTF and noise, reconstructed.

    Parameters
    ----------
    structure
        The reference, from :func:`prepare_structure`.
    rotation
        `(3, 3)` rotation on ``(x, y, z)``, reference -> particle (RELION).
    shift
        `(3,)` shift ``(x, y, z)`` in voxels, applied after the rotation.
    settings
        Physics and acquisition (``snr``, tilts, CTF, MTF, ``components``).
    rng
        The particle's random stream (the `(T, 2N, 2N)` noise images are drawn from it,
        first and nothing else).
    defocus_um
        The particle's defocus in µm; default ``settings.defocus_um``.
    return_tilt_series
        Also return the `(T, N, N)` images.

    Returns
    -------
    SimulatedParticle
        The `(N, N, N)` volume, its `(N, N, N//2+1)` weight and the noise figures.
    """
    r = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(shift, dtype=np.float64)
    if r.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"rotation must be (3, 3) and shift (3,), got {r.shape}, {t.shape}")
    n = structure.box
    m = 2 * n
    defocus = settings.defocus_um if defocus_um is None else float(defocus_um)
    tilts = settings.tilt_angles()
    theta = np.radians(tilts)
    cos_t, sin_t = np.cos(theta), np.sin(theta)

    transfer = _transfer(m, settings, defocus)
    rt = np.ascontiguousarray(r.T)
    noise_images = rng.standard_normal((tilts.size, m, m), dtype=np.float32)
    noise = scipy.fft.rfft2(noise_images, workers=1).astype(np.complex64, copy=False)
    observed = wedge_mask(n, (tilts[0], tilts[-1]), cutoff_radius=n / 2)  # wedge, |k| <= Nyquist

    # The flipped form, always: it calibrates sigma (the same in every form) and the support.
    # sign(CTF) applied to signal + noise: the white noise images stay white, used as drawn.
    flipped = _invert(structure, rt, cos_t, sin_t, t, np.abs(transfer), np.abs(transfer), noise)
    inv_w = np.zeros_like(flipped.acc_w)
    np.divide(1.0, flipped.acc_w, out=inv_w, where=flipped.acc_w > 0)
    weight = np.clip(_mean_weight(flipped, inv_w) * observed, 0.0, 1.0)
    support = weight > 0

    def reconstruct(acc: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
        vol_m = scipy.fft.irfftn(acc if scale is None else acc * scale, s=(m, m, m), workers=1)
        vol = _crop(np.fft.fftshift(vol_m), n)
        spec = scipy.fft.rfftn(vol, workers=1) * support  # a real mask commutes with shifts
        return scipy.fft.irfftn(spec, s=(n, n, n), workers=1)

    rec_signal = reconstruct(flipped.acc_signal, inv_w)
    rec_noise = reconstruct(flipped.acc_noise, inv_w)
    signal_var = float(np.var(rec_signal, dtype=np.float64))
    noise_var = float(np.var(rec_noise, dtype=np.float64))
    sigma = math.sqrt(signal_var / (settings.snr * noise_var)) if noise_var > 0 else 0.0
    images_signal = scipy.fft.irfft2(flipped.signal, s=(m, m), workers=1)
    image_var = float(np.var(images_signal, dtype=np.float64))
    projection_snr = image_var / sigma**2 if sigma > 0 else math.inf

    if settings.ctf_form == "signed":  # as recorded: the signed CTF, the noise as drawn
        form = _invert(structure, rt, cos_t, sin_t, t, transfer, transfer, noise)
        weight = np.clip(_mean_weight(form, inv_w) * observed, -1.0, 1.0)
        rec_signal = reconstruct(form.acc_signal, inv_w)
        rec_noise = reconstruct(form.acc_noise, inv_w)
        images_signal = scipy.fft.irfft2(form.signal, s=(m, m), workers=1)
    elif settings.ctf_form == "premultiplied":  # each image times its CTF, sums not means
        form = _invert(
            structure, rt, cos_t, sin_t, t, np.square(transfer), np.square(transfer),
            noise * transfer.astype(np.float32),
        )  # fmt: skip
        weight = np.clip(_cropped(form.acc_g, n), 0.0, None) * observed
        rec_signal = reconstruct(form.acc_signal, None)
        rec_noise = reconstruct(form.acc_noise, None)
        images_signal = scipy.fft.irfft2(form.signal, s=(m, m), workers=1)
        noise_images = scipy.fft.irfft2(noise * transfer.astype(np.float32), s=(m, m), workers=1)

    if settings.components == "both":
        volume = rec_signal + sigma * rec_noise
    elif settings.components == "signal":
        volume = rec_signal
    else:
        volume = sigma * rec_noise

    series = None
    if return_tilt_series:
        parts = []
        if settings.components in ("both", "signal"):
            parts.append(images_signal)
        if settings.components in ("both", "noise"):
            parts.append(sigma * noise_images)
        images = np.fft.fftshift(sum(parts), axes=(-2, -1))
        o = _pad_offset(n, m)
        series = np.ascontiguousarray(images[:, o : o + n, o : o + n], dtype=np.float32)

    return SimulatedParticle(
        volume=np.ascontiguousarray(volume, dtype=np.float32),
        weight=np.ascontiguousarray(weight, dtype=np.float32),
        noise_sigma=sigma,
        signal_variance=signal_var,
        projection_snr=projection_snr,
        defocus_um=defocus,
        tilt_angles=tilts,
        tilt_series=series,
    )
