"""``faml run``'s output folder: writable, not among the inputs, and the run it holds.

A run records its particles and settings in ``OUT/inputs.json`` (:func:`_fingerprint`); a
later command on the same folder is compared with it (:func:`_check_out`).

faml's modules (:mod:`faml.io.atomic`) and the standard library's ``json``, ``hashlib``,
``shutil`` and ``pathlib`` are imported inside the functions: ``faml --help`` imports this
module and needs none of them.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("faml.cli")


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


_INPUTS = "inputs.json"


def _fingerprint(table, config) -> dict:
    import hashlib
    import json

    digest = hashlib.sha256()
    for p, w in zip(table.paths, table.weight_paths, strict=True):
        digest.update(f"{p}\t{w}\n".encode())
    digest.update(json.dumps(table.tilt_ranges.tolist()).encode())
    form = {"ctf_premultiplied": True} if table.ctf_premultiplied else {}  # old runs: absent
    return {
        "particles": len(table),
        "particles_sha256": digest.hexdigest(),
        "box": table.box,
        "voxel_size": table.voxel_size,
        **form,
        "config": config.to_dict(),
    }


def _check_out(args: argparse.Namespace, table, config) -> None:
    """Refuse an ``--out`` among the inputs, or one that holds another run.

    faml never writes next to its input particles: ``--out`` must not be the folder of a
    particle or weight file. A folder that holds a run (``run.json``, ``iterations/``,
    ``starts/``) of other particles or settings is refused unless ``--continue`` (resume
    it) or ``--overwrite`` (its iterations and ``run.json`` are removed first).
    """
    import json
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
    if not held or args.resume:
        return
    try:
        before = json.loads((out / _INPUTS).read_text())
    except (OSError, ValueError):
        before = None
    if before == json.loads(json.dumps(_fingerprint(table, config))):
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


def _record_inputs(out, table, config, dropped) -> None:
    """``OUT/inputs.json`` (what ``_check_out`` compares) and ``OUT/dropped_particles.txt``."""
    import json

    from faml.io.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / _INPUTS, json.dumps(_fingerprint(table, config), indent=2))
    if dropped:
        lines = ["# particle (1-based, as in the input)\tfile\treason"]
        lines += [f"{p.index + 1}\t{p.path}\t{p.reason}" for p in dropped]
        write_text_atomic(out / "dropped_particles.txt", "\n".join(lines) + "\n")
