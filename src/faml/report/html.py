"""The run report: one self-contained HTML page (figures embedded as PNG, no scripts).

:func:`write_report` reads a run directory (complete or in progress, see
:mod:`faml.report._run`), draws the figures of :mod:`faml.report.plots` and writes
``DIR/report.html`` atomically. With a truth (a simulation folder or a map) each class's
final map is also scored against it (:func:`faml.evaluate.score_map`).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from faml import __version__
from faml.evaluate import score_map
from faml.evaluate.files import read_simulation
from faml.io.atomic import write_text_atomic
from faml.io.mrc import read_volume
from faml.report import plots
from faml.report._run import INFO_FILE, RunFiles, read_run_files

__all__ = ["render_html", "select_iterations", "truth_scores", "write_report"]

logger = logging.getLogger(__name__)

MAP_ITERATIONS = 6
"""Most iterations whose map slices are shown (the first, evenly spaced ones, the last)."""

_PANEL_PX = 112  # on-screen width of one map panel

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1040px;padding:0 16px 40px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin:18px 0 4px}h2{font-size:1.2em;margin:28px 0 6px;
border-bottom:1px solid #ccc;padding-bottom:2px}h3{font-size:1em;margin:14px 0 4px}
p.note{color:#555;font-size:.9em;margin:4px 0 8px}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px 3px 0;text-align:left;
vertical-align:top}th{font-weight:600}
table.summary td:first-child{color:#555;white-space:nowrap}
img{max-width:100%;height:auto}img.map{image-rendering:pixelated;max-width:none}
code{font-size:.85em;word-break:break-all}
.warn{background:#fff4d6;border:1px solid #e8c66a;padding:6px 10px}
nav a{margin-right:12px;font-size:.9em}
"""


def select_iterations(numbers: list[int], most: int = MAP_ITERATIONS) -> list[int]:
    """Up to ``most`` of ``numbers``: the first, evenly spaced middle ones and the last."""
    if len(numbers) <= most:
        return list(numbers)
    picks = np.round(np.linspace(0, len(numbers) - 1, most)).astype(int)
    return [numbers[i] for i in sorted(set(picks.tolist()))]


