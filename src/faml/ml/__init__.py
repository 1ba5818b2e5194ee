"""Maximum likelihood: the FAML / FA engine (:func:`faml.ml.engine.run`).

Modules, in the order they build on each other: :mod:`~faml.ml.config` (the run's settings),
:mod:`~faml.ml.fourier` (FSC, filters), :mod:`~faml.ml.verdict`, :mod:`~faml.ml.state` (the
model, an iteration's record, the result), :mod:`~faml.ml.phase` (the rules of each
iteration), :mod:`~faml.ml.voronoi`, :mod:`~faml.ml.stats` (the sufficient statistics),
:mod:`~faml.ml.em` (the map step of one particle), :mod:`~faml.ml.mstep`,
:mod:`~faml.ml.tasks` (the map step as executor tasks), :mod:`~faml.ml.reseed`,
:mod:`~faml.ml.rundir` (checkpoints), :mod:`~faml.ml.outputs`, :mod:`~faml.ml.engine`.
"""
