"""The package's layers hold: no upward import, no import cycle, no foreign private module.

The layers are those of the section "Layers, lowest first" of ``faml``'s package docstring
(the one list; this file only reads it). :func:`check_layers` walks every module under a
source root with :mod:`ast` and turns every import into an edge module -> module: module
level and inside functions alike, relative imports resolved, ``from faml.io import relion5``
to the submodule ``faml.io.relion5`` (a name that is no submodule: the package itself).
It reports

(a) an import of a module in a higher layer (same layer: allowed);
(b) an import cycle between modules (a strongly connected component of two or more; a
    package ``__init__`` re-exporting its submodules is none, as long as they do not import
    the ``__init__`` back);
(c) an import of another package's private module (a ``_`` name, e.g. ``faml.align._kernels``
    from ``faml.ml``; dunder modules such as ``faml.__about__`` are public);
(d) a module in no layer, and a layer name that is no module.

The last tests plant each kind in a small fake package and check that it is reported.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
SECTION = "Layers, lowest first"
_ENTRY = re.compile(r"^\s*(\d+)\.\s+([\w.]+(?:\s*,\s*[\w.]+)*)\s*:\s*\S")


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``kind`` is ``upward``, ``cycle``, ``private`` or ``unlisted``."""

    kind: str
    message: str


def parse_layers(docstring: str) -> list[tuple[str, ...]]:
    """The layers of a package docstring's section "Layers, lowest first", lowest first.

    One line per layer, ``N. name, name: a few words``, numbered from 0 without gaps; the
    section's first numbered line starts the list and the next other non-blank line ends it.
    """
    lines = docstring.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == SECTION)
    except StopIteration:
        raise ValueError(f"the package docstring has no section {SECTION!r}") from None
    layers: list[tuple[str, ...]] = []
    for line in lines[start + 1 :]:
        match = _ENTRY.match(line)
        if match is None:
            if layers and line.strip():
                break
            continue
        number, names = int(match.group(1)), match.group(2)
        if number != len(layers):
            raise ValueError(f"layer {number} follows layer {len(layers) - 1}: {line.strip()!r}")
        layers.append(tuple(n.strip() for n in names.split(",")))
    if not layers:
        raise ValueError(f"the section {SECTION!r} lists no layers")
    return layers


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module of ``package`` under ``root``: name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_init = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return out


def _imports(tree: ast.AST):
    """Every import statement of a module, at any depth (functions, classes, ``if``, ``try``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):  # statements (a lambda's body is an expression)
                stack.extend(children)


def _edges(modules: dict[str, tuple[Path, bool]], package: str) -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for every import of a module of ``package``."""

    def known(name: str) -> str | None:  # the longest existing module that ``name`` is in
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in modules:
                return ".".join(parts[:k])
        return None

    edges = []
    for name, (path, is_init) in modules.items():
        own_package = name if is_init else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = own_package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = known(target)
                    if resolved is not None and resolved != name:
                        edges.append((name, resolved, node.lineno))
    return edges