def _img(png: bytes, alt: str, cls: str = "", width: int | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    attrs = f' class="{cls}"' if cls else ""
    if width is not None:
        attrs += f' width="{width}"'
    return f'<img{attrs} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def truth_scores(run: RunFiles, truth: str | os.PathLike[str]) -> dict[int, object]:
    """Each class's map (final, else the newest iteration's) scored against the truth.

    ``truth``: a simulation folder (``truth/class_NNN.mrc``) or one map (MRC). Each class is
    scored (:func:`faml.evaluate.score_map`, both low-passed to the run's resolution for
    the alignment) against every true map and keeps the best-correlated one. Returns
    0-based class -> :class:`faml.evaluate.MapScore`.
    """
    path = Path(truth)
    if path.is_dir():
        truth_maps = read_simulation(path).maps
    else:
        vol, _ = read_volume(path)
        truth_maps = vol[None]
    if truth_maps.shape[-1] != run.box:
        raise ValueError(f"the truth is {truth_maps.shape[-1]}^3, the run's maps {run.box}^3")
    final = [run.folder / f"class_{k + 1:03d}.mrc" for k in range(run.classes)]
    if not (run.complete and all(p.exists() for p in final)):
        final = [run.last.class_map(k) for k in range(run.classes)]
    lp = run.history[-1].get("resolution_angstrom")
    scores = {}
    for k, p in enumerate(final):
        vol, _ = read_volume(p)
        best = None
        for t in truth_maps:
            s = score_map(vol, t, run.voxel_size, lowpass_angstrom=lp)
            if best is None or s.correlation > best.correlation:
                best = s
        scores[k] = best
    return scores


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _final_summary(model) -> str:
    per_class = ", ".join(
        f"class {k + 1}: {r:.1f} Å" for k, r in enumerate(model.resolutions)
    )  # fmt: skip
    if model.independent:
        kind = "gold standard" + (
            ", mask-corrected" if any("corrected" in c for c in model.curves) else ""
        )
    elif model.independent is False:
        kind = "half-sets aligned to the joint average: optimistic"
    else:
        kind = "half-set FSC"
    return f"{per_class} ({kind})"


def _stability_text(stability: dict) -> str:
    """``run.json``'s stability (:mod:`faml.ml.stability`) in one line."""
    per_class = ", ".join(
        f"class {k + 1} {100 * t:.0f}% together" + ("" if ok else " (not stable)")
        for k, (t, ok) in enumerate(
            zip(stability.get("class_together", []), stability.get("class_stable", []),
                strict=False)
        )
    )  # fmt: skip
    return (
        f"suggested K = {stability.get('suggested_classes')}: {stability.get('evidence', '')}"
        f" ({per_class}; seeds {', '.join(str(s) for s in stability.get('seeds', []))})"
    )


def _verdict_text(verdict: dict) -> str:
    """``run.json``'s verdict (:mod:`faml.ml.verdict`) in one line."""
    agreement = verdict.get("evidence", {}).get("start_agreement")
    shown = "" if agreement is None else f" (two starts agree on {100 * agreement:.0f}%)"
    if verdict.get("trusted"):
        missing = verdict.get("not_assessed") or []
        return (
            "passed every check"
            + shown
            + (f"; not assessed: {', '.join(missing)}" if missing else "")
        )
    return "CANNOT BE TRUSTED: " + "; ".join(verdict.get("reasons", []))


def _summary(run: RunFiles, scores: dict | None) -> str:
    info, cfg = run.info, run.config
    last = run.history[-1]
    done = last["iteration"]
    planned = cfg.get("iterations")
    if run.complete:
        state = "complete"
        if last.get("converged"):
            state += f" (converged at iteration {done})"
    else:
        state = f"in progress: iteration {done}" + (f" of {planned}" if planned else "")
    res = plots.resolution_per_class(run, 0.143)
    res05 = plots.resolution_per_class(run, 0.5)
    counts = np.bincount(run.last.classes, minlength=run.classes)
    per_class = ", ".join(
        f"class {k + 1}: {r:.1f} Å (0.5: {r5:.1f} Å), {c} particles"
        for k, (r, r5, c) in enumerate(zip(res, res05, counts, strict=True))
    )
    method = cfg.get("method", "?")
    tuning = cfg.get("tuning", cfg)  # runs before RunConfig and Tuning were apart: flat
    if method == "faml" and tuning.get("fa_iterations"):
        method += f" (FA for the first {tuning['fa_iterations']} iterations)"
    command = info.get("command_line")
    seconds = info.get("seconds") or sum(float(h.get("seconds") or 0) for h in run.history)
    rows = [
        ("status", state),
        ("faml version", info.get("faml_version", "?")),
        ("command line", f"<code>{html.escape(' '.join(command))}</code>" if command else "?"),
        ("particles", f"{run.particles}"),
        ("box", f"{run.box}³ voxels, {run.voxel_size:g} Å/voxel"),
        ("classes K", f"{run.classes}"),
        ("method", method),
        ("iterations", f"{done} done" + (f", at most {planned}" if planned else "")),
        ("resolution (half-set FSC 0.143)", per_class),
        *([("final resolution (model.star)", _final_summary(run.model))] if run.model else []),
        ("band of the last iteration", f"{last.get('band_shells')} shells "
         f"({float(last.get('resolution_angstrom') or 0):.1f} Å)"),
        ("workers", f"{info.get('workers', '?')} ({info.get('executor', '?')})"),
        ("wall time", _fmt_seconds(float(seconds))),
        ("seed", f"{cfg.get('seed', info.get('seed', '?'))}"),
    ]  # fmt: skip
    verdict = info.get("verdict")
    if verdict:
        rows.insert(1, ("verdict", _verdict_text(verdict)))
    stability = info.get("stability")
    if stability:
        rows.insert(2, ("class stability", _stability_text(stability)))
    if scores:
        rows.append((
            "against the truth",
            ", ".join(
                f"class {k + 1}: correlation {s.correlation:.3f}, FSC 0.5 at "
                f"{s.resolution_05:.1f} Å, 0.143 at {s.resolution_0143:.1f} Å"
                for k, s in sorted(scores.items())
            ),
        ))  # fmt: skip
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v if k == 'command line' else html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f'<table class="summary">{body}</table>'


def _maps_section(run: RunFiles) -> str:
    numbers = [it.number for it in run.iterations]
    chosen = set(select_iterations(numbers))
    width = 4 * _PANEL_PX + 6 * _PANEL_PX // run.box
    head = (
        '<tr><th>iteration</th><th><span style="display:inline-block;width:'
        f'{width}px">'
        + "".join(
            f'<span style="display:inline-block;width:{_PANEL_PX}px">{t}</span>'
            for t in ("xy, central z", "xz, central y", "yz, central x", "sum along z")
        )
        + "</span></th></tr>"
    )
    parts = []
    for k in range(run.classes):
        rows = []
        for it in run.iterations:
            if it.number not in chosen:
                continue
            vol, _ = read_volume(it.class_map(k))
            strip = plots.map_strip(vol)
            alpha = f"α {it.alpha[k]:.2f}" if k < it.alpha.size else ""
            image = _img(strip, f"class {k + 1}, iteration {it.number}", "map", width)
            rows.append(f"<tr><td>{it.number}<br><small>{alpha}</small></td><td>{image}</td></tr>")
        parts.append(f"<h3>Class {k + 1}</h3><table>{head}{''.join(rows)}</table>")
    shown = ", ".join(str(n) for n in numbers if n in chosen)
    return (
        '<h2 id="maps">Class averages</h2><p class="note">Central slices and a projection of '
        "each class's FSC-filtered, masked average (<code>iterations/NNN/class_KKK.mrc</code>);"
        f" density is white, each panel scaled on its own. Iterations shown: {shown}.</p>"
        + "".join(parts)
    )


def _independence(model) -> str:
    if model.independent is None:
        return "model.star does not say whether the half maps were refined independently."
    if model.independent:
        return (
            "The two half maps were refined independently after the common start (gold "
            "standard, <code>--gold-standard</code>): their FSC is an honest resolution "
            "estimate."
        )
    return (
        "The half maps were <b>not</b> refined independently: both half-sets were aligned "
        "to the joint average, so their FSC is optimistic (run with "
        "<code>--gold-standard</code> for an honest one)."
    )


def _final_section(run: RunFiles) -> str:
    """The final FSC of ``model.star``: figure, resolution per class, the half maps."""
    model = run.model
    rows = []
    for k, curves in enumerate(model.curves):
        kind = "mask-corrected FSC" if "corrected" in curves else "half-set FSC"
        halves = ", ".join(
            f'<a href="{html.escape(p.name)}"><code>{html.escape(p.name)}</code></a>'
            for p in model.half_maps[k]
        )  # fmt: skip
        rows.append(
            f"<tr><td>class {k + 1}</td><td>{model.resolutions[k]:.1f} Å</td>"
            f"<td>{kind}</td><td>{halves or '–'}</td></tr>"
        )
    table = (
        "<table><tr><th>class</th><th>FSC 0.143</th><th>from</th>"
        f"<th>unfiltered half maps</th></tr>{''.join(rows)}</table>"
    )
    corrected = any("corrected" in c for c in model.curves)
    note = (
        "FSC of the final half maps (<code>model.star</code>, RELION's layout). "
        + (
            "Bold: corrected for the mask by phase randomisation (RELION's "
            "post-processing), whose 0.143 crossing is the resolution; thin: the FSC of the "
            "masked and unmasked half maps and of the masked maps with phases randomised "
            "beyond the shell where the unmasked FSC drops below 0.8. "
            if corrected
            else "Bold: the FSC of the half-set averages. "
        )
        + _independence(model)
    )
    return (
        f'<p class="note">{note}</p>'
        + _img(plots.final_fsc_figure(run), "final FSC curves from model.star")
        + table
    )


def render_html(run: RunFiles, scores: dict | None = None) -> str:
    """The report page of ``run`` (``scores``: from :func:`truth_scores`)."""
    truth_curves = None if not scores else {k: s.fsc for k, s in scores.items()}
    name = html.escape(run.folder.name or str(run.folder))
    sections = [
        ("summary", "Summary", _summary(run, scores), ""),
        ("maps", None, _maps_section(run), ""),
        (
            "fsc", "Resolution (FSC)",
            _img(plots.fsc_figure(run, truth_curves), "FSC curves"),
            "Fourier shell correlation between the averages of the two random half-sets of "
            "each class (gold standard): the last iteration in blue, earlier ones in grey. "
            "The red lines mark where the last curve crosses 0.143 (solid; the resolution "
            "estimate) and 0.5 (dotted)."
            + (" Green dashed: the final map against the true structure (its 0.5 crossing in"
               " the legend)." if truth_curves else ""),
        ),
        *(
            [("final", "Final resolution (model.star)", _final_section(run), "")]
            if run.model is not None
            else []
        ),
        (
            "classes", "Classes",
            _img(plots.class_figure(run), "class sizes and alpha"),
            "Particles per class by their most probable class, and the class priors α. "
            "A class that nearly empties is re-seeded by the engine.",
        ),
        (
            "noise", "Noise and translation prior",
            _img(plots.noise_figure(run), "sigma2 and xi"),
            "σ²: the noise power per Fourier shell (mean over the shells in use, and per "
            "shell for the last iteration; the dotted line is the band). ξ: the width of the "
            "translation prior in voxels. Both should settle as the run converges.",
        ),
        (
            "probabilities", "Confidence of the assignments",
            _img(plots.probability_figure(run), "max probability and significant candidates"),
            "Per particle: the largest posterior probability over its candidate poses and "
            "classes, and how many candidates carry 90% of its weight (FA, and FAML's FA "
            "iterations, are hard: max probability 1, one candidate). A run that is sure of "
            "its poses has max probabilities near 1 and few significant candidates.",
        ),
        (
            "poses", "Pose and class changes",
            _img(plots.pose_figure(run), "pose changes"),
            "How far each particle's best rotation moved since the previous iteration "
            "(median on the left, with the share of particles that changed class; the "
            "distribution on the right, symmetric-log scale). The run stops when both are "
            "small.",
        ),
        (
            "timing", "Wall time",
            _img(plots.timing_figure(run), "timings"),
            "Left: seconds per iteration, the map step (alignment, E-step, sums) and the rest. "
            "Right: the map step's stages, summed over all tasks (with several workers this "
            "exceeds the wall time).",
        ),
    ]  # fmt: skip
    nav = "".join(f'<a href="#{i}">{t or "Class averages"}</a>' for i, t, _, _ in sections)
    body = []
    for ident, title, content, note in sections:
        if title:
            body.append(f'<h2 id="{ident}">{html.escape(title)}</h2>')
        if note:
            body.append(f'<p class="note">{html.escape(note)}</p>')
        body.append(content)
    warn = ""
    if not run.complete:
        warn = (
            '<p class="warn">This run is in progress (or was stopped): the page shows the '
            "complete iterations so far and is updated after each one.</p>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>faml report: {name}</title><style>{_CSS}</style></head><body>"
        f"<h1>faml run report: {name}</h1>"
        f'<p class="note">Written {stamp} by faml {html.escape(__version__)} from '
        f"<code>{html.escape(str(run.folder.resolve()))}</code>.</p>"
        f"{warn}<nav>{nav}</nav>{''.join(body)}</body></html>\n"
    )


def write_report(
    run_dir: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    info: dict | None = None,
) -> Path:
    """Write the report of a run directory; returns its path.

    Parameters
    ----------
    run_dir
        A run directory with at least one complete iteration.
    truth
        A simulation folder or a true map (MRC): also score the maps against it.
    out
        The page (default ``run_dir/report.html``).
    info
        The running engine's summary (version, command line, configuration, particles,
        box, voxel size, workers) while there is no ``run.json``; kept in
        ``run_dir/report/run_info.json`` so that ``faml report`` can rebuild the page of a
        run in progress.
    """
    folder = Path(run_dir)
    if info is not None:
        (folder / INFO_FILE).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / INFO_FILE, json.dumps(info, indent=1))
    run = read_run_files(folder, info)
    scores = truth_scores(run, truth) if truth is not None else None
    page = render_html(run, scores)
    target = Path(out) if out is not None else folder / "report.html"
    write_text_atomic(target, page)
    return target
