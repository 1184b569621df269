"""The package's shape: one-way imports in layers, no import cycle, no module over 500 lines.

Every module under ``vtrain_opt/`` is parsed (not imported) and each of its imports of the
package is read, wherever it stands: at the top, inside a function (a lazy import), under
``if TYPE_CHECKING``. ``from vtrain_opt.a import b`` is an import of the module
``vtrain_opt.a.b`` where that is a module, else of ``vtrain_opt.a``; ``import vtrain_opt.a``
is an import of ``vtrain_opt.a``. The parent packages Python runs on the way (``vtrain_opt``,
``vtrain_opt.a``) are not counted: every submodule runs them, it is not a dependency.
Imports the package builds at run time (``cli.py`` finds the commands with
``importlib.import_module``) are not seen, and need not be: they point down.

The layers, from the bottom up. A module may import modules of its own layer and of
layers of a lower rank; never a higher rank, and never a sibling layer of the same rank.

====  ==========  ==========================================================================
rank  layer       modules
====  ==========  ==========================================================================
0     base        ``units`` (SI units, human parsers), ``resources`` (data folders), ``io``
                  (atomic files, JSON values), ``plotting`` and ``report`` (matplotlib
                  helpers, the search's plots): no import of the rest of the package
1     spec        ``spec/``: models, GPUs, clusters, plans, setups
2     profiles    ``profiles`` (the Profile and its parameters), ``profile_tables`` (measured
                  op tables: parsing, validation, interpolation); a profile is data the
                  simulator reads, and never imports it
3     sim         ``sim/``: the op model, the vectorized core, memory, the reference replay
4     api         ``vtrain_opt`` itself (``__init__``): the public API re-exports the specs,
                  the profiles and the simulator
5     search      ``search/``: spaces, exhaustive and Optuna strategies, Ray, results
5     fidelity    ``measurements``, ``predictor``, ``consistency``, ``validation``,
                  ``calibrate``, ``tablefit``, ``nccl``, ``published``: measured runs
                  against the simulator
5     profiler    ``profiler/``: measures op tables and training steps with torch
5     console     ``console``: rich tables and human figures for the terminal
6     studies     ``studies/``: Chinchilla, sweeps (on the search)
7     commands    ``commands/``: parse the arguments, call the library, print
8     cli         ``cli``, ``__main__``: the command line
====  ==========  ==========================================================================

A module that no row names fails the test: give it a layer here (a new module of a
subpackage takes its subpackage's layer).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vtrain_opt"
MAX_LINES = 500

# (layer, rank, module patterns): the first row whose pattern matches names the layer
LAYERS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("base", 0, ("units", "resources", "io", "plotting", "report")),
    ("spec", 1, ("spec", "spec.*")),
    ("profiles", 2, ("profiles", "profile_tables")),
    ("sim", 3, ("sim", "sim.*")),
    ("api", 4, ("",)),
    ("search", 5, ("search", "search.*")),
    (
        "fidelity",
        5,
        (
            "measurements",
            "predictor",
            "consistency",
            "validation",
            "calibrate",
            "tablefit",
            "nccl",
            "published",
        ),
    ),
    ("profiler", 5, ("profiler", "profiler.*")),
    ("console", 5, ("console",)),
    ("studies", 6, ("studies", "studies.*")),
    ("commands", 7, ("commands", "commands.*")),
    ("cli", 8, ("cli", "__main__")),
)

# Imports that break the rules on purpose: (importer, imported) -> why.
ALLOWED: dict[tuple[str, str], str] = {
    ("sim.measured", "sim.convention"): (
        "a measured memory-bound table is re-keyed by the bytes per element the simulator "
        "counts for its op, which sim_bytes_per_element reads by running the simulator's own "
        "cost code (once per dtype, with an analytical profile and a recording op model) so "
        "the convention is never copied by hand; the op model reads the tables, so this edge "
        "closes a circle inside sim. A lazy import, taken once per dtype"
    ),
    ("profiler.steps", "cli"): (
        "profiler/steps.py is also a stand-alone script (python -m vtrain_opt.profiler.steps, "
        "run on the GPU machine by benchmarks/gpu_session.sh); its main() borrows the CLI's "
        "Parser so its errors read like the CLI's (one line, status 2). A lazy import, inside "
        "main() only"
    ),
}


def _modules() -> dict[str, Path]:
    """Module names relative to the package ('' is the package itself) -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _relative(name: str) -> str | None:
    """'vtrain_opt.sim.step' -> 'sim.step'; 'vtrain_opt' -> ''; another package -> None."""
    if name == "vtrain_opt":
        return ""
    if name.startswith("vtrain_opt."):
        return name[len("vtrain_opt.") :]
    return None