def _layer_of(module: str, layers: list[tuple[str, ...]], package: str) -> int | None:
    """The layer of ``module``: its longest listed prefix (the root package only as itself)."""
    best, best_len = None, -1
    for number, names in enumerate(layers):
        for listed in names:
            inside = module == listed or (listed != package and module.startswith(listed + "."))
            if inside and len(listed) > best_len:
                best, best_len = number, len(listed)
    return best


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _loop(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One cycle through the component's first module (breadth first, inside the component)."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in members and w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    return component  # pragma: no cover - a component always has a cycle


def check_layers(root: Path, package: str = "faml") -> list[Violation]:
    """Every broken layer rule among the modules of ``package`` under the source ``root``."""
    layers = parse_layers(
        ast.get_docstring(ast.parse((root / package / "__init__.py").read_text())) or ""
    )
    modules = _modules(root, package)
    rel = {name: path.relative_to(root).as_posix() for name, (path, _) in modules.items()}
    out: list[Violation] = []

    def layer_name(number: int) -> str:
        return f"layer {number}: {', '.join(layers[number])}"

    listed = [n for names in layers for n in names]
    for name in sorted({n for n in listed if listed.count(n) > 1}):
        out.append(Violation("unlisted", f"{name} is in more than one layer"))
    for name in listed:
        if name not in modules:
            out.append(Violation("unlisted", f"layer list names {name}, which is no module"))
    layer = {name: _layer_of(name, layers, package) for name in modules}
    for name in sorted(modules):
        if layer[name] is None:
            out.append(
                Violation(
                    "unlisted", f"{rel[name]}: {name} is in no layer of {package}'s docstring"
                )
            )

    graph: dict[str, dict[str, int]] = {}
    for src, dst, line in _edges(modules, package):
        graph.setdefault(src, {})
        graph[src][dst] = min(line, graph[src].get(dst, line))
    for src in sorted(graph):
        for dst, line in sorted(graph[src].items()):
            where = f"{rel[src]}:{line}: {src}"
            ls, ld = layer[src], layer[dst]
            if ls is not None and ld is not None and ld > ls:
                out.append(
                    Violation(
                        "upward",
                        f"{where} [{layer_name(ls)}] imports {dst} [{layer_name(ld)}], "
                        "a higher layer",
                    )
                )
            parts = dst.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
                    owner = ".".join(parts[:i])
                    if src != owner and not src.startswith(owner + "."):
                        out.append(
                            Violation(
                                "private",
                                f"{where} imports {dst}, a private module of {owner}",
                            )
                        )
                    break
    for component in _cycles(graph):
        loop = _loop(graph, component)
        steps = "; ".join(
            f"{rel[a]}:{graph[a][b]} {a} imports {b}"
            for a, b in zip(loop[:-1], loop[1:], strict=True)
        )
        among = ", ".join(component)
        out.append(Violation("cycle", f"import cycle among {among}: {' -> '.join(loop)} ({steps})"))
    return out


# -- faml itself ----------------------------------------------------------------------------


def test_faml_keeps_its_layers():
    violations = check_layers(SRC)
    if violations:
        pytest.fail("\n".join(f"{v.kind}: {v.message}" for v in violations), pytrace=False)


def test_the_layer_list_covers_every_package():
    layers = parse_layers(__import__("faml").__doc__)
    assert layers[0][:1] == ("faml",) and layers[-1][0] == "faml.cli"
    packages = {f"faml.{p.name}" for p in (SRC / "faml").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= {n for names in layers for n in names}


# -- the checker finds what is planted ------------------------------------------------------

_TOY_DOC = '''"""A toy package.

Layers, lowest first
--------------------
::

    0. toy: the root
    1. toy.low: the bottom
    2. toy.mid: the middle
    3. toy.high, toy.cli: the top
"""
'''

_TOY = {
    "toy/__init__.py": _TOY_DOC,
    "toy/low/__init__.py": "",
    "toy/low/_impl.py": "K = 1\n",
    "toy/low/base.py": "from toy.low._impl import K\nfrom . import _impl\n",
    "toy/mid/__init__.py": '"""Re-exports its submodules."""\nfrom toy.mid.y import Y\n',
    "toy/mid/x.py": "import toy.low.base\n\n\ndef f():\n    from toy.mid import y\n",
    "toy/mid/y.py": "from ..low import base\n\nY = 2\n",
    "toy/high/__init__.py": "",
    "toy/high/h.py": "from toy.mid import Y\nfrom toy.low.base import K\n",
    "toy/cli.py": "import toy.high.h\nfrom toy import high\n",
}


def _toy(root: Path, **planted: str) -> Path:
    for name, text in {**_TOY, **planted}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _kinds(violations: list[Violation]) -> list[str]:
    return sorted(v.kind for v in violations)


def test_a_clean_toy_package_passes(tmp_path):
    assert check_layers(_toy(tmp_path), "toy") == []


def test_an_upward_import_inside_a_function_is_reported(tmp_path):
    root = _toy(
        tmp_path, **{"toy/low/up.py": "import os\n\n\ndef f():\n    from toy.high import h\n"}
    )
    (found,) = check_layers(root, "toy")
    assert found.kind == "upward"
    assert "toy/low/up.py:5: toy.low.up" in found.message
    assert "[layer 1: toy.low] imports toy.high.h [layer 3: toy.high, toy.cli]" in found.message


def test_a_relative_upward_import_is_resolved_and_reported(tmp_path):
    root = _toy(tmp_path, **{"toy/low/rel.py": "from ..mid import x\n"})
    (found,) = check_layers(root, "toy")
    assert found.kind == "upward" and "imports toy.mid.x" in found.message


def test_an_import_cycle_is_reported(tmp_path):
    root = _toy(tmp_path, **{"toy/mid/y.py": "def g():\n    from toy.mid import x\n\n\nY = 2\n"})
    (found,) = check_layers(root, "toy")
    assert found.kind == "cycle"
    assert "toy.mid.x -> toy.mid.y -> toy.mid.x" in found.message
    assert "toy/mid/y.py:2 toy.mid.y imports toy.mid.x" in found.message


def test_a_submodule_importing_its_package_init_back_is_a_cycle(tmp_path):
    root = _toy(tmp_path, **{"toy/mid/y.py": "from toy.mid import x\nfrom toy.mid import Y\n"})
    assert _kinds(check_layers(root, "toy")) == ["cycle"]


def test_a_private_module_of_another_package_is_reported(tmp_path):
    root = _toy(
        tmp_path,
        **{
            "toy/high/p.py": "from toy.low._impl import K\n",
            "toy/mid/q.py": "from toy.low import _impl\n",
        },
    )
    found = check_layers(root, "toy")
    assert _kinds(found) == ["private", "private"]
    assert "toy/high/p.py:1: toy.high.p imports toy.low._impl, a private module of toy.low" in {
        v.message for v in found
    }


def test_modules_outside_the_layer_list_are_reported(tmp_path):
    doc = _TOY_DOC.replace(
        "    3. toy.high, toy.cli: the top\n", "    3. toy.high, toy.gone: the top\n"
    )
    root = _toy(tmp_path, **{"toy/__init__.py": doc})
    messages = [v.message for v in check_layers(root, "toy")]
    assert messages == [
        "layer list names toy.gone, which is no module",
        "toy/cli.py: toy.cli is in no layer of toy's docstring",
    ]


def test_a_layer_list_out_of_order_is_refused():
    with pytest.raises(ValueError, match="layer 2 follows layer 0"):
        parse_layers(f"{SECTION}\n---\n    0. a: x\n    2. b: y\n")
