"""Simulated data sets with known truth: the simulation directory, written and read back.

:func:`simulate` draws poses and classes, makes every particle (realistic mode:
:mod:`faml.simulate.tiltseries`; fast mode: the structure at its pose, white noise and the 3D
wedge, as :func:`faml.simulate.fast.simulate_fast`), in parallel over particles, and writes::

    out_dir/
      particles/particle_000000.mrc ...   float32 (z, y, x), voxel size in the header
      weights/weight_000000.mrc ...       realistic: each particle's 3D weight
      weights/wedge.mrc                   fast: one wedge shared by all particles
      particles.star                      RELION 3.1+ particles, no poses: the input of a run
      truth/class_001.mrc ...             the noise-free structures (reference frame), 1-based
      truth/particles.star                the true poses and classes, RELION's convention
      truth/truth.json                    everything else (settings, poses, per-particle noise)

CTF-premultiplied particles (``SimulationSettings.ctf_form = "premultiplied"``, realistic and
crowded modes) are written with RELION 4/5's names instead of ``particles/`` and ``weights/``::

      Subtomograms/tomogram_001/1_data.mrc ...     the particles (k 1-based per tilt series)
      Subtomograms/tomogram_001/1_weights.mrc ...  each particle's weight (its CTF² sum)

with ``rlnTomoName`` and ``rlnTomoParticleName`` (``tomogram_001/1``) in both STAR files, and
both STAR files in RELION 5's layout: ``data_general`` (``rlnTomoSubTomosAre2DStacks 0``)
before ``data_optics`` and ``data_particles``, ``# version 50001``. The realistic mode files
all its particles under ``tomogram_001`` (each has its own tilt series and defocus).

Weights are RELION ``rlnCtfImage`` volumes in the FFTW half layout (numpy ``rfftn`` of a
``(z, y, x)`` volume: `(N, N, N//2+1)`, DC at ``[0, 0, 0]``, not shifted), in the particles'
CTF form (:mod:`faml.simulate.tiltseries`, "Weight volume"): values in ``[0, 1]`` (flipped,
the default, and the fast mode's wedge), ``[-1, 1]`` (signed) or ``>= 0`` up to about the
number of tilts (premultiplied). ``data_optics`` says which: ``rlnCtfDataAreCtfPremultiplied``
1 for premultiplied, else 0; ``truth.json`` records ``ctf_form``.
Paths in both STAR files (``rlnImageName``, ``rlnCtfImage``) are relative to the simulation
directory (the folder of ``particles.star``), identical in both files, so a result's
``rlnImageName`` matches its truth row by name.

Poses follow RELION (:mod:`faml.geometry.euler`): particle ``i`` is ``T_(R_i, t_i)`` applied to
its class's structure, ``x_particle = R_i x_reference + t_i`` about voxel ``N // 2``; written as
``rlnAngleRot/Tilt/Psi`` of ``R_i`` and ``rlnOrigin{X,Y,Z}Angst = -t_i * voxel_size``.

Randomness: classes (shuffled), rotations, shifts and defocus values are drawn in this order
from ``numpy.random.default_rng(seed)`` (for an ``int`` ``n_each`` and uniform rotations, the
same classes, rotations and shifts as ``simulate_fast`` with that seed); particle ``i``'s noise
comes from its own stream ``SeedSequence(seed, spawn_key=(i,))``. So the data do not depend on
the number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
import starfile

from faml.__about__ import __version__
from faml.geometry.euler import euler_to_matrix, matrix_to_euler
from faml.geometry.rotations import random_rotations, rotation_about_axis
from faml.geometry.transform import transform_volume
from faml.geometry.wedge import wedge_mask
from faml.io.atomic import atomic_path, write_text_atomic
from faml.io.mrc import read_volume, write_volume
from faml.io.star import pose_columns
from faml.parallel import make_executor
from faml.simulate.fast import Truth
from faml.simulate.tiltseries import (
    PreparedStructure,
    SimulationSettings,
    prepare_structure,
    simulate_particle,
)

__all__ = ["MODES", "SimulationTruth", "simulate", "read_truth", "particle_rng"]

logger = logging.getLogger(__name__)

MODES = ("realistic", "fast")
_PARTICLES = "particles"
_WEIGHTS = "weights"
_TRUTH = "truth"
_SUBTOMOGRAMS = "Subtomograms"  # premultiplied: RELION 4/5's Subtomograms/<tomo>/<N>_data.mrc
_OUR_FILES = ("particle_*.mrc", "weight_*.mrc", "wedge.mrc", "class_*.mrc")
_OUR_RELION_FILES = ("*_data.mrc", "*_weights.mrc")
_TOMOGRAM = "tomogram_{:03d}"  # tilt series t (1-based)


def particle_rng(seed: int, index: int) -> np.random.Generator:
    """Particle ``index``'s own random stream: child ``index`` of ``SeedSequence(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(index),)))


