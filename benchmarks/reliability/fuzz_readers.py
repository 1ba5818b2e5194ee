"""Seeded mutation fuzzer of faml's MRC and STAR readers.

Valid MRC particles and STAR files are mutated (MRC header fields nx/ny/nz/mode/nsymbt/
voxel size/map/machine stamp, truncation, random bytes; STAR blocks, columns, values, paths,
random characters) and fed to ``read_header``, ``read_volume``, ``read_particles_star``,
``from_mrc_files`` and ``validate_table``, in this process. Each input ends as

- ``ok``: read (or validated) without an exception;
- ``clear``: a ``ValueError`` / ``FileNotFoundError`` / ``OSError`` whose message names the
  file (faml's own clear error);
- ``crash``: anything else (an unexpected exception type, or a message that does not name
  the file); the first few of each kind are printed with the input that caused them.

    python benchmarks/reliability/fuzz_readers.py --minutes 10 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import struct
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from faml.io.mrc import read_header, read_volume, write_volume
from faml.io.particles import from_mrc_files
from faml.io.star import read_particles_star
from faml.io.validate import validate_table

BOX = 8
CLEAR = (ValueError, FileNotFoundError, OSError)

# MRC header: (offset, struct format) of the fields worth breaking
MRC_FIELDS = {
    "nx": (0, "<i"),
    "ny": (4, "<i"),
    "nz": (8, "<i"),
    "mode": (12, "<i"),
    "mx": (28, "<i"),
    "cella_x": (40, "<f"),
    "mapc": (64, "<i"),
    "ispg": (88, "<i"),
    "nsymbt": (92, "<i"),
    "exttyp": (104, "4s"),
    "nversion": (108, "<i"),
    "map": (208, "4s"),
    "machst": (212, "4s"),
    "nlabl": (220, "<i"),
}
INTS = [0, 1, -1, 2, 3, 4, 6, 8, 9, 12, 16, 101, 1024, 2**31 - 1, -(2**31), 7, 65536]
FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), 10.0]

STAR_TEMPLATE = """
# faml fuzz
data_optics

