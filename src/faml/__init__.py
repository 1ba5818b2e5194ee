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

One iteration
-------------
:func:`faml.ml.engine.run` runs every line of iterations (the random starts, the run, the
verification of the runner-up start) through one loop, ``_Job.fit``; iteration ``i``:

1. its rules, :func:`faml.ml.phase.phase_of` (FA or FAML, grid candidates, independent
   half-sets, symmetry, a held band, whether it may stop);
2. the E-step as map-reduce: each class average filtered by its FSC and masked
   (:func:`faml.ml.em.step_context`), the particles in tasks on the executor
   (:mod:`faml.ml.tasks`, :mod:`faml.parallel`), each particle's candidates, responsibilities
   and sufficient statistics (:func:`faml.ml.em.process_particle`,
   :class:`faml.ml.stats.Stats`), summed along one fixed tree;
3. the M-step, :func:`faml.ml.mstep.update_model` (symmetrised sums, averages, priors, noise,
   the FSC and the band), then :func:`faml.ml.reseed.reseed` for emptied classes;
4. its :class:`faml.ml.state.IterationRecord`, the checkpoint (:mod:`faml.ml.rundir`), the
   caller's hook (the report, :class:`faml.report.ReportHook`) and the stopping rule.

Layers, lowest first
--------------------
A module imports only from its own package and from the packages of lower layers, never in
a cycle, and never another package's private (``_``-prefixed) modules. ``tests/test_layers.py``
reads this list (one line per layer: number, packages, a few words) and checks every import::

    0. faml, faml.__about__, faml.data: the version, packaged data
    1. faml.parallel: executors, tree sums; imports nothing of faml
    2. faml.geometry: rotations, Euler angles, transforms, wedges, masks, symmetry
    3. faml.imaging: the image-formation model (CTF, MTF, dose, Fourier-slice kernels)
    4. faml.io: MRC and STAR files, RELION 5 sets, 2D tilt stacks, the particle table
    5. faml.align: fast rotational and translational alignment
    6. faml.ml: maximum likelihood, the run engine
    7. faml.simulate: simulated data with known truth
    8. faml.evaluate: scores against the truth
    9. faml.report: the run report, the export to RELION
    10. faml.demo: the demo
    11. faml.cli, faml.__main__: the command line
"""

from faml.__about__ import __version__

__all__ = ["__version__"]
