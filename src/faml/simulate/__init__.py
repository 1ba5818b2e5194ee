"""Simulated subtomograms with known truth: structures, tilt series, data sets.

- :mod:`faml.simulate.density`: atomic models (gemmi) and maps onto a centred grid.
- :mod:`faml.simulate.tiltseries`: the realistic mode (paper section 3.1): tilt series with
  CTF, MTF and noise, reconstructed by direct Fourier inversion, with a 3D weight per particle.
- :mod:`faml.simulate.dataset`: :func:`simulate` writes a simulation directory (particles,
  weights, STAR files, truth), :func:`read_truth` reads its truth back.
- :mod:`faml.simulate.fast`: ``simulate_fast``, the fast mode of the demo and tests.
- :mod:`faml.simulate.crowded`: :func:`simulate_crowded`, subtomograms cut from crowded
  tomograms (tilt series with CTF, dose and noise, weighted back-projection, picking errors).

The optics (CTF, MTF, dose filter) and the Fourier-slice kernels are :mod:`faml.imaging`'s,
shared with the 2D tilt-stack reader; ``ctf``, ``detector_mtf`` and ``electron_wavelength``
are re-exported here.
"""

from faml.imaging.ctf import ctf, detector_mtf, electron_wavelength  # public API here too
from faml.simulate.crowded import CrowdedSettings, pseudo_proteins, simulate_crowded
from faml.simulate.dataset import MODES, SimulationTruth, particle_rng, read_truth, simulate
from faml.simulate.density import density_from_map, density_from_model, load_structure
from faml.simulate.fast import Truth, simulate_fast
from faml.simulate.tiltseries import (
    PreparedStructure,
    SimulatedParticle,
    SimulationSettings,
    prepare_structure,
    simulate_particle,
)

__all__ = [
    "CrowdedSettings",
    "MODES",
    "PreparedStructure",
    "SimulatedParticle",
    "SimulationSettings",
    "SimulationTruth",
    "Truth",
    "ctf",
    "density_from_map",
    "density_from_model",
    "detector_mtf",
    "electron_wavelength",
    "load_structure",
    "particle_rng",
    "prepare_structure",
    "pseudo_proteins",
    "read_truth",
    "simulate",
    "simulate_crowded",
    "simulate_fast",
    "simulate_particle",
]