@dataclass(frozen=True)
class SimulationTruth:
    """The truth of a simulation directory, as :func:`read_truth` returns it.

    Attributes
    ----------
    maps
        `(K, N, N, N)` float32 noise-free structures (``truth/class_NNN.mrc``), reference frame.
    rotations
        `(n, 3, 3)` rotations (reference -> particle, RELION's sense), in particle order.
    shifts
        `(n, 3)` shifts ``(x, y, z)`` in voxels.
    classes
        `(n,)` 0-based class of each particle.
    voxel_size
        Å per voxel.
    image_names
        ``rlnImageName`` of each particle (relative to the simulation directory).
    metadata
        Everything in ``truth.json``.
    """

    maps: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    classes: np.ndarray
    voxel_size: float
    image_names: tuple[str, ...]
    metadata: dict = field(repr=False)


@dataclass(frozen=True)
class _Job:
    """What a worker needs to make particles (pickled to worker processes)."""

    token: str
    mode: str
    settings: SimulationSettings
    seed: int
    structures: tuple[np.ndarray, ...]
    classes: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    defocus_um: np.ndarray
    particle_paths: tuple[str, ...]
    weight_paths: tuple[str, ...]
    wedge_path: str


# Prepared structures of the job a process is working on, so that chunks of the same job reuse
# them. Holds one job at a time (cleared when another job's token arrives).
_PREPARED: dict[tuple[str, int], PreparedStructure] = {}


def _prepared(job: _Job, k: int) -> PreparedStructure:
    key = (job.token, int(k))
    if key not in _PREPARED:
        if any(token != job.token for token, _ in _PREPARED):
            _PREPARED.clear()
        _PREPARED[key] = prepare_structure(job.structures[k])
    return _PREPARED[key]


def _fast_particle(job: _Job, i: int, wedge: np.ndarray) -> dict:
    """Fast mode: structure at its pose + white noise, times the 3D wedge."""
    s = job.settings
    p = transform_volume(job.structures[job.classes[i]], job.rotations[i], job.shifts[i], order=3)
    signal_var = float(np.var(p, dtype=np.float64))
    sigma = math.sqrt(signal_var / s.snr)
    noise = particle_rng(job.seed, i).standard_normal(p.shape, dtype=np.float32)
    if s.components == "both":
        p = p + np.float32(sigma) * noise
    elif s.components == "noise":
        p = np.float32(sigma) * noise
    p = scipy.fft.irfftn(scipy.fft.rfftn(p, workers=1) * wedge, s=p.shape, workers=1)
    write_volume(job.particle_paths[i], p, s.voxel_size)
    return {"noise_sigma": sigma, "signal_variance": signal_var}


def _realistic_particle(job: _Job, i: int) -> dict:
    """Realistic mode: tilt series with CTF, MTF and noise, reconstructed."""
    sim = simulate_particle(
        _prepared(job, job.classes[i]),
        job.rotations[i],
        job.shifts[i],
        job.settings,
        particle_rng(job.seed, i),
        defocus_um=float(job.defocus_um[i]),
    )
    write_volume(job.particle_paths[i], sim.volume, job.settings.voxel_size)
    write_volume(job.weight_paths[i], sim.weight, job.settings.voxel_size)
    return {
        "noise_sigma": sim.noise_sigma,
        "signal_variance": sim.signal_variance,
        "projection_snr": sim.projection_snr,
    }


def _run_chunk(job: _Job, indices: Sequence[int]) -> list[dict]:
    """Make and write the particles ``indices``; their per-particle figures, in order."""
    if job.mode == "fast":
        wedge = wedge_mask(job.structures[0].shape[0], job.settings.tilt_range)
        return [_fast_particle(job, i, wedge) for i in indices]
    return [_realistic_particle(job, i) for i in indices]


