"""Maximum likelihood: Voronoi weights, E-step, statistics, M-step, FAML and FA drivers."""
