"""``faml run``'s output folder: writable, not among the inputs, and the run it holds.

A run records what decides its result in ``OUT/inputs.json`` (:func:`_fingerprint`): the
particles (count, a sha256 of their files and tilt ranges, box, voxel size, CTF form), the
reference mask when one is given (a sha256 of its voxels), the references the run starts
from (``--reference``: a sha256 of the prepared maps) and the configuration
(``RunConfig.to_dict()`` without the settings that do not change the result). A later
command on the same folder is compared with it (:func:`_check_out`).

faml's modules (:mod:`faml.io.atomic`, :mod:`faml.ml.config`), numpy and the standard
library's ``hashlib``, ``shutil`` and ``pathlib`` are imported inside the functions:
``faml --help`` imports this module and needs none of them.
"""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger("faml.cli")

_INPUTS = "inputs.json"

# Settings that do not change the result, left out of the fingerprint: --batch-size (the
# map step's sums follow one tree over the particles whatever the batches).
_NOT_DECIDING = ("chunk_size",)

# RunConfig's fields as the options of faml run that set them; a field without an option
# is named as it is.
_OPTIONS = {
    "classes": "--classes",
    "references": "--reference",
    "initial_lowpass": "--initial-lowpass",
    "method": "--method",
    "iterations": "--iterations",
    "seed": "--seed",
    "max_shift": "--max-shift",
    "symmetry": "--symmetry",
    "gold_standard": "--gold-standard",
    "particle_mask_radius": "--particle-mask/--particle-diameter",
    "max_candidates": "--candidates",
    "scan_step_deg": "--scan-step/--no-scan",
    "likelihood": "--likelihood",
    "local_candidates": "--local-candidates",
    "local_rings": "--local-rings",
    "voronoi": "--voronoi",
    "average_update": "--average-update",
    "starts": "--starts",
    "start_iterations": "--start-iterations",
    "fa_iterations": "--fa-iterations",
    "grid_iterations": "--grid-iterations",
    "verify": "--no-verify",
    "mask_sha256": "--mask/--particle-diameter",
    "local_search_deg": "--local-search",
    "references_sha256": "--reference",
    "focused": "--focus-mask",
    "focus_mask_sha256": "--focus-mask",
}

_MISSING = object()


class RunMismatch(ValueError):
    """``--continue`` on a folder whose run had other particles or settings (one line)."""