def _check_structures(structures, names) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    vols = tuple(np.ascontiguousarray(s, dtype=np.float32) for s in structures)
    if not vols:
        raise ValueError("need at least one structure")
    shape = vols[0].shape
    if len(shape) != 3 or len(set(shape)) != 1:
        raise ValueError(f"structures must be cubes (N, N, N), got shape {shape}")
    for v in vols:
        if v.shape != shape:
            raise ValueError(f"structures differ in shape: {shape} and {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("a structure holds non-finite values")
    names = tuple(str(n) for n in names)
    if len(names) != len(vols):
        raise ValueError(f"{len(vols)} structures but {len(names)} names")
    return vols, names


def _counts(n_each: int | Sequence[int], k: int) -> np.ndarray:
    counts = np.broadcast_to(np.asarray(n_each), (k,)) if np.ndim(n_each) == 0 else n_each
    counts = np.asarray(counts)
    if counts.shape != (k,) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"n_each must be an integer or {k} integers, got {n_each!r}")
    if np.any(counts < 0) or counts.sum() < 1:
        raise ValueError(f"n_each must be >= 0 with at least one particle, got {n_each!r}")
    return counts.astype(np.int64)


def _prepare_folder(out: Path, overwrite: bool, settings: SimulationSettings) -> None:
    relion = settings.premultiplied
    folders = [out / _TRUTH] + ([] if relion else [out / _PARTICLES, out / _WEIGHTS])
    existing = [p for p in (out / "particles.star", out / _TRUTH / "truth.json") if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a simulation ({existing[0].name}); choose another folder "
            "or pass overwrite=True"
        )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    if overwrite:  # remove our own files of an earlier run (any CTF form), nothing else
        for folder in (out / _PARTICLES, out / _WEIGHTS, out / _TRUTH):
            for pattern in _OUR_FILES:
                for f in folder.glob(pattern):
                    f.unlink()
        for pattern in _OUR_RELION_FILES:
            for f in (out / _SUBTOMOGRAMS).glob(f"*/{pattern}"):
                f.unlink()


def relion_names(tomograms: Sequence[int]) -> tuple[tuple[str, ...], ...]:
    """RELION 4/5 names of premultiplied particles, from each particle's tilt series (0-based).

    Returns ``rlnTomoName``, ``rlnTomoParticleName`` (``<tomo>/<N>``, ``N`` 1-based within
    the tilt series, in particle order), ``rlnImageName``
    (``Subtomograms/<tomo>/<N>_data.mrc``) and ``rlnCtfImage`` (``..._weights.mrc``).
    """
    seen: dict[int, int] = {}
    tomo, part, data, weights = [], [], [], []
    for t in tomograms:
        seen[int(t)] = seen.get(int(t), 0) + 1
        name = _TOMOGRAM.format(int(t) + 1)
        tomo.append(name)
        part.append(f"{name}/{seen[int(t)]}")
        data.append(f"{_SUBTOMOGRAMS}/{name}/{seen[int(t)]}_data.mrc")
        weights.append(f"{_SUBTOMOGRAMS}/{name}/{seen[int(t)]}_weights.mrc")
    return tuple(tomo), tuple(part), tuple(data), tuple(weights)


def _make_parents(out: Path, names: Sequence[str]) -> None:
    for folder in sorted({(out / name).parent for name in names}):
        folder.mkdir(parents=True, exist_ok=True)


def _write_star(
    path: Path, optics: pd.DataFrame, particles: pd.DataFrame, general: dict | None = None
) -> None:
    """RELION 3.1+ blocks (``# version 30001``), or RELION 5's with ``data_general`` first."""
    blocks: dict[str, object] = {} if general is None else {"general": general}
    blocks.update({"optics": optics, "particles": particles})
    version = 30001 if general is None else 50001
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        # RELION 3.1+ recognises its layout (optics groups) by this line before each block.
        text = tmp.read_text()
        tmp.write_text(text.replace("\ndata_", f"\n# version {version}\ndata_"))


