"""Accuracy of ``fast_align`` against known poses: the figures behind the tests.

Usage::

    python benchmarks/accuracy_fast_align.py [--n 50] [--box 32]

Prints, for the ribosome test structure with a +-60 degree wedge:

- noise-free, n random rotations and shifts (|shift| <= 3 voxels per axis): how often the
  best grid candidate (no refinement) is within one grid step, how often the refined best
  candidate is within 3 degrees and 0.5 voxel, and the median / maximum errors;
- SNR 0.1 (signal variance / noise variance, noise added before the wedge): how often a
  candidate within 10 degrees of the truth is among the M = 20, and the best one is;
- c~ on the Euler grid against direct quadrature at 20 random grid points, for the shell
  functions projected on degree <= L (the exactness of the SO(3) step) and for the average
  actually rotated (Fourier gather) and re-sampled (interpolation effects included).
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.fft

from _data import ribosome
from faml.align import AlignSettings, align_to, prepare_average
from faml.align import fast as fast_module
from faml.align import prepared as prepared_module
from faml.align._sphere import analyse, synthesise
from faml.align.fourier_rotation import padded_spectrum, rotated_spectra
from faml.align.shells import sample_shells
from faml.align.so3 import euler_grid, so3_correlate
from faml.geometry.rotations import random_rotations, rotation_distance
from faml.geometry.transform import transform_volume
from faml.geometry.wedge import wedge_mask


def particles(reference, n, snr, rng, wedge):
    rots = random_rotations(n, rng)
    shifts = rng.uniform(-3.0, 3.0, size=(n, 3))
    out = []
    for r, t in zip(rots, shifts, strict=True):
        p = transform_volume(reference, r, t, order=3)
        if snr:
            p = p + rng.standard_normal(p.shape).astype(np.float32) * np.sqrt(p.var() / snr)
        out.append(scipy.fft.irfftn(scipy.fft.rfftn(p) * wedge, s=p.shape).astype(np.float32))
    return out, rots, shifts


def pose_figures(reference, n, rng):
    box = reference.shape[0]
    wedge = wedge_mask(box, (-60, 60))
    ps, rots, shifts = particles(reference, n, 0.0, rng, wedge)
    refined = prepare_average(reference, AlignSettings(box=box))
    raw = prepare_average(reference, AlignSettings(box=box, refine=False, polish=0))
    step = euler_grid(refined.settings.resolved_degree).step_deg
    e_grid, e_ref, e_shift = [], [], []
    for p, r, t in zip(ps, rots, shifts, strict=True):
        e_grid.append(rotation_distance(align_to(p, wedge, raw)[0].rotation, r))
        best = align_to(p, wedge, refined)[0]
        e_ref.append(rotation_distance(best.rotation, r))
        e_shift.append(np.linalg.norm(best.shift - t))
    e_grid, e_ref, e_shift = map(np.asarray, (e_grid, e_ref, e_shift))
    print(
        f"noise-free {box}^3, n={n}, grid step {step:.1f} deg: best grid candidate within one "
        f"step {np.sum(e_grid <= step)}/{n} (median {np.median(e_grid):.1f} deg); refined "
        f"within 3 deg {np.sum(e_ref <= 3)}/{n} (median {np.median(e_ref):.2f}, max "
        f"{e_ref.max():.2f} deg); shift within 0.5 voxel {np.sum(e_shift <= 0.5)}/{n} "
        f"(median {np.median(e_shift):.3f}, max {e_shift.max():.3f})"
    )
    ps, rots, _ = particles(reference, n, 0.1, rng, wedge)
    in_m = best10 = 0
    for p, r in zip(ps, rots, strict=True):
        cands = align_to(p, wedge, refined)
        d = [rotation_distance(c.rotation, r) for c in cands]
        in_m += min(d) <= 10
        best10 += d[0] <= 10
    print(
        f"SNR 0.1 {box}^3, n={n}: truth (within 10 deg) among the 20 candidates {in_m}/{n}; "
        f"best candidate within 10 deg {best10}/{n}"
    )


def score_figures(reference, rng):
    box = reference.shape[0]
    st = AlignSettings(box=box)
    wedge = wedge_mask(box, (-60, 60))
    (p,), _, _ = particles(reference, 1, 0.0, rng, wedge)
    prepared = prepare_average(reference, st)
    grid, radii, degrees, keep = prepared_module._shell_setup(st)
    pft = scipy.fft.rfftn(p)
    w2 = wedge * wedge * fast_module.band_mask(box, st.resolved_band_limit)
    ws, wm = sample_shells(np.stack([w2, w2 * np.abs(pft)]), radii, grid).astype(float)
    mag = wm / np.maximum(ws, 1e-6)
    ws = (ws >= 0.5).astype(float)
    mu = np.einsum("j,sjk->s", grid.weights, ws * mag) / np.einsum("j,sjk->s", grid.weights, ws)
    p0 = ws * (mag - mu[:, None, None])
    f = analyse(np.stack([p0, ws]), grid, degrees) * keep[None, :, :, None]
    egrid = euler_grid(st.resolved_degree)
    c0, c1 = so3_correlate(f, prepared.coeffs, degrees, egrid)
    score = c0 / np.sqrt(c1)
    L = st.resolved_degree
    padded = padded_spectrum(reference)

    def full(rows):
        out = np.zeros((L + 1, L + 1), complex)
        out[degrees] = rows
        return out

    exact, interp = [], []
    for _ in range(20):
        idx = np.array([rng.integers(n) for n in egrid.shape])
        r = egrid.matrices(egrid.angles(idx))
        sums = []
        for ch in range(2):
            sums.append(
                sum(
                    np.sum(
                        grid.weights[:, None]
                        * synthesise(full(f[ch, s]), grid.directions)
                        * synthesise(full(prepared.coeffs[ch, s]), grid.directions @ r)
                    )
                    for s in range(len(radii))
                )
            )
        exact.append(abs(sums[0] / np.sqrt(sums[1]) - score[tuple(idx)]) / np.abs(score).max())
        # Interpolation effects included: rotate the average itself, re-sample its shells.
        rot_mag = np.abs(rotated_spectra(padded, r[None], box // 2 - 1)[0])
        q0 = sample_shells(rot_mag[None], radii, grid)[0].astype(float)
        q0 -= np.einsum("j,sjk->s", grid.weights, q0)[:, None, None] / (4 * np.pi)
        d0 = np.sum(grid.weights[:, None] * p0 * q0)
        d1 = np.sum(grid.weights[:, None] * ws * q0 * q0)
        interp.append(abs(d0 / np.sqrt(d1) - score[tuple(idx)]) / np.abs(score).max())
    print(
        "c~ on the grid vs direct quadrature at 20 random grid points (relative to max |c~|): "
        f"band-limited shell functions max {max(exact):.2e}; average rotated and re-sampled "
        f"(interpolation and degree truncation included) median {np.median(interp):.3f}, "
        f"max {max(interp):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--box", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(2024)
    reference = ribosome(args.box)
    pose_figures(reference, args.n, rng)
    score_figures(reference, rng)


if __name__ == "__main__":
    main()