def _check_out_writable(out) -> None:
    """``--out`` must be a folder (or not exist yet) that can be written to."""
    import os

    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == out else f" ({probe} is a file)"
        raise ValueError(f"--out {out} is not a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(probe))


def _without(settings: dict, names) -> dict:
    """``settings`` (nested dicts too) without the keys ``names``, at any depth."""
    return {
        k: _without(v, names) if isinstance(v, dict) else v
        for k, v in settings.items()
        if k not in names
    }


def _fingerprint(table, config, mask=None, references=None, focus=None) -> dict:
    """What decides the run's result: the particles, the masks, the references, the settings.

    ``mask``: the `(N, N, N)` reference mask given by ``--mask`` or ``--particle-diameter``
    (its sha256 is recorded), or ``None`` for the default sphere (then nothing is: the
    configuration's ``mask_radius`` says it). ``references``: the `(R, N, N, N)` maps the
    run starts from as the engine gets them (:func:`faml.io.references.read_references`;
    their sha256 is recorded), or ``None`` (reference-free: nothing is). ``focus``: the
    `(N, N, N)` ``--focus-mask`` (its sha256 is recorded), or ``None``.
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for p, w in zip(table.paths, table.weight_paths, strict=True):
        digest.update(f"{p}\t{w}\n".encode())
    digest.update(json.dumps(table.tilt_ranges.tolist()).encode())
    form = {"ctf_premultiplied": True} if table.ctf_premultiplied else {}  # old runs: absent
    if mask is not None:
        voxels = np.ascontiguousarray(mask, dtype=np.float32)
        form["mask_sha256"] = hashlib.sha256(voxels.tobytes()).hexdigest()
    if references is not None:
        voxels = np.ascontiguousarray(references, dtype=np.float32)
        form["references_sha256"] = hashlib.sha256(voxels.tobytes()).hexdigest()
    if focus is not None:
        voxels = np.ascontiguousarray(focus, dtype=np.float32)
        form["focus_mask_sha256"] = hashlib.sha256(voxels.tobytes()).hexdigest()
    return {
        "particles": len(table),
        "particles_sha256": digest.hexdigest(),
        "box": table.box,
        "voxel_size": table.voxel_size,
        **form,
        "config": _without(config.to_dict(), _NOT_DECIDING),
    }


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as ``{dotted.path: value}``."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _by_field(settings: dict) -> dict:
    """Settings by field name (the last part of the path), whatever their grouping.

    A run recorded before ``RunConfig`` had groups compares with one after; a name in two
    groups keeps its path.
    """
    flat = _flat(_without(settings, _NOT_DECIDING))
    leaves = [path.rsplit(".", 1)[-1] for path in flat]
    return {
        (leaf if leaves.count(leaf) == 1 else path): value
        for (path, value), leaf in zip(flat.items(), leaves, strict=True)
    }


def _defaults() -> dict:
    """Every setting's default by field name (settings added since a run was recorded)."""
    from faml.ml.config import RunConfig

    return _by_field(json.loads(json.dumps(RunConfig().to_dict())))


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting(field: str, value) -> str:
    """One setting as the options that give it: ``--classes 2``, ``--no-scan``."""
    option = _OPTIONS.get(field, field)
    if field == "mask_sha256":
        return "the default mask" if value is _MISSING else f"{option} (sha256 {value[:12]})"
    if field == "focus_mask_sha256":
        return f"no {option}" if value is _MISSING else f"{option} (sha256 {value[:12]})"
    if field == "references_sha256":
        return f"no {option}" if value is _MISSING else f"{option} (sha256 {value[:12]})"
    if value is _MISSING:
        return f"no {option} (not recorded)"
    if field == "references" and isinstance(value, int):
        return f"{option} ({value} map{'' if value == 1 else 's'})" if value else f"no {option}"
    if field == "verify":
        return "--no-verify" if value is False else "the verification (no --no-verify)"
    if field == "scan_step_deg":
        return "--no-scan" if value is None else f"--scan-step {_value(value)}"
    if field == "particle_mask_radius":
        if value is None:
            return "no --particle-mask"
        return f"{option} (radius {value:.3g} of the box)"
    if field in _OPTIONS and isinstance(value, bool):
        return option if value else f"no {option}"
    if field in _OPTIONS and value is None:
        return f"no {option}"
    return f"{option} {_value(value)}"


def _particle_differences(before: dict, now: dict) -> list[tuple[str, str]]:
    """The particles' differences as ``(recorded, this command's)`` phrases."""
    pairs = []
    if before.get("particles") != now.get("particles"):
        pairs.append((f"{before.get('particles')} particles", f"{now.get('particles')} particles"))
    elif before.get("particles_sha256") != now.get("particles_sha256"):
        what = "particles (paths, weights, tilt ranges) of sha256"
        pairs.append(tuple(f"{what} {str(f.get('particles_sha256'))[:12]}" for f in (before, now)))
    if before.get("box") != now.get("box"):
        pairs.append((f"box {before.get('box')}", f"box {now.get('box')}"))
    if before.get("voxel_size") != now.get("voxel_size"):
        pairs.append(tuple(f"voxel size {_value(f.get('voxel_size'))} A" for f in (before, now)))
    forms = ["premultiplied" if f.get("ctf_premultiplied") else "multiplied" for f in (before, now)]
    if forms[0] != forms[1]:
        pairs.append(tuple(f"--ctf-form {form}" for form in forms))
    known = {"particles", "particles_sha256", "box", "voxel_size", "ctf_premultiplied", "config"}
    for key in sorted((set(before) | set(now)) - known):
        if before.get(key, _MISSING) != now.get(key, _MISSING):
            pairs.append(tuple(_setting(key, f.get(key, _MISSING)) for f in (before, now)))
    return pairs


def _differences(before: dict, now: dict) -> dict[str, tuple[str, str]]:
    """What differs between two fingerprints, ``{field: (recorded, this command's)}``.

    The particles first (``"particles"``, one phrase each), then the settings by field name
    (nested configurations flattened; ``chunk_size`` and other settings that do not change
    the result left out).
    """
    found = {}
    pairs = _particle_differences(before, now)
    if pairs:
        found["particles"] = (", ".join(p[0] for p in pairs), ", ".join(p[1] for p in pairs))
    old, new = _by_field(before.get("config") or {}), _by_field(now.get("config") or {})
    defaults = _defaults()
    for field in [*old, *(f for f in new if f not in old)]:
        a, b = old.get(field, _MISSING), new.get(field, _MISSING)
        if a is _MISSING and field in defaults and b == defaults[field]:
            continue  # a setting added since that run, at the value it ran with
        if a != b:
            found[field] = (_setting(field, a), _setting(field, b))
    if "references" in found and before.get("references_sha256") != now.get("references_sha256"):
        del found["references"]  # the maps' sha256 already names --reference
    if "focused" in found and "focus_mask_sha256" in found:
        del found["focused"]  # the mask's sha256 already names --focus-mask
    return found


def _check_out(
    args: argparse.Namespace, table, config, mask=None, references=None, focus=None
) -> None:
    """Refuse an ``--out`` among the inputs, or one that holds another run.

    faml never writes next to its input particles: ``--out`` must not be the folder of a
    particle or weight file. A folder that holds a run (``run.json``, ``iterations/``,
    ``starts/``) of other particles or settings is refused unless ``--continue`` (resume
    it) or ``--overwrite`` (its iterations and ``run.json`` are removed first). With
    ``--continue`` the run must be of the same particles and settings, ``--iterations``
    aside (a run continued to more iterations); ``--batch-size`` never counts.
    """
    import shutil
    from pathlib import Path

    out = Path(args.out).resolve()
    inputs = {Path(p).parent for p in table.paths}
    inputs |= {Path(w).parent for w in table.weight_paths if w is not None}
    if out in inputs:
        raise ValueError(
            f"--out {args.out} is the folder of the input particles: faml writes nothing "
            "beside its inputs; choose another output folder"
        )
    held = [n for n in ("run.json", "iterations", "starts", "verify") if (out / n).exists()]
    if not held:
        return
    try:
        before = json.loads((out / _INPUTS).read_text())
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):
        before = None
    now = json.loads(json.dumps(_fingerprint(table, config, mask, references, focus)))
    if args.resume:
        _check_continue(args, held, before, now)
        return
    if before is not None and not _differences(before, now):
        return  # the same run again
    if not args.overwrite:
        why = "other particles or settings" if before else f"no {_INPUTS} to compare with"
        raise FileExistsError(
            f"--out {args.out} holds another run ({', '.join(held)}; {why}): add --overwrite "
            "to replace it or --continue to resume it"
        )
    logger.warning("--overwrite: removing %s from %s", ", ".join(held), args.out)
    for name in held:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _check_continue(args: argparse.Namespace, held: list[str], before, now: dict) -> None:
    """``--continue``: the run in ``--out`` must be of this command's particles and settings.

    Refused (:class:`RunMismatch`, one line naming each difference by its option) unless
    only ``--iterations`` differs (logged: the run is continued to the new number).
    """
    if before is None:
        raise RunMismatch(
            f"--continue: --out {args.out} holds a run ({', '.join(held)}) but no {_INPUTS} "
            "to compare this command with; --overwrite to start anew"
        )
    found = _differences(before, now)
    iterations = found.pop("iterations", None)
    if found:
        was = ", ".join(a for a, _ in found.values())
        asks = ", ".join(b for _, b in found.values())
        raise RunMismatch(
            f"--continue: {args.out} was run with {was}, this command asks for {asks}; run "
            "the same command, or --overwrite to start anew"
        )
    if iterations is not None:
        logger.info(
            "--continue: %s was run with %s, this command continues it to %s",
            args.out, iterations[0], iterations[1],
        )  # fmt: skip


def _record_inputs(out, table, config, dropped, mask=None, references=None, focus=None) -> None:
    """``OUT/inputs.json`` (what ``_check_out`` compares) and ``OUT/dropped_particles.txt``."""
    from faml.io.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(table, config, mask, references, focus)
    write_text_atomic(out / _INPUTS, json.dumps(fingerprint, indent=2))
    if dropped:
        lines = ["# particle (1-based, as in the input)\tfile\treason"]
        lines += [f"{p.index + 1}\t{p.path}\t{p.reason}" for p in dropped]
        write_text_atomic(out / "dropped_particles.txt", "\n".join(lines) + "\n")
