"""Typed run configuration of the FAML / FA engine.

Two objects decide a run's result (and so go into ``run.json`` and the fingerprint that
``faml run --continue`` compares):

- :class:`RunConfig`, what a user decides: classes, method, iterations, seed, symmetry, gold
  standard, masks, the largest shift;
- :class:`Tuning` (``RunConfig.tuning``), the measured departures from the paper and the
  search's settings, with today's defaults and the paper's preset (:meth:`Tuning.paper`,
  ``faml run --paper-exact``).

How the map step is split into tasks (``--batch-size``, the workers) never changes a result
and is not part of either: it is an argument of :func:`faml.ml.engine.run`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from faml.geometry.masks import DEFAULT_MASK_RADIUS
from faml.geometry.symmetry import parse_symmetry

__all__ = ["RunConfig", "Tuning"]


@dataclass(frozen=True)
class Tuning:
    """The measured departures from the paper and the search's settings.

    Every field changes the result; the defaults are the measured ones (each entry says
    what was measured), :meth:`paper` gives the paper's method as written.

    Attributes
    ----------
    max_candidates
        ``M``, candidates per particle and class from the fast alignment.
    scan_step_deg
        Rotation step of the phase-aware coarse scan that adds candidates to the magnitude
        search (:mod:`faml.align.scan`); ``None``: magnitude search only (the paper).
    scan_band
        Band limit (Fourier shells) of the scan, at most the current resolution's band;
        default: that band, at most 10 shells. Measured reference-free at SNR 0.01 (60
        particles of 1U6G, band 8): 77% of poses within 15 degrees with the scan capped at 6
        shells, 82% at 8. Beyond about 10 shells a 15 degree grid gains nothing (the
        candidates are refined on the full band afterwards) and the cost grows as the cube.
    scan_candidates
        Candidates the scan adds per particle and class.
    likelihood
        ``"scaled"``: the reference's amplitude is fitted per candidate (profiled out);
        ``"plain"``: the paper's Gaussian likelihood of the average as it is.
    average_update
        ``"compensated"``: the M-step's average is ``S / max(W, 0.1 L)``, the maximiser
        (where a tenth of the weight observed a component); ``"paper"``: eq. 10,
        ``(S + (n - W) A_old) / n``, a step of ``W / n`` towards it that keeps part of the
        previous average everywhere. Measured on a K = 2 set (1U6G and the 50S subunit, 40
        each, SNR 0.02): poses within 15 degrees 64% with eq. 10 (50S class 38%), 90% with the
        maximiser (50S class 100%): eq. 10 carries the random start's blob along.
    local_candidates
        For this many of the best candidates of each class, six neighbours are added: the
        candidate turned by ``+-local_step_deg`` about x, y and z (same shift). The
        likelihood is broad in rotation at low SNR (measured at SNR 0.01, band 8, true map:
        0.1, 1.4 and 3.5 nats below the peak at 2, 4 and 8 degrees), so the posterior
        spreads over a candidate's neighbourhood instead of sitting on one grid point, and
        the M-step averages over that uncertainty (as RELION's oversampled orientations).
        0: the paper's candidates only.
    local_step_deg
        Angle of those neighbours (degrees); ``None``: one radian over the current band (the
        turn that moves the outermost shell used by one voxel; 7 degrees at 8 shells).
    local_rings
        Neighbours at ``j * local_step_deg`` for ``j = 1..local_rings`` (six per ring).
        Reference-free runs can settle with part of the particles 15-30 degrees off, turned
        about one common axis (measured: 60 particles of 1U6G at SNR 0.01); one ring of 5
        degree steps seldom moves them out. Six seeds, poses within 15 degrees: one ring
        median 75% (mean 76%), median largest responsibility 0.71-0.83; two rings (5 and 10
        degrees) median 80% (mean 79%), 0.63-0.78; one ring of 10 degrees median 78%, but
        the posteriors turn one-hot (0.99): the neighbours no longer overlap.
    voronoi
        Weigh candidates by their Voronoi cells (the paper); ``False`` (default): equal
        weights. Measured reference-free (60 particles of 1U6G, 32^3, +-60, 12 iterations):
        poses within 15 degrees 53% with and 72% without at SNR 0.01, 98% and 97% at
        SNR 0.02. A Voronoi cell is the pose volume a candidate would stand for if the
        likelihood were flat over it; the likelihood peaks within a few degrees, so a
        lone, wrong candidate far from the others gets a large cell and too much weight.
    voronoi_samples
        ``S``, Monte-Carlo points of the Voronoi weights.
    min_responsibility
        Candidates whose responsibility is below this share of the particle's largest one
        are left out of the M-step sums (the rest renormalised); 0 keeps every candidate.
    fa_iterations
        FAML only: iterations (counted from 1, the starts' included) run as FA (each particle
        at its best candidate by the constrained correlation) before the likelihood takes
        over; no early stop before. Reference-free from random poses, FA's hard assignments
        build a structure step by step, where FAML's soft average of a blurred start can stay
        blurred. Measured, three seeds, poses within 15 degrees: 50S subunit at SNR 0.01 (60
        particles): FAML throughout 43/30/13%, FA 87/47/80%, 3 FA iterations 82/23/63%, 6 FA
        iterations 88/23/75%; 1U6G at SNR 0.01: FAML 73/85/80%, 6 FA iterations 85/77/82%;
        1U6G + 50S (K = 2, SNR 0.02): FAML 76/95/54%, 6 FA iterations 97/97/99%. 0: FAML
        from the start (the paper).
    starts
        Independent random starts (as ``n_init`` of scikit-learn's mixture models): each runs
        ``start_iterations`` iterations with the band held at ``start_band``, and the one
        whose last iteration fits the data best (FAML: log-likelihood; FA: summed
        correlation) continues. A reference-free run can settle in a wrong local optimum
        (measured: 60 particles of 1U6G at SNR 0.01, four seeds of one start ended with
        78%, 75%, 23% and 73% of poses within 15 degrees); the likelihood of the wrong one
        was the lowest. 1: one start, no selection.
    start_iterations
        Iterations of each start before the choice (at least 2 when ``starts > 1``: the first
        runs at the random start's band, so only later ones compare).
    start_band
        Band (Fourier shells) of the starts' iterations after the first.
    verify
        With several starts, continue the runner-up start to the run's last iteration as
        well and compare its poses with the run's (:mod:`faml.ml.verdict`): two independent
        starts that reach the same structure give each particle the same pose up to one
        common rotation. The run's verdict (trusted or not) rests on it, and when the runner-up
        fits the data better by :data:`faml.ml.verdict.MIN_LOGLIK_MARGIN` nats per particle
        over the same shells, its result is kept instead of the chosen start's. Costs the
        iterations after the starts once more (about +60% at the defaults).
    grid_iterations
        FAML: the first iterations (from 1) whose candidates are the ``grid_candidates``
        most probable poses of the scan's whole rotation x shift grid
        (:func:`faml.align.fast.grid_candidates`: every rotation of the 15 degree grid, every
        shift of the scan's shift grid, scored by the likelihood's weights) instead of the
        fast alignment's: a soft search over all orientations while the resolution is low,
        as RELION's first iterations. 0 (default): the fast alignment throughout. Measured
        reference-free on EMPIAR-10499 (40 particles, gold standard, particle mask, three
        seeds): masked correlation with the set's map 0.62 / 0.65 / 0.59 with the grid in
        every iteration, 0.47 / 0.48 / 0.60 without; neither found the set's poses (0-3%
        within 15 degrees), so it is not the default.
    grid_candidates
        Poses kept per particle and class in a grid iteration.
    min_band
        Smallest band (Fourier shells) used for alignment and likelihood, whatever the FSC.
    band_margin
        Shells beyond the FSC resolution included in the likelihood (as RELION).
    class_start
        How ``K > 1`` classes start when the particles come with poses (``--local-search``):
        ``"split"``, along the main components of the particles' differences from their
        consensus inside the focus mask (or the reference mask) (:mod:`faml.ml.split`);
        ``"random"``, random subsets (RELION's Class3D). Measured on the crowded two-state
        50S set (``benchmarks/workflows/STATES.md``: 150 particles, SNR 0.02, states
        correlating 0.91, consensus poses 99% within 15 degrees), ``--focus-mask`` from the
        states' difference: F1 0.967 from the split (0.953 after the split itself), 0.503
        from random subsets: their two averages differ by noise (correlation 0.96 in the
        focus after iteration 1, against 0.76 between the split's), the responsibilities turn
        hard in the first iteration (median largest 0.85, then 1.0) and the particles stay in
        their random classes.
    split_share
        The share of the particles (drawn with the seed) whose residuals define the split's
        main components; every particle is then placed by its scores on them. 1: all (a
        run). The stability replicates of a run that starts from the split use 0.5, another
        half per seed (:func:`faml.ml.stability.run_replicates`): with all particles the
        split is deterministic and every seed would repeat it.
    stop_class_change
        Early stop when fewer than this share of particles changed class ...
    stop_pose_change_deg
        ... and the median change of the best rotation is below this (degrees). Measured
        reference-free (60 particles of 1U6G, SNR 0.01, four seeds): stopping at 1 degree
        ended after 7-10 iterations with 78, 68, 83 and 68% of poses within 15 degrees;
        running all 12 gave 83, 70, 85 and 78% (the median change was still 0.4-0.9 degrees
        and the band still moving).
    """

    max_candidates: int = 20
    scan_step_deg: float | None = 15.0
    scan_band: int | None = None
    scan_candidates: int = 10
    likelihood: str = "scaled"
    average_update: str = "compensated"
    local_candidates: int = 2
    local_step_deg: float | None = 5.0
    local_rings: int = 2
    voronoi: bool = False
    voronoi_samples: int = 10000
    min_responsibility: float = 1e-4
    fa_iterations: int = 6
    starts: int = 3
    start_iterations: int = 3
    start_band: int = 6
    verify: bool = True
    grid_iterations: int = 0
    grid_candidates: int = 300
    min_band: int = 4
    band_margin: int = 2
    class_start: str = "split"
    split_share: float = 1.0
    stop_class_change: float = 0.005
    stop_pose_change_deg: float = 0.3

    @classmethod
    def paper(cls) -> Tuning:
        """The paper's method as written (``faml run --paper-exact``).

        Magnitude-only candidates, the plain likelihood, Voronoi weights, no neighbours,
        eq. 10's average update, one random start, no FA warm-up.
        """
        return cls(
            scan_step_deg=None, likelihood="plain", voronoi=True, local_candidates=0,
            average_update="paper", starts=1, fa_iterations=0,
        )  # fmt: skip

    def __post_init__(self) -> None:
        step_ok = self.local_step_deg is None or 0.0 < self.local_step_deg <= 30.0
        if self.local_candidates < 0 or not step_ok or self.local_rings < 1:
            raise ValueError(
                f"local_candidates must be >= 0, local_step_deg in (0, 30] (or None) and "
                f"local_rings >= 1, got {self.local_candidates}, {self.local_step_deg}, "
                f"{self.local_rings}"
            )
        if self.average_update not in ("compensated", "paper"):
            raise ValueError(
                f"average_update must be 'compensated' or 'paper', got {self.average_update!r}"
            )
        if self.likelihood not in ("scaled", "plain"):
            raise ValueError(f"likelihood must be 'scaled' or 'plain', got {self.likelihood!r}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be at least 1, got {self.max_candidates}")
        if self.voronoi_samples < 100:
            raise ValueError(f"voronoi_samples must be at least 100, got {self.voronoi_samples}")
        if not 0.0 <= self.min_responsibility < 1.0:
            raise ValueError(
                f"min_responsibility must lie in [0, 1), got {self.min_responsibility}"
            )
        if self.starts < 1 or (self.starts > 1 and self.start_iterations < 2):
            raise ValueError(
                f"starts must be at least 1 and start_iterations at least 2 with several "
                f"starts, got {self.starts} and {self.start_iterations}"
            )
        if self.start_band < 2:
            raise ValueError(f"start_band must be at least 2 shells, got {self.start_band}")
        if self.fa_iterations < 0:
            raise ValueError(f"fa_iterations must be >= 0, got {self.fa_iterations}")
        if not 0.0 < self.split_share <= 1.0:
            raise ValueError(f"split_share must be in (0, 1], got {self.split_share}")
        if self.class_start not in ("split", "random"):
            raise ValueError(f"class_start must be 'split' or 'random', got {self.class_start!r}")
        if self.grid_iterations < 0 or self.grid_candidates < 1:
            raise ValueError(
                f"grid_iterations must be >= 0 and grid_candidates >= 1, got "
                f"{self.grid_iterations} and {self.grid_candidates}"
            )


@dataclass(frozen=True)
class RunConfig:
    """What a user decides about a run.

    With :class:`Tuning`, everything that decides its result (and so goes into ``run.json``).

    Attributes
    ----------
    classes
        ``K``, number of classes (1: averaging only).
    method
        ``"faml"`` (candidates + maximum likelihood) or ``"fa"`` (alignment only, hard).
    iterations
        Most iterations; the run stops earlier when classes and poses stop changing.
    seed
        The one seed of every random choice.
    symmetry
        Point group of the averages, ``"C1"`` (none), ``"Cn"`` or ``"Dn"`` (RELION's axes:
        n-fold about z, the 2-fold of Dn about x). The averages are brought to the group's
        frame once (:mod:`faml.geometry.symmetry`) and their sums symmetrised after.
    gold_standard
        Refine the two random halves (``rlnRandomSubset``) independently once the common
        start is over (the iterations up to ``fa_iterations``, at least the random start):
        each particle is aligned and scored against its own half's average, filtered by the
        FSC between the halves (as RELION's auto-refine), so that FSC is an honest
        resolution estimate. Off: both halves use the joint average and the FSC between
        them is optimistic.
    max_shift
        Largest translation searched (voxels); default ``box / 4``.
    mask_radius
        Radius of the default soft spherical mask, as a fraction of the box (used when no
        mask file is given).
    particle_mask_radius
        Each particle's background (its mean outside the sphere) is subtracted and the
        particle multiplied by a soft sphere of this radius (a share of the box, raised-cosine
        edge of 3 voxels inside it), as RELION's ``--zero_mask``, before alignment,
        likelihood and averaging (:func:`faml.ml.em.load_particle`). ``None``: as stored.
        Real and crowded subtomograms hold neighbours, back-projection streaks and noise in
        the box's corners that the model's noise estimate otherwise absorbs, and that the
        alignment otherwise fits. Measured:

        - crowded simulation (``faml simulate --crowded``, 100 particles of 1U6G, radius 9.1
          voxels, 32^3, SNR 0.02): poses within 15 degrees 4 / 1% (seeds 1, 2) unmasked,
          85 / 63% with radius 0.38 (the sphere just outside the particle), FSC 0.5 with the
          truth 47.5 / 52.1 A against 27.8 / 28.0 A (the unmasked oracle: 29.9 A). At SNR 0.01
          with radius 0.45 (neighbours inside) it stayed at 0-1%;
        - the 40 real EMPIAR-10499 ribosomes at their own refined poses: the FSC between the
          half-set averages reached 4 shells unmasked, 9-11 masked (radius 0.45); one FAML
          iteration from those poses kept 15% of them within 15 degrees unmasked and 55-58%
          masked; from random starts neither found the set's poses (0-3%);
        - ``benchmarks/lowsnr`` snr0.01 (white noise, nothing outside the particle, whose own
          mask is 0.40 of the box), radius 0.45: seeds 1-3 put 47 / 68 / 87% of poses within
          15 degrees against 87 / 73 / 80% unmasked.

        Not the default: the radius must fit the particle (RELION asks for
        ``--particle_diameter`` for the same reason; ``faml run --particle-mask
        --particle-diameter D``), and the white-noise benchmarks have not been rerun with it.
    references
        0: reference-free (random starts, DESIGN.md 3.5). 1 or ``classes``: the run starts
        from that many reference maps given to :func:`faml.ml.engine.run` (``faml run
        --reference``), one for every class or one per class, as RELION's ``--ref``: no
        random starts and no FA warm-up; with one reference and several classes the first
        iteration puts each particle in a random class (RELION's random subsets), so that
        the classes separate.
    local_search_deg
        Search only within this angle (degrees) of each particle's prior pose (the poses the
        input gives: template matching, an earlier run), shifts within ``max_shift`` of its
        prior offset, with a Gaussian prior of ``local_search_deg / 3`` on the deviation in
        the likelihood (RELION's ``--sigma_ang``); ``None``: a global search. Iteration 0 is
        the average at the prior poses (unless references are given); no random starts, no
        FA warm-up.
    junk_classes
        The last ``junk_classes`` of the ``classes`` are junk classes (``faml run --junk J``),
        where picks that are not the target (other proteins, membrane, ice) gather
        (:mod:`faml.ml.junk`): the iterations compare the target classes only, and after
        the last one the screen of the picks' correlations with the targets moves a second,
        lower population to them; they are never re-seeded and do not set the band.
    focused
        Focused classification (``faml run --focus-mask``): the class averages are made equal
        outside the focus mask given to :func:`faml.ml.engine.run` after every M-step
        (:mod:`faml.ml.focus`), so that the focus region decides the classes while the poses
        use the whole particle. The mask's voxels are fingerprinted by the CLI (its sha256 in
        ``inputs.json``), as the reference mask's.
    initial_lowpass
        Å: the references' resolution at the start (RELION's ``--ini_high``): the first
        band is the shell of this resolution, and the maps given are low-passed to it.
    tuning
        The measured departures from the paper and the search's settings
        (:class:`Tuning`; ``Tuning.paper()``: the paper as written).
    """

    classes: int = 1
    method: str = "faml"
    iterations: int = 15
    seed: int = 0
    symmetry: str = "C1"
    gold_standard: bool = False
    max_shift: float | None = None
    mask_radius: float = DEFAULT_MASK_RADIUS
    particle_mask_radius: float | None = None
    references: int = 0
    initial_lowpass: float = 60.0
    local_search_deg: float | None = None
    junk_classes: int = 0
    focused: bool = False
    tuning: Tuning = field(default_factory=Tuning)

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ValueError(f"--classes must be at least 1, got {self.classes}")
        if self.method not in ("faml", "fa"):
            raise ValueError(f"--method must be 'faml' or 'fa', got {self.method!r}")
        if self.iterations < 1:
            raise ValueError(f"--iterations must be at least 1, got {self.iterations}")
        if not 0.1 <= self.mask_radius <= 0.5:
            raise ValueError(f"mask_radius must lie in [0.1, 0.5], got {self.mask_radius}")
        parse_symmetry(self.symmetry)  # a clear error for a group faml does not know
        if not 0 <= self.junk_classes < self.classes:
            raise ValueError(
                f"{self.junk_classes} junk classes of {self.classes}: at least one class must "
                "be a target class"
            )
        targets = self.classes - self.junk_classes
        if self.references not in {0, 1, targets, self.classes}:
            raise ValueError(
                f"{self.references} references for --classes {targets}: give one "
                f"reference for every class or {targets}, one per class"
            )
        deg = self.local_search_deg
        if deg is not None and not 0.0 < deg <= 180.0:
            raise ValueError(f"--local-search must lie in (0, 180] degrees, got {deg}")
        if not self.initial_lowpass > 0:
            raise ValueError(f"--initial-lowpass must be > 0 A, got {self.initial_lowpass}")
        r = self.particle_mask_radius
        if r is not None and not 0.1 <= r <= 0.6:
            raise ValueError(f"particle_mask_radius must lie in [0.1, 0.6], got {r}")

    def tuned(self, **changes) -> RunConfig:
        """Return this configuration with some :class:`Tuning` fields changed."""
        return replace(self, tuning=replace(self.tuning, **changes))

    def to_dict(self) -> dict:
        """Plain dict for ``run.json`` (the tuning as a nested dict under ``"tuning"``)."""
        return asdict(self)
