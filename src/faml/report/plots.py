"""The report's figures, each rendered to PNG bytes.

matplotlib draws through its object interface (``Figure`` + the Agg canvas): no pyplot, so
no global state, no display and no backend to choose in a worker or a headless server.
Map slices skip matplotlib altogether: the slices are scaled to 8 bits and written as one
PNG strip at the map's own resolution (the page enlarges them without smoothing).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from faml.evaluate.maps import fsc_resolution
from faml.geometry.rotations import rotation_distance
from faml.report._run import RunFiles

__all__ = [
    "FSC_THRESHOLDS",
    "class_figure",
    "final_fsc_figure",
    "fsc_figure",
    "map_strip",
    "noise_figure",
    "pose_figure",
    "probability_figure",
    "timing_figure",
]

FSC_THRESHOLDS = (0.143, 0.5)
"""FSC values whose crossings are marked (gold-standard half-set criterion, and 0.5)."""

_WIDTH = 10.0  # inches: 1000 pixels at the report's 100 dpi, a laptop screen's width
_DPI = 100


def _figure(rows: int, cols: int, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(_WIDTH, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _scaled(image: np.ndarray) -> np.ndarray:
    """`(H, W)` to 0..1 by its 0.5 and 99.5 percentiles; row 0 at the bottom (y up)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    out = np.clip((image - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(image)
    return out[::-1]


def map_strip(volume: np.ndarray) -> bytes:
    """PNG of a `(N, N, N)` ``(z, y, x)`` map: central xy, xz and yz slices and the z-sum.

    The four panels sit side by side (2-pixel gaps), each scaled to its own 0.5-99.5
    percentile range, density white; the y (or z) axis points up.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"map_strip needs a cubic (N, N, N) volume, got {vol.shape}")
    c = vol.shape[0] // 2
    panels = [vol[c], vol[:, c, :], vol[:, :, c], vol.sum(axis=0)]
    gap = np.full((vol.shape[0], 2), np.nan)
    row = []
    for p in panels:
        row += [_scaled(p), gap]
    strip = np.hstack(row[:-1])
    rgb = np.repeat(np.nan_to_num(strip, nan=0.35)[..., None], 3, axis=2)
    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


def _frequency(box: int, voxel: float, shells: int) -> np.ndarray:
    return np.arange(shells) / (box * voxel)


def fsc_figure(run: RunFiles, truth: dict[int, np.ndarray] | None = None) -> bytes:
    """Half-set FSC per class: the last iteration bold, earlier ones faded.

    The 0.143 and 0.5 crossings of the last curve are marked and named in Ångström.
    ``truth``: 0-based class -> FSC of the final map against its true structure (dashed).
    """
    K = run.classes
    cols = min(K, 3)
    rows = -(-K // cols)
    fig, axes = _figure(rows, cols, 3.2 * rows)
    box, voxel = run.box, run.voxel_size
    earlier = run.iterations[:-1][-4:]
    for k in range(K):
        ax = axes[k // cols, k % cols]
        for j, it in enumerate(earlier):
            f = _frequency(box, voxel, it.fsc.shape[1])
            shade = 0.8 - 0.5 * (j + 1) / (len(earlier) + 1)
            ax.plot(f[1:], it.fsc[k, 1:], color=str(shade), lw=1, label=f"iteration {it.number}")
        last = run.last
        f = _frequency(box, voxel, last.fsc.shape[1])
        ax.plot(f[1:], last.fsc[k, 1:], color="C0", lw=2, label=f"iteration {last.number}")
        for t, style in zip(FSC_THRESHOLDS, ("-", ":"), strict=True):
            res = fsc_resolution(last.fsc[k], box, voxel, t)
            ax.axhline(t, color="0.5", lw=0.8, ls=style)
            ax.axvline(1 / res, color="C3", lw=1, ls=style)
            ax.annotate(
                f"{t:g}: {res:.1f} Å", (1 / res, t), xytext=(4, 4), textcoords="offset points",
                color="C3", fontsize=9,
            )  # fmt: skip
        if truth is not None and k in truth:
            curve = truth[k]
            f = _frequency(box, voxel, len(curve))
            res = fsc_resolution(curve, box, voxel, 0.5)
            ax.plot(f[1:], curve[1:], color="C2", lw=1.5, ls="--", label=f"vs truth ({res:.1f} Å)")
        _fsc_axes(ax, f, k)
    return _finish_grid(fig, axes, K, rows, cols)


def final_fsc_figure(run: RunFiles) -> bytes:
    """The final FSC curves of ``model.star`` per class, the 0.143 crossing marked.

    Gold-standard runs: the mask-corrected curve (bold; its crossing is the resolution), the
    masked, unmasked and phase-randomised curves (thin); otherwise the half-set FSC alone.
    """
    model = run.model
    if model is None:
        raise ValueError(f"{run.folder} has no model.star")
    K = len(model.curves)
    cols = min(K, 3)
    rows = -(-K // cols)
    fig, axes = _figure(rows, cols, 3.2 * rows)
    box, voxel = run.box, run.voxel_size
    styles = {
        "unmasked": ("half maps, unmasked", "0.6", 1.0, ":"),
        "masked": ("half maps, masked", "C1", 1.0, "-"),
        "random": ("phase-randomised, masked", "C3", 1.0, "--"),
        "gold": ("half maps", "C0", 2.0, "-"),
        "corrected": ("mask-corrected", "C0", 2.0, "-"),
    }
    for k, curves in enumerate(model.curves):
        ax = axes[k // cols, k % cols]
        final = "corrected" if "corrected" in curves else "gold"
        for key, (label, color, width, style) in styles.items():
            if key not in curves or (key == "gold" and "unmasked" in curves):
                continue  # the half-map curve is the unmasked one
            c = curves[key]
            f = _frequency(box, voxel, c.size)
            ax.plot(f[1:], c[1:], color=color, lw=width, ls=style, label=label)
        res = fsc_resolution(curves[final], box, voxel, 0.143)
        ax.axhline(0.143, color="0.5", lw=0.8)
        ax.axvline(1 / res, color="C3", lw=1)
        ax.annotate(
            f"0.143: {res:.1f} Å", (1 / res, 0.143), xytext=(4, 4), textcoords="offset points",
            color="C3", fontsize=9,
        )  # fmt: skip
        _fsc_axes(ax, f, k)
    return _finish_grid(fig, axes, K, rows, cols)


def _entries(run: RunFiles, key: str) -> tuple[np.ndarray, list]:
    rows = [(h["iteration"], h[key]) for h in run.history if h.get(key) is not None]
    return np.array([r[0] for r in rows], dtype=int), [r[1] for r in rows]


def class_figure(run: RunFiles) -> bytes:
    """Particles per class (best class, from ``particles.npz``) and alpha over iterations."""
    fig, axes = _figure(1, 2, 3.0)
    its = [it.number for it in run.iterations]
    counts = np.stack([np.bincount(it.classes, minlength=run.classes) for it in run.iterations])
    x, alpha = _entries(run, "alpha")
    alpha = np.array(alpha, dtype=float).reshape(len(x), -1)
    for k in range(run.classes):
        axes[0, 0].plot(its, counts[:, k], "o-", ms=3, label=f"class {k + 1}")
        axes[0, 1].plot(x, alpha[:, k], "o-", ms=3, label=f"class {k + 1}")
    axes[0, 0].set_ylabel("particles (best class)")
    axes[0, 0].set_ylim(0, None)
    axes[0, 1].set_ylabel("α (class prior)")
    axes[0, 1].set_ylim(0, 1)
    for ax in axes[0]:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    return _png(fig)


def noise_figure(run: RunFiles) -> bytes:
    """σ² (mean over the band) and ξ over iterations; σ² per shell of the last iteration."""
    fig, axes = _figure(1, 3, 3.0)
    x, s2 = _entries(run, "sigma2_mean_in_band")
    axes[0, 0].semilogy(x, s2, "o-", ms=3)
    axes[0, 0].set_ylabel("σ² (mean over the band)")
    x, xi = _entries(run, "xi_voxels")
    axes[0, 1].plot(x, xi, "o-", ms=3, color="C1")
    axes[0, 1].set_ylabel("ξ (voxels)")
    axes[0, 1].set_ylim(0, None)
    for ax in axes[0, :2]:
        ax.set_xlabel("iteration")
    last = run.history[-1]
    sigma2 = np.asarray(last.get("sigma2") or [], dtype=float)
    if sigma2.size > 2:
        # shells 1 .. N//2 - 1: the engine keeps no estimate at DC and Nyquist
        f = _frequency(run.box, run.voxel_size, sigma2.size)
        axes[0, 2].semilogy(f[1:-1], np.maximum(sigma2[1:-1], 1e-300), color="C0")
        band = last.get("band_shells")
        if band:
            axes[0, 2].axvline(f[min(int(band), f.size - 1)], color="C3", lw=1, ls=":")
            axes[0, 2].annotate(
                "band", (f[min(int(band), f.size - 1)], 0.95), xycoords=("data", "axes fraction"),
                xytext=(3, 0), textcoords="offset points", color="C3", fontsize=9,
            )  # fmt: skip
    axes[0, 2].set_xlabel("spatial frequency (1/Å)")
    axes[0, 2].set_ylabel(f"σ² per shell (iteration {last['iteration']})")
    return _png(fig)


def probability_figure(run: RunFiles) -> bytes:
    """Histograms of max probability and n_significant (last iteration) and their medians."""
    fig, axes = _figure(1, 3, 3.0)
    last = run.last
    axes[0, 0].hist(last.max_probability, bins=np.linspace(0, 1, 21), color="C0")
    axes[0, 0].set_xlabel(f"max probability (iteration {last.number})")
    axes[0, 0].set_ylabel("particles")
    top = max(int(last.n_significant.max(initial=1)), 5)
    bins = np.arange(0.5, top + 1.5) if top <= 40 else 40
    axes[0, 1].hist(last.n_significant, bins=bins, color="C1")
    axes[0, 1].set_xlabel(f"candidates carrying 90% (iteration {last.number})")
    axes[0, 1].set_ylabel("particles")
    its = [it.number for it in run.iterations]
    ax = axes[0, 2]
    ax.plot(its, [np.median(it.max_probability) for it in run.iterations], "o-", ms=3,
            color="C0", label="median max probability")  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("iteration")
    ax.set_ylabel("median max probability", color="C0")
    ax2 = ax.twinx()
    ax2.plot(its, [np.median(it.n_significant) for it in run.iterations], "s--", ms=3,
             color="C1")  # fmt: skip
    ax2.set_ylabel("median candidates carrying 90%", color="C1")
    ax2.set_ylim(0, None)
    return _png(fig)


def pose_changes(run: RunFiles) -> list[tuple[int, np.ndarray]]:
    """Each particle's change of best rotation (degrees) between consecutive iterations.

    Returns ``(later iteration, (n,) changes)`` per consecutive pair of complete iterations.
    """
    out = []
    for a, b in zip(run.iterations[:-1], run.iterations[1:], strict=True):
        if b.number == a.number + 1 and a.rotations.shape == b.rotations.shape:
            out.append((b.number, rotation_distance(a.rotations, b.rotations)))
    return out


POSE_BOXES = 12
"""Iterations (the last ones) whose distribution of pose changes is drawn."""


def pose_figure(run: RunFiles) -> bytes:
    """Median pose change and class changes per iteration; the distribution of pose changes.

    The distribution is drawn for the last :data:`POSE_BOXES` iterations.
    """
    fig, axes = _figure(1, 2, 3.0)
    ax = axes[0, 0]
    x, med = _entries(run, "median_pose_change_deg")
    ax.plot(x, med, "o-", ms=3, color="C0")
    ax.set_xlabel("iteration")
    ax.set_ylabel("median pose change (°)", color="C0")
    ax.set_ylim(0, None)
    ax2 = ax.twinx()
    x, cc = _entries(run, "class_change")
    ax2.plot(x, 100 * np.asarray(cc, dtype=float), "s--", ms=3, color="C1")
    ax2.set_ylabel("particles that changed class (%)", color="C1")
    ax2.set_ylim(0, None)
    changes = pose_changes(run)[-POSE_BOXES:]
    ax = axes[0, 1]
    if changes:
        ax.boxplot([c for _, c in changes], positions=[n for n, _ in changes], widths=0.6,
                   flierprops={"markersize": 2})  # fmt: skip
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("pose change per particle (°)")
    return _png(fig)


STAGES = ("io", "fft", "align", "estep", "mstep")


def timing_figure(run: RunFiles) -> bytes:
    """Wall time per iteration (map step and the rest) and the map step's stages, stacked."""
    fig, axes = _figure(1, 2, 3.0)
    x = np.array([h["iteration"] for h in run.history])
    total = np.array([float(h.get("seconds") or 0.0) for h in run.history])
    mapped = np.array([float(h.get("seconds_map_step") or 0.0) for h in run.history])
    axes[0, 0].bar(x, mapped, color="C0", label="map step")
    axes[0, 0].bar(x, total - mapped, bottom=mapped, color="C7", label="M-step, re-seeding, saving")
    axes[0, 0].set_ylabel("wall time (s)")
    stages = [h.get("map_step_seconds_by_stage") or {} for h in run.history]
    names = [s for s in STAGES if any(s in d for d in stages)]
    names += sorted({k for d in stages for k in d} - set(names))
    bottom = np.zeros(len(x))
    for i, name in enumerate(names):
        v = np.array([float(d.get(name, 0.0)) for d in stages])
        axes[0, 1].bar(x, v, bottom=bottom, color=f"C{i}", label=name)
        bottom += v
    axes[0, 1].set_ylabel("map step, summed over tasks (s)")
    for ax in axes[0]:
        ax.set_xlabel("iteration")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def resolution_per_class(run: RunFiles, threshold: float = 0.143) -> list[float]:
    """Ångström where each class's last half-set FSC drops below ``threshold``."""
    return [fsc_resolution(c, run.box, run.voxel_size, threshold) for c in run.last.fsc]


def _fsc_axes(ax, frequencies: np.ndarray, klass: int) -> None:
    """Limits, labels, title and legend of one class's FSC panel."""
    ax.set_ylim(-0.1, 1.02)
    ax.set_xlim(0, frequencies[-1])
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(f"class {klass + 1}")
    ax.legend(fontsize=8, loc="upper right")


def _finish_grid(fig, axes, used: int, rows: int, cols: int) -> bytes:
    """Hide the grid's unused panels; the figure as PNG bytes."""
    for j in range(used, rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return _png(fig)
