"""Electron-optical transfer functions of the image-formation model: the CTF and the detector MTF.

Contrast transfer function (RELION's sign convention)
-----------------------------------------------------
With ``s`` the spatial frequency in 1/Å, ``λ`` the relativistic electron wavelength in Å,
``Δf`` the defocus in Å (**positive = underfocus**, as RELION's ``rlnDefocusU``), ``Cs`` the
spherical aberration in Å and ``Q`` the amplitude contrast, RELION (``ctf.h``, ``getCTF``)
evaluates::

    χ(s)   = -π λ Δf s² + (π/2) Cs λ³ s⁴ - arcsin(Q)
    CTF(s) = -sin(χ(s)) = sqrt(1 - Q²) sin(γ(s)) + Q cos(γ(s)),
    γ(s)   =  π λ Δf s² - (π/2) Cs λ³ s⁴.

So ``CTF(0) = +Q`` and the first lobe is positive: the transfer of a *contrast-inverted* image
(protein white, as RELION expects its particles), i.e. minus the physical micrograph CTF
``-(sqrt(1 - Q²) sin γ + Q cos γ)``. Simulated particles built from positive densities with this
CTF show the protein positive at low resolution, like the truth maps. No astigmatism, no phase
plate, no envelope (dose or coherence) terms.

Detector MTF
------------
``MTF(w) = sinc(π w / 2) = sin(π w / 2) / (π w / 2)``, with ``w`` the radial spatial frequency as
a fraction of the detector's Nyquist frequency (``w = 1`` at 0.5 cycles/pixel, so
``w = 2 |k|`` with ``|k|`` in cycles/pixel): 1 at DC, ``2/π ≈ 0.64`` at Nyquist. This is the
MTF used in the paper (section 3.1).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["electron_wavelength", "ctf", "detector_mtf"]

# Physical constants (CODATA 2018): Planck constant, electron rest mass and charge, speed of light.
_H = 6.62607015e-34
_M0 = 9.1093837015e-31
_E = 1.602176634e-19
_C = 2.99792458e8


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å at an acceleration voltage in kV.

    ``λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²)))``; 0.019687 Å at 300 kV.
    """
    if not voltage_kv > 0:
        raise ValueError(f"voltage must be positive (kV), got {voltage_kv!r}")
    v = float(voltage_kv) * 1e3
    p = math.sqrt(2.0 * _M0 * _E * v * (1.0 + _E * v / (2.0 * _M0 * _C**2)))
    return _H / p * 1e10


def ctf(
    s: np.ndarray,
    defocus_angstrom: float | np.ndarray,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
) -> np.ndarray:
    """The contrast transfer function at spatial frequencies ``s``, RELION's convention.

    ``CTF(s) = -sin(χ)``, ``χ = -π λ Δf s² + (π/2) Cs λ³ s⁴ - arcsin(Q)``; see the module
    docstring (``CTF(0) = +Q``, first lobe positive).

    Parameters
    ----------
    s
        Array (any shape) of spatial frequencies in 1/Å (only ``|s|`` matters).
    defocus_angstrom
        Defocus ``Δf`` in Å, positive for underfocus (RELION's ``rlnDefocusU``): a number or
        an array that broadcasts with ``s`` (e.g. the astigmatic defocus along each
        frequency's azimuth).
    voltage_kv
        Acceleration voltage in kV.
    cs_mm
        Spherical aberration in mm.
    amplitude_contrast
        Amplitude contrast ``Q`` in ``[0, 1)``.

    Returns
    -------
    np.ndarray
        CTF values, float64, the shape of ``s``, in ``[-1, 1]``.
    """
    if not 0.0 <= amplitude_contrast < 1.0:
        raise ValueError(f"amplitude contrast must lie in [0, 1), got {amplitude_contrast!r}")
    lam = electron_wavelength(voltage_kv)
    cs = float(cs_mm) * 1e7  # mm -> Å
    s2 = np.square(np.asarray(s, dtype=np.float64))
    chi = (
        -np.pi * lam * np.asarray(defocus_angstrom, dtype=np.float64) * s2
        + 0.5 * np.pi * cs * lam**3 * s2 * s2
        - math.asin(amplitude_contrast)
    )
    return -np.sin(chi)


def detector_mtf(w: np.ndarray) -> np.ndarray:
    """Detector MTF ``sinc(π w / 2)`` at ``w`` = spatial frequency / Nyquist frequency.

    Parameters
    ----------
    w
        Array (any shape) of radial frequencies in units of the detector Nyquist frequency
        (``w = 1`` at 0.5 cycles/pixel).

    Returns
    -------
    np.ndarray
        float64 values ``sin(π w / 2) / (π w / 2)`` (1 at ``w = 0``, ``2/π`` at ``w = 1``).
    """
    return np.sinc(0.5 * np.asarray(w, dtype=np.float64))  # np.sinc(x) = sin(pi x) / (pi x)