loop_
_rlnOpticsGroup #1
_rlnImagePixelSize #2
1 {pixel}

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnAngleRot #3
_rlnAngleTilt #4
_rlnAnglePsi #5
_rlnOriginXAngst #6
{rows}
"""


def valid_mrc(rng: np.random.Generator) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.mrc"
        write_volume(p, rng.standard_normal((BOX,) * 3).astype(np.float32), 10.0)
        return p.read_bytes()


def mutate_mrc(data: bytes, r: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    done = []
    for _ in range(r.choice([1, 1, 2, 3])):
        kind = r.choice(["field", "field", "field", "truncate", "bytes", "extend"])
        if kind == "field":
            if len(b) < 1024:
                b += bytes(1024 - len(b))
            name = r.choice(list(MRC_FIELDS))
            off, fmt = MRC_FIELDS[name]
            if fmt == "<i":
                v = r.choice(INTS) if r.random() < 0.8 else r.randint(-(2**31), 2**31 - 1)
            elif fmt == "<f":
                v = r.choice(FLOATS)
            else:
                v = bytes(r.randrange(256) for _ in range(4))
            if name == "cella_x":
                for o in (40, 44, 48) if r.random() < 0.5 else (40,):
                    struct.pack_into(fmt, b, o, v)
            else:
                struct.pack_into(fmt, b, off, v)
            done.append(f"{name}={v!r}")
        elif kind == "truncate" and len(b) > 0:
            cut = r.choice([0, 4, 100, 1023, 1024, 1025, r.randrange(len(b) + 1)])
            del b[cut:]
            done.append(f"truncate@{cut}")
        elif kind == "bytes" and len(b) > 0:
            for _ in range(r.randint(1, 16)):
                i = r.randrange(min(len(b), 1024) if r.random() < 0.7 else len(b))
                b[i] = r.randrange(256)
            done.append("random bytes")
        elif kind == "extend":
            extra = r.choice([1, 4, 80, 1024])
            b += bytes(r.randrange(256) for _ in range(extra))
            done.append(f"+{extra} bytes")
    return bytes(b), ", ".join(done)


def valid_star(n: int, names: list[str], r: random.Random) -> str:
    rows = "\n".join(
        f"{names[i % len(names)]} 1 {r.uniform(-180, 180):.2f} {r.uniform(0, 180):.2f} "
        f"{r.uniform(-180, 180):.2f} {r.uniform(-5, 5):.2f}"
        for i in range(n)
    )
    return STAR_TEMPLATE.format(pixel="10.0", rows=rows)


STAR_TOKENS = [
    "data_",
    "data_particles",
    "data_optics",
    "data_general",
    "loop_",
    "_rlnImageName",
    "_rlnOpticsGroup",
    "_rlnImagePixelSize",
    "_rlnCtfImage",
    "_rlnTomoName",
    "_rlnTomoSubTomosAre2DStacks",
    "_rlnTomoParticlesFile",
    "_rlnTomoSubtomogramRot",
    "_rlnPixelSize",
    "#1",
    "#99",
    "nan",
    "inf",
    "-",
    '""',
    "'",
    '"',
    "1e999",
    "abc",
    "0",
    "-1",
    "2",
    "missing.mrc",
    "/",
    "..",
    "p0.mrc",
    "bad.mrc",
    "\t",
    "\n",
    " ",
    "\x00",
    "é",
]


def mutate_star(text: str, r: random.Random) -> tuple[str, str]:
    lines = text.split("\n")
    done = []
    for _ in range(r.choice([1, 1, 2, 3, 5])):
        kind = r.choice(["token", "delete", "dup", "swap", "char", "value", "truncate", "empty"])
        if not lines:
            lines = [""]
        i = r.randrange(len(lines))
        if kind == "token":
            words = lines[i].split(" ")
            words.insert(r.randrange(len(words) + 1), r.choice(STAR_TOKENS))
            lines[i] = " ".join(words)
        elif kind == "delete":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = r.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "char" and lines[i]:
            k = r.randrange(len(lines[i]))
            lines[i] = (
                lines[i][:k]
                + chr(r.choice([0, 9, 32, 34, 35, 39, 95, 233, r.randrange(1, 128)]))
                + lines[i][k + 1 :]
            )
        elif kind == "value":
            words = lines[i].split(" ")
            words[r.randrange(len(words))] = r.choice(STAR_TOKENS)
            lines[i] = " ".join(words)
        elif kind == "truncate":
            t = "\n".join(lines)
            lines = t[: r.randrange(len(t) + 1)].split("\n")
        elif kind == "empty":
            lines[i] = ""
        done.append(f"{kind}@{i}")
    return "\n".join(lines), ", ".join(done)


def classify(fn, path: Path) -> tuple[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except CLEAR as exc:
        msg = str(exc)
        if path.name in msg or str(path.parent) in msg:  # the file or one it refers to
            return "clear", ""
        if isinstance(exc, FileNotFoundError) and ("/" in msg or exc.filename):
            return "clear", ""  # names the missing file (a path given in the STAR file)
        return "crash", f"{type(exc).__name__} not naming the file: {msg[:200]}"
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return "crash", f"{type(exc).__name__}: {str(exc)[:160]} at {tb.filename}:{tb.lineno}"
    return "ok", ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="examples printed per kind of crash")
    ap.add_argument("--verbose", action="store_true", help="one line per input")
    args = ap.parse_args()
    r = random.Random(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="faml-fuzz-"))
    good = valid_mrc(rng)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    kinds: collections.Counter = collections.Counter()
    shown: dict[str, list[str]] = collections.defaultdict(list)
    stop = time.time() + 60 * args.minutes
    n = 0
    try:
        while time.time() < stop:
            n += 1
            case = work / f"c{n % 50}"
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir()
            t0 = time.time()
            target = r.choice(["header", "volume", "volume", "mrc_files", "star", "star"])
            if target in ("header", "volume", "mrc_files"):
                data, how = mutate_mrc(good, r)
                bad = case / "bad.mrc"
                bad.write_bytes(data)
                if target == "header":
                    outcome = classify(lambda p=bad: read_header(p), bad)
                elif target == "volume":
                    outcome = classify(lambda p=bad: read_volume(p), bad)
                else:
                    (case / "p0.mrc").write_bytes(good)
                    strict = r.random() < 0.5

                    def go(c=case, s=strict):
                        table = from_mrc_files(c, strict=s)
                        validate_table(table)

                    outcome = classify(go, bad)
                    if outcome[0] == "crash" and "not naming" in outcome[1]:
                        outcome = ("clear", "")  # p0.mrc is named instead: still clear
            else:
                (case / "p0.mrc").write_bytes(good)
                data, mhow = mutate_mrc(good, r)
                (case / "bad.mrc").write_bytes(data)
                text, how = mutate_star(valid_star(r.randint(1, 4), ["p0.mrc", "bad.mrc"], r), r)
                star = case / "particles.star"
                star.write_text(text, encoding="utf-8", errors="surrogateescape")
                strict = r.random() < 0.5

                def go(p=star, s=strict):
                    table = read_particles_star(p, strict=s)
                    validate_table(table)

                outcome = classify(go, star)
                if outcome[0] == "crash" and "not naming" in outcome[1]:
                    # a particle file's problem names that file, not the STAR file
                    if "p0.mrc" in outcome[1] or "bad.mrc" in outcome[1]:
                        outcome = ("clear", "")
                how = f"{how}; bad.mrc: {mhow}"
            status, detail = outcome
            if args.verbose:
                print(f"{n} {target} {time.time() - t0:.2f}s {status} [{how}]", flush=True)
            counts[target][status] += 1
            if status == "crash":
                key = detail.split(":")[0] + " " + detail.rsplit(" at ", 1)[-1]
                kinds[key] += 1
                if len(shown[key]) < args.show:
                    shown[key].append(f"{target} [{how}] -> {detail}")
                    keep = work / "crashes" / f"{list(kinds).index(key) + 1:03d}_{len(shown[key])}"
                    shutil.copytree(case, keep)
    finally:
        total = collections.Counter()
        for target, c in sorted(counts.items()):
            total.update(c)
            print(f"{target:10s} {sum(c.values()):7d} inputs: " + ", ".join(
                f"{k} {c[k]}" for k in ("ok", "clear", "crash")))  # fmt: skip
        print(f"{'total':10s} {n:7d} inputs in {args.minutes:g} min (seed {args.seed}): "
              + ", ".join(f"{k} {total[k]}" for k in ("ok", "clear", "crash")))  # fmt: skip
        for key, count in kinds.most_common():
            print(f"crash x{count}: {key}")
            for line in shown[key]:
                print(f"    {line}")
        print(f"inputs that crashed are kept under {work / 'crashes'}")


if __name__ == "__main__":
    main()
