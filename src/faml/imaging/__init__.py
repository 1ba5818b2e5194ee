"""The image-formation model: how a specimen becomes tilt images, and back (layer 3).

Shared by the simulator (:mod:`faml.simulate`) and the 2D tilt-stack reader
(:mod:`faml.io.tiltstacks`), so that both form and invert images the same way:

- :mod:`faml.imaging.ctf`: the contrast transfer function (RELION's sign convention), the
  detector MTF and the relativistic electron wavelength;
- :mod:`faml.imaging.exposure`: the critical exposure of the dose filter;
- :mod:`faml.imaging.slices`: Fourier-slice extraction and insertion, real-space
  back-projection (compiled kernels) and the Hermitian planes of ``rfftn`` grids.

It builds on :mod:`faml.geometry` and :mod:`faml.parallel` at most, never on the packages
above it (see the layer list in :mod:`faml`).
"""

from faml.imaging.ctf import ctf, detector_mtf, electron_wavelength
from faml.imaging.exposure import critical_exposure

__all__ = ["critical_exposure", "ctf", "detector_mtf", "electron_wavelength"]