def draw_classes_rotations(
    counts: np.ndarray, settings: SimulationSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`(n,)` shuffled classes (``counts[k]`` of class ``k``) and `(n, 3, 3)` rotations.

    Drawn from ``rng`` in this order (the first draws of every simulation mode): uniform on
    SO(3), or about ``settings.rotation_axis`` at uniform angles.
    """
    classes = np.repeat(np.arange(counts.size), counts)
    rng.shuffle(classes)
    n = classes.size
    if settings.rotation_axis is None:
        return classes, random_rotations(n, rng)
    angles = rng.uniform(0.0, 360.0, n)
    return classes, np.stack([rotation_about_axis(settings.rotation_axis, a) for a in angles])


def _draw_poses(
    counts: np.ndarray, settings: SimulationSettings, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes (shuffled), rotations, shifts, defocus values, in this order from ``seed``."""
    rng = np.random.default_rng(seed)
    classes, rotations = draw_classes_rotations(counts, settings, rng)
    n = classes.size
    shifts = rng.uniform(-settings.max_shift, settings.max_shift, (n, 3))
    defocus = settings.defocus_um + settings.defocus_jitter_um * rng.standard_normal(n)
    return classes, rotations, shifts, defocus


def simulate(
    structures: Sequence[np.ndarray],
    names: Sequence[str],
    n_each: int | Sequence[int],
    out_dir: str | os.PathLike[str],
    settings: SimulationSettings,
    *,
    mode: str = "realistic",
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Truth:
    """Simulate particles of each structure and write a simulation directory (module docstring).

    Parameters
    ----------
    structures
        ``K`` `(N, N, N)` float32 structures, ``(z, y, x)``, centred on voxel ``N // 2``
        (e.g. from :func:`faml.simulate.density.load_structure`).
    names
        A name (or source path) per structure, recorded in ``truth.json``.
    n_each
        Particles per structure: one integer for all, or one per structure.
    out_dir
        The simulation directory (created; an existing simulation there is an error unless
        ``overwrite``).
    settings
        Voxel size, SNR, tilt range and step, optics, poses and components
        (:class:`faml.simulate.tiltseries.SimulationSettings`). The SNR is signal variance /
        noise variance; realistic mode: per particle, on the final subtomogram
        (:mod:`faml.simulate.tiltseries`); fast mode: per particle, the posed structure's
        variance over the box against the variance of the white noise added before the wedge
        (as ``simulate_fast``). Tilt step and optics apply to the realistic mode only, and so
        does a ``ctf_form`` other than ``"flipped"`` (an error in the fast mode).
    mode
        ``"realistic"`` (tilt series, CTF, MTF, reconstruction) or ``"fast"`` (3D wedge and
        noise).
    seed
        Seed of every random draw (see the module docstring).
    workers
        Processes to use (:func:`faml.parallel.make_executor`); the result does not depend
        on it.
    progress
        Optional ``callable(done, total)``, called in this process as particles are finished.
    overwrite
        Replace an earlier simulation in ``out_dir``.

    Returns
    -------
    Truth
        Rotations `(n, 3, 3)`, shifts `(n, 3)` (voxels), 0-based classes `(n,)`, particle and
        weight paths, and the path of ``particles.star``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "fast" and settings.ctf_form != "flipped":
        raise ValueError(
            f"the fast mode has no CTF: ctf_form {settings.ctf_form!r} needs the realistic mode"
        )
    vols, names = _check_structures(structures, names)
    counts = _counts(n_each, len(vols))
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    box = vols[0].shape[0]
    out = Path(out_dir)
    _prepare_folder(out, overwrite, settings)

    classes, rotations, shifts, defocus = _draw_poses(counts, settings, seed)
    n = classes.size
    realistic = mode == "realistic"
    extra_cols = None
    if settings.premultiplied:  # RELION 4/5 names, all filed under one tilt series' name
        tomo, part, image_names, weight_names = relion_names(np.zeros(n, dtype=np.int64))
        _make_parents(out, image_names)
        extra_cols = pd.DataFrame({"rlnTomoName": tomo, "rlnTomoParticleName": part})
    else:
        image_names = tuple(f"{_PARTICLES}/particle_{i:06d}.mrc" for i in range(n))
        weight_names = (
            tuple(f"{_WEIGHTS}/weight_{i:06d}.mrc" for i in range(n))
            if realistic
            else (f"{_WEIGHTS}/wedge.mrc",) * n
        )
    job = _Job(
        token=uuid.uuid4().hex,
        mode=mode,
        settings=settings,
        seed=int(seed),
        structures=vols,
        classes=classes,
        rotations=rotations,
        shifts=shifts,
        defocus_um=defocus,
        particle_paths=tuple(str(out / p) for p in image_names),
        weight_paths=tuple(str(out / w) for w in weight_names),
        wedge_path=str(out / _WEIGHTS / "wedge.mrc"),
    )
    logger.info(
        "simulating %d particles of %d structures (%s mode, %d^3, SNR %g) in %s",
        n,
        len(vols),
        mode,
        box,
        settings.snr,
        out,
    )
    for k, vol in enumerate(vols):
        write_volume(out / _TRUTH / f"class_{k + 1:03d}.mrc", vol, settings.voxel_size)
    if not realistic:
        write_volume(job.wedge_path, wedge_mask(box, settings.tilt_range), settings.voxel_size)

    workers = int(workers)
    chunk = max(1, min(4, math.ceil(n / (8 * workers))))
    chunks = [list(range(a, min(a + chunk, n))) for a in range(0, n, chunk)]
    start = time.perf_counter()
    records: list[dict] = []
    executor = make_executor(workers)
    try:
        for result in executor.map(
            _run_chunk, chunks, shared=job, sizes=[len(c) for c in chunks], label="simulate"
        ):
            records.extend(result)
            if progress is not None:
                progress(len(records), n)
    finally:
        executor.close()
        _PREPARED.clear()  # the serial executor prepared the structures in this process
    logger.info("simulated %d particles in %.1f s", n, time.perf_counter() - start)

    _write_outputs(
        out, job, names, counts, image_names, weight_names, records, n_each, extra_cols=extra_cols
    )
    return Truth(
        rotations=rotations,
        shifts=shifts,
        classes=classes,
        paths=job.particle_paths,
        weight_paths=job.weight_paths,
        star_path=str(out / "particles.star"),
    )


def _write_outputs(
    out: Path,
    job: _Job,
    names: tuple[str, ...],
    counts: np.ndarray,
    image_names: tuple[str, ...],
    weight_names: tuple[str, ...],
    records: list[dict],
    n_each: int | Sequence[int],
    *,
    extra_cols: pd.DataFrame | None = None,
    extra_truth: dict | None = None,
) -> None:
    """``particles.star``, ``truth/particles.star`` and ``truth/truth.json``.

    ``extra_cols`` (columns appended to both STAR files) and ``extra_truth`` (keys added to
    ``truth.json``) serve the crowded mode (:mod:`faml.simulate.crowded`), whose particles
    are written like the realistic mode's.
    """
    s = job.settings
    n = len(image_names)
    realistic = job.mode != "fast"
    box = job.structures[0].shape[0]
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [s.voxel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [3],
            "rlnVoltage": [s.voltage_kv],
            "rlnSphericalAberration": [s.cs_mm],
            "rlnAmplitudeContrast": [s.amplitude_contrast],
            "rlnCtfDataAreCtfPremultiplied": [int(s.premultiplied)],
        }
    )
    general = None
    if s.premultiplied:  # RELION 4/5 pseudo-subtomograms (relion_tomo_subtomo's output)
        general = {"rlnTomoSubTomosAre2DStacks": 0}
        optics["rlnTomoSubtomogramBinning"] = [1.0]
        optics["rlnTomoTiltSeriesPixelSize"] = [s.voxel_size]
    cols: dict[str, object] = {
        "rlnImageName": list(image_names),
        "rlnCtfImage": list(weight_names),
        "rlnOpticsGroup": np.ones(n, dtype=np.int64),
    }
    if realistic:
        defocus_angst = np.asarray(job.defocus_um) * 1e4
        cols.update(
            {
                "rlnDefocusU": defocus_angst,
                "rlnDefocusV": defocus_angst,
                "rlnDefocusAngle": np.zeros(n),
            }
        )
    if extra_cols is not None:
        cols.update({c: extra_cols[c].to_numpy() for c in extra_cols.columns})
    _write_star(out / "particles.star", optics, pd.DataFrame(cols), general)

    truth_cols = dict(cols)
    truth_cols.update(pose_columns(job.rotations, job.shifts, job.classes + 1, s.voxel_size))
    _write_star(out / _TRUTH / "particles.star", optics, pd.DataFrame(truth_cols), general)

    truth = {
        "format": "faml-simulation",
        "format_version": 1,
        "faml_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": job.mode,
        "snr": s.snr,
        "snr_definition": (
            "per tomogram: sum over its particles of the variance over the box of the "
            "noise-free subtomogram (neighbours included) / sum of the variances of their "
            "noise parts"
            if job.mode == "crowded"
            else "per particle: variance over the box of the noise-free reconstructed "
            "subtomogram / variance of its noise part"
            if realistic
            else "per particle: variance over the box of the posed structure / variance of the "
            "white noise added before the wedge"
        )
        + (
            "; measured on the phase-flipped form (ctf_form 'flipped'), whose noise s.d. the "
            f"{s.ctf_form!r} form reuses"
            if s.ctf_form != "flipped"
            else ""
        ),
        "ctf_form": s.ctf_form if realistic else None,
        "ctf_premultiplied": s.premultiplied,
        "tilt_range": list(s.tilt_range),
        "tilt_step": s.tilt_step,
        "tilt_angles": s.tilt_angles().tolist() if realistic else None,
        "defocus": s.defocus_um if realistic else None,
        "defocus_unit": "um, positive = underfocus",
        "rotation_axis": s.rotation_axis,
        "max_shift": s.max_shift,
        "seed": job.seed,
        "voxel_size": s.voxel_size,
        "box": box,
        "structures": list(names),
        "class_maps": [f"{_TRUTH}/class_{k + 1:03d}.mrc" for k in range(len(names))],
        "n_each": n_each if np.ndim(n_each) == 0 else counts.tolist(),
        "n_particles": n,
        "settings": s.as_dict(),
        "image_names": list(image_names),
        "angles_relion_deg": matrix_to_euler(job.rotations).tolist(),
        "shifts_voxels": np.asarray(job.shifts).tolist(),
        "classes": (job.classes + 1).tolist(),
        "defocus_um_per_particle": np.asarray(job.defocus_um).tolist() if realistic else None,
        "noise_sigma": [r["noise_sigma"] for r in records],
        "signal_variance": [r["signal_variance"] for r in records],
        "projection_snr": [r["projection_snr"] for r in records] if realistic else None,
    }
    if extra_truth:
        truth.update(extra_truth)
    if isinstance(truth["n_each"], np.integer):
        truth["n_each"] = int(truth["n_each"])
    write_text_atomic(out / _TRUTH / "truth.json", json.dumps(truth, indent=1))


def read_truth(sim_dir: str | os.PathLike[str]) -> SimulationTruth:
    """Read the truth of a simulation directory written by :func:`simulate`.

    Parameters
    ----------
    sim_dir
        The simulation directory (holding ``truth/truth.json`` and ``truth/class_NNN.mrc``).

    Returns
    -------
    SimulationTruth
        Maps `(K, N, N, N)`, rotations `(n, 3, 3)`, shifts `(n, 3)` voxels ``(x, y, z)``,
        0-based classes `(n,)`, voxel size, image names and the ``truth.json`` dict.

    Raises
    ------
    ValueError
        If ``truth/truth.json`` is missing or not a faml simulation record.
    """
    root = Path(sim_dir)
    path = root / _TRUTH / "truth.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root} is not a faml simulation directory ({exc})") from exc
    if meta.get("format") != "faml-simulation":
        raise ValueError(f"{path} is not a faml simulation record")
    maps = np.stack([read_volume(root / p)[0] for p in meta["class_maps"]])
    angles = np.asarray(meta["angles_relion_deg"], dtype=np.float64).reshape(-1, 3)
    return SimulationTruth(
        maps=maps,
        rotations=euler_to_matrix(angles),
        shifts=np.asarray(meta["shifts_voxels"], dtype=np.float64).reshape(-1, 3),
        classes=np.asarray(meta["classes"], dtype=np.int64) - 1,
        voxel_size=float(meta["voxel_size"]),
        image_names=tuple(meta["image_names"]),
        metadata=meta,
    )
