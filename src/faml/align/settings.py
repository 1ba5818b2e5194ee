"""The fast alignment's settings for one box size, and the grids derived from them.

:class:`AlignSettings` (validated on construction, with the defaults resolved by its
``resolved_*`` properties) and the pure functions of it that more than one stage uses: the
Euler grid's step (:func:`st_step_deg`) and the phase-aware scan's shift grid and shell
weights at the translation box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faml.align.scan import shift_grid
from faml.align.shells import default_band_limit
from faml.align.so3 import euler_grid

__all__ = ["AlignSettings", "st_step_deg"]


@dataclass(frozen=True)
class AlignSettings:
    """Parameters of the fast alignment for one box size.

    Attributes
    ----------
    box
        ``N``, the cubic box side in voxels.
    max_candidates
        ``M``: at most this many candidates are returned.
    max_shift
        Largest translation searched, voxels (sphere radius). Default ``N / 4``.
    band_limit
        Outermost Fourier shell (voxels) used by the rotational search. Default ``N // 2 - 1``.
    degree
        Spherical harmonic band limit ``L``. Default ``N // 2`` (16 at 32^3, 32 at 64^3).
    shell_weights
        Optional `(band_limit,)` non-negative weight per shell ``1..band_limit`` of the
        rotational score (e.g. an SNR estimate). Default: proportional to the radius ``r``.
        Measured on the 32^3 ribosome test set (+-60 wedge, 200 particles aligned to the
        true map): a candidate within 10 degrees at SNR 0.1 for 90.5% of particles with
        equal weights, 94.5% with ``r`` (95% with ``r^2``, 94% with ``sqrt(r)``); within
        15 degrees at SNR 0.02 for 35% (equal), 48.5% (``r``), 43% (``sqrt(r)``).
        Down-weighting outer shells (``1/r``, a Gaussian low-pass) lost 10-25 points.
    refine
        Refine rotations below the grid step and shifts below a voxel.
    translation_box
        Box (even, ``<= N``) at which candidates are scored, shifted and polished: the
        particle and average Fourier-cropped to it. Default ``N`` up to 32^3, else
        ``max(32, N // 2)``: the rotational search already used the full band, and the
        ranking and shifts need the low frequencies most (shifts stay sub-voxel).
    polish
        How many of the best candidates get a final local refinement of their rotation on
        the wedge-constrained (phase-aware) correlation itself: the magnitude score's
        maximum sits a few degrees off the truth under a missing wedge, the correlation's
        does not. Each round is a 6-point stencil (step: half the grid step, halved per
        round) and a parabola per axis.
    proposals
        How many maxima of the rotational score go to the translation stage, of which the
        best ``max_candidates`` by constrained correlation are kept. Default
        ``max_candidates``.
    polish_rounds
        Rounds of polishing. Measured on 50 noise-free 32^3 poses (+-60 wedge): one round
        leaves a median error of 0.26 degrees (max 1.8), two rounds 0.05 (max 0.17) for
        about 25% more time.
    scan_step_deg
        Rotation step of the phase-aware coarse scan (:mod:`faml.align.scan`), or ``None``
        for none. Its ``scan_candidates`` best rotations (no two within 1.5 steps), with
        their best shifts, join the magnitude search's proposals before the candidates are
        ranked by the constrained correlation.
    scan_shift_step
        Shift step of the scan's grid (voxels of the full box).
    scan_max_shift
        Radius of the scan's shift grid (voxels of the full box); default ``max_shift``.
        The cost of the scan grows with its cube: measured at 32^3, band 6, 15 degrees,
        37 ms per particle at radius 8 and 18 ms at radius 4 (with the magnitude search).
    scan_band
        Band limit of the scan (voxels of the full box). Default: ``band_limit``, at most
        the translation stage's band.
    scan_shell_weights
        Weight per shell ``0, 1, ...`` (of the full box; the last value serves beyond) of the
        scan's correlation (e.g. ``1 / sigma_r^2`` of the noise: the matched filter), or
        ``None`` for equal weights.
    """

    box: int
    max_candidates: int = 20
    max_shift: float | None = None
    band_limit: int | None = None
    degree: int | None = None
    shell_weights: tuple[float, ...] | None = None
    refine: bool = True
    polish: int = 1
    polish_rounds: int = 1
    proposals: int | None = None
    translation_box: int | None = None
    scan_step_deg: float | None = None
    scan_shift_step: float = 2.0
    scan_max_shift: float | None = None
    scan_candidates: int = 10
    scan_band: int | None = None
    scan_shell_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("box", "max_candidates", "polish", "polish_rounds"):
            if not isinstance(getattr(self, name), (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.box < 8:
            raise ValueError(f"box must be at least 8 voxels, got {self.box}")
        if self.translation_box is not None and not (
            self.translation_box == self.box
            or (
                8 <= self.translation_box < self.box
                and self.translation_box % 2 == 0
                and self.box % 2 == 0
            )
        ):
            raise ValueError(
                f"translation_box must be even, >= 8 and <= {self.box} (and the box even), "
                f"got {self.translation_box}"
            )
        if self.polish < 0 or self.polish_rounds < 0:
            raise ValueError(
                f"polish and polish_rounds must be >= 0, got {self.polish}, {self.polish_rounds}"
            )
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.max_shift is not None and not 0 <= self.max_shift < self.box / 2:
            raise ValueError(f"max_shift must lie in [0, {self.box / 2}), got {self.max_shift}")
        if self.band_limit is not None and not 2 <= self.band_limit <= self.box // 2 - 1:
            raise ValueError(
                f"band_limit must lie in [2, {self.box // 2 - 1}] for a {self.box}^3 box, "
                f"got {self.band_limit}"
            )
        if self.degree is not None and not 6 <= self.degree <= 128:
            # Below L = 6 the Euler grid is coarser than 25 degrees: measured errors of
            # 30-170 degrees at L = 2-3 against 1.3 at L = 7.
            raise ValueError(f"degree must lie in [6, 128], got {self.degree}")
        if self.scan_step_deg is not None and not 1.0 <= self.scan_step_deg <= 90.0:
            raise ValueError(f"scan_step_deg must lie in [1, 90], got {self.scan_step_deg}")
        if self.scan_shift_step <= 0 or self.scan_candidates < 1:
            raise ValueError(
                f"scan_shift_step must be > 0 and scan_candidates >= 1, got "
                f"{self.scan_shift_step}, {self.scan_candidates}"
            )
        if self.scan_shell_weights is not None:
            ssw = np.asarray(self.scan_shell_weights, dtype=np.float64)
            if ssw.ndim != 1 or ssw.size < 2 or np.any(ssw < 0) or not np.all(np.isfinite(ssw)):
                raise ValueError(
                    "scan_shell_weights must be finite non-negative values for shells 0, 1, ..."
                    f" (of the full box), got {ssw!r}"
                )
        if self.shell_weights is not None:
            sw = np.asarray(self.shell_weights, dtype=np.float64)
            if (
                sw.shape != (self.resolved_band_limit,)
                or np.any(sw < 0)
                or not np.all(np.isfinite(sw))
            ):
                raise ValueError(
                    f"shell_weights must be {self.resolved_band_limit} finite non-negative "
                    f"values (shells 1..{self.resolved_band_limit}), got shape {sw.shape}"
                )

    @property
    def resolved_shell_weights(self) -> np.ndarray:
        """`(band_limit,)` float64 shell weights with the default (``r``) applied."""
        if self.shell_weights is None:
            return np.arange(1, self.resolved_band_limit + 1, dtype=np.float64)
        return np.asarray(self.shell_weights, dtype=np.float64)

    @property
    def resolved_proposals(self) -> int:
        """``proposals`` with its default applied (never fewer than ``max_candidates``)."""
        return max(self.max_candidates, self.proposals or self.max_candidates)

    @property
    def resolved_translation_box(self) -> int:
        """The translation box actually used (see ``translation_box``)."""
        if self.translation_box is not None:
            return int(self.translation_box)
        if self.box <= 32 or self.box % 2:
            return self.box
        half = self.box // 2
        return max(32, half + half % 2)

    @property
    def translation_band_limit(self) -> int:
        """Band limit (in ``translation_box`` voxels) of the translation stage."""
        tb = self.resolved_translation_box
        return min(self.resolved_band_limit, default_band_limit(tb))

    @property
    def resolved_scan_band(self) -> int:
        """The scan's band limit in voxels of the translation box."""
        tb = self.resolved_translation_box
        band = self.resolved_band_limit if self.scan_band is None else int(self.scan_band)
        return max(2, min(int(round(band * tb / self.box)), self.translation_band_limit))

    @property
    def resolved_max_shift(self) -> float:
        """``max_shift`` with its default applied (voxels of the full box)."""
        return self.box / 4 if self.max_shift is None else float(self.max_shift)

    @property
    def resolved_band_limit(self) -> int:
        """``band_limit`` with its default applied."""
        return default_band_limit(self.box) if self.band_limit is None else int(self.band_limit)

    @property
    def resolved_degree(self) -> int:
        """``degree`` with its default applied."""
        return self.box // 2 if self.degree is None else int(self.degree)


def _scan_shifts(st: AlignSettings) -> np.ndarray:
    """The scan's shift grid, in voxels of the translation box.

    ``scan_max_shift`` (at most ``max_shift``) and ``scan_shift_step`` are given in voxels of
    the full box.
    """
    scale = st.resolved_translation_box / st.box
    radius = min(st.resolved_max_shift, st.scan_max_shift or np.inf)
    return shift_grid(radius * scale, st.scan_shift_step * scale)


def _scan_weights(st: AlignSettings) -> np.ndarray | None:
    """The scan's shell weights at the translation box's shells ``0..resolved_scan_band``."""
    if st.scan_shell_weights is None:
        return None
    w = np.asarray(st.scan_shell_weights, dtype=np.float64)
    full = np.rint(np.arange(st.resolved_scan_band + 1) * st.box / st.resolved_translation_box)
    return w[np.minimum(full.astype(int), w.size - 1)]


def st_step_deg(settings: AlignSettings) -> float:
    """The Euler grid's coarsest step (degrees) for these settings."""
    return euler_grid(settings.resolved_degree).step_deg
