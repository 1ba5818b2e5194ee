"""faml: reference-free subtomogram averaging and classification by FAML.

FAML = fast rotational alignment (a short list of candidate poses per particle and class)
followed by maximum-likelihood expectation-maximisation that integrates over those
candidates. See the package README and ``DESIGN.md`` for the method and conventions.

Conventions held everywhere inside the package:

- volumes are ``float32`` arrays in ``(z, y, x)`` axis order, as ``mrcfile`` returns them;
- rotations are 3x3 matrices in RELION's sense (they map reference ``(x, y, z)``
  coordinates to particle coordinates, about voxel ``N // 2``), Euler angles appear only at
  the file boundary (:mod:`faml.geometry.euler`);
- Fourier weights (missing wedge, RELION ``rlnCtfImage``) are in numpy ``rfftn`` layout
  ``(N, N, N // 2 + 1)`` with DC at ``[0, 0, 0]`` unless a function says otherwise.
"""

from faml.__about__ import __version__

__all__ = ["__version__"]
