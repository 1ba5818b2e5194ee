"""Voronoi weights of candidate transforms (paper section 2.2; DESIGN.md section 3.2).

The integral over all rigid transforms is approximated by a sum over the candidates, each
weighted by the volume of its Voronoi cell in the 6D transform space: the share of ``S``
Monte-Carlo points that lie nearer to it than to any other candidate, under

.. code-block:: text

    tau^2 = ||I - R1^T R2||_F^2 + a ||t1 - t2||^2       (a = 1, t in voxels)

Rotations are drawn uniformly on SO(3) (Haar measure, from random unit quaternions; the paper
draws Euler angles independently, which is not uniform), translations uniformly in the
axis-aligned box spanned by the candidates' translations. A candidate whose cell catches no
point keeps a floor of half a point, so that no candidate gets weight exactly 0 (and
``log`` stays finite). Random numbers come from a generator seeded by
``(seed, iteration, particle, class)``, so the weights do not depend on how particles are
split over workers.
"""

from __future__ import annotations

import numpy as np

from faml.geometry.rotations import random_rotations

__all__ = ["voronoi_weights", "rng_for"]


def rng_for(seed: int, iteration: int, particle: int, klass: int) -> np.random.Generator:
    """The generator of one (iteration, particle, class): independent of batching."""
    return np.random.default_rng([int(seed), int(iteration), int(particle), int(klass)])


def voronoi_weights(
    rotations: np.ndarray,
    shifts: np.ndarray,
    rng: np.random.Generator,
    n_samples: int = 10000,
    translation_weight: float = 1.0,
) -> np.ndarray:
    """Voronoi cell volumes of candidates, as shares of the sampled space.

    Parameters
    ----------
    rotations
        `(M, 3, 3)` candidate rotations.
    shifts
        `(M, 3)` candidate translations (voxels).
    rng
        Random generator (see :func:`rng_for`).
    n_samples
        ``S``, the Monte-Carlo points.
    translation_weight
        ``a`` in ``tau^2``.

    Returns
    -------
    np.ndarray
        `(M,)` float64 weights, positive, summing to 1.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    m = rotations.shape[0]
    if rotations.shape != (m, 3, 3) or shifts.shape != (m, 3):
        raise ValueError(
            f"rotations must be (M, 3, 3) and shifts (M, 3), got {rotations.shape}, {shifts.shape}"
        )
    if m == 1:
        return np.ones(1)
    samples_r = random_rotations(n_samples, rng)
    lo, hi = shifts.min(axis=0), shifts.max(axis=0)
    samples_t = lo + (hi - lo) * rng.random((n_samples, 3))
    # ||I - R1^T R2||_F^2 = 6 - 2 trace(R1^T R2); trace(R1^T R2) = sum_ij R1_ij R2_ij.
    trace = samples_r.reshape(n_samples, 9) @ rotations.reshape(m, 9).T  # (S, M)
    dist = 6.0 - 2.0 * trace
    if translation_weight:
        diff = samples_t[:, None, :] - shifts[None, :, :]
        dist += translation_weight * np.einsum("smk,smk->sm", diff, diff)
    counts = np.bincount(np.argmin(dist, axis=1), minlength=m).astype(np.float64)
    counts = np.maximum(counts, 0.5)
    return counts / counts.sum()
