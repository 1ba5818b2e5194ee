"""The workflow rows side by side, from the kept figures (nothing is rerun).

Usage::

    python benchmarks/workflows/table.py [--faml /work/bits/wf/results.json]

Reads ``relion_rows.json`` (``relion.py``), ``atomic_rows.json`` (``atomic_reference.py``)
and, when given and present, ``run.py``'s ``results.json`` (faml's global, local and
reference rows), and prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _line(name: str, r: dict) -> str:
    note = ""
    if r.get("n_prior_inside") is not None:
        inside, wild = 100 * r["within15_prior_inside"], 100 * (r["within15_prior_random"] or 0)
        note = (
            f"priors inside 30 deg: {inside:.0f}% of {r['n_prior_inside']}; "
            f"random priors: {wild:.0f}% of {r['n_prior_random']}"
        )
    if r.get("finished") is False:
        note = (note + "; " if note else "") + "stopped at the wall limit"
    if r.get("source"):
        note = (note + "; " if note else "") + f"kept from {r['source']}"
    wall = "" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
    return (f"| {name} | {r.get('seed', '')} | {100 * r['within15']:.0f}% | {r['fsc05']:.1f} | "
            f"{r['corr']:.3f} | {wall} | {r.get('iterations', '')} | {note} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faml", default="/work/bits/wf/results.json")
    args = parser.parse_args()
    lines = ["| row | seed | within 15 deg | FSC 0.5 (A) | masked corr. | wall (s) | iterations "
             "| note |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    faml = Path(args.faml)
    if faml.exists():
        for name, rows in json.loads(faml.read_text()).items():
            for i, r in enumerate(rows):
                lines.append(_line(f"faml {name}", dict(r, seed=r.get("seed", i + 1))))
    for store in ("relion_rows.json", "atomic_rows.json"):
        path = HERE / store
        if path.exists():
            for name, r in json.loads(path.read_text()).items():
                lines.append(_line(name, r))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