def _resolve(name: str) -> str:
    """The deepest module of the package that ``name`` (relative) names or lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> dict[str, int]:
    """The package's modules that ``module`` imports, anywhere in it -> first line."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [r for a in node.names if (r := _relative(a.name)) is not None]
            targets = [_resolve(t) for t in targets]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if module else []
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                source: str | None = ".".join(base + ([node.module] if node.module else []))
            else:
                source = _relative(node.module or "")
            if source is None:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}" if source else alias.name
                targets.append(sub if sub in MODULES else _resolve(source))
        for t in targets:
            if t != module:
                out.setdefault(t, node.lineno)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(module: str) -> tuple[str, int] | None:
    for layer, rank, patterns in LAYERS:
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return layer, rank
    return None


def _shown(module: str) -> str:
    return f"vtrain_opt.{module}" if module else "vtrain_opt"


def test_every_module_has_a_layer():
    missing = [_shown(m) for m in MODULES if layer_of(m) is None]
    assert not missing, (
        f"module(s) {', '.join(missing)} belong to no layer: add them to LAYERS in "
        "tests/test_structure.py (and its docstring's table)"
    )


def test_imports_follow_the_layers():
    wrong = []
    for module, deps in GRAPH.items():
        mine = layer_of(module)
        if mine is None:
            continue
        for dep, line in deps.items():
            theirs = layer_of(dep)
            if theirs is None or (module, dep) in ALLOWED:
                continue
            if theirs[1] > mine[1] or (theirs[1] == mine[1] and theirs[0] != mine[0]):
                wrong.append(
                    f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {_shown(module)} "
                    f"({mine[0]}, rank {mine[1]}) imports {_shown(dep)} "
                    f"({theirs[0]}, rank {theirs[1]})"
                )
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # the shortest way back to the start, inside the component (breadth first)
        came_from: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in came_from:
                        came_from[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        assert found is not None
        path = [found]
        while path[-1] != start:
            path.append(came_from[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def test_no_import_cycle():
    graph = {m: {d for d in deps if (m, d) not in ALLOWED} for m, deps in GRAPH.items()}
    found = [" -> ".join(_shown(m) for m in cycle) for cycle in _cycles(graph)]
    # (one cycle per circle of modules: break it, and run the test again for the next)
    assert not found, "import cycle(s):\n" + "\n".join(found)


def test_the_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]


def test_allowed_exceptions_are_still_needed():
    stale = [f"{_shown(a)} -> {_shown(b)}" for a, b in ALLOWED if b not in GRAPH.get(a, {})]
    assert not stale, "ALLOWED lists imports that no longer exist: " + ", ".join(stale)


def test_lazy_imports_are_seen():
    # sim/ops.py imports the measured tables inside a method, sim/measured.py the byte
    # convention inside a function: both are in the graph
    assert "sim.measured" in GRAPH["sim.ops"]
    assert "sim.convention" in GRAPH["sim.measured"]
    assert "profile_tables" in GRAPH["profiles"]  # and a top-level one


# The core (specs, profiles, simulator) knows nothing of files, Optuna, Ray or the CLI: it
# reads its data (profiles, catalogs), it never writes; only io and the commands write (and
# the search and studies, through io, their result folders and stores).
CORE = ("spec", "profiles", "sim")
CORE_NEVER_IMPORTS = ("vtrain_opt.io", "optuna", "ray", "argparse")
WRITERS = {"open", "write_text", "write_bytes", "savefig", "to_csv", "to_parquet", "mkdir"}


def test_the_core_writes_no_files():
    wrong = []
    for module, path in MODULES.items():
        layer = layer_of(module)
        if layer is None or layer[0] not in CORE:
            continue
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                if any(name == n or name.startswith(n + ".") for n in CORE_NEVER_IMPORTS):
                    wrong.append(f"{where}:{node.lineno}: imports {name}")
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if called in WRITERS:
                    wrong.append(f"{where}:{node.lineno}: calls {called}()")
    assert not wrong, "the core touches files, Optuna, Ray or the CLI:\n" + "\n".join(wrong)


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
