"""The package's shape: data flows one way, so no module of pfnode/ imports one that
(directly or not) imports it back, counting imports inside functions too; and each
module imports alone, in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pfnode"


def _name(path: Path) -> str:
    """A module's name under pfnode: `node`, `elements.base`; a package's own `__init__`:
    `__init__` for pfnode itself, `elements` for pfnode/elements."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


FILES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = sorted(FILES)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _package_of(module: str) -> list[str]:
    """The package a module's relative imports start from, as name parts under pfnode."""
    is_package = FILES[module].name == "__init__.py"
    parts = [] if module == "__init__" else module.split(".")
    return parts if is_package else parts[:-1]


def _resolve(parts: list[str]) -> str:
    """The module (or package) a dotted name under pfnode names; `__init__` for pfnode."""
    return ".".join(parts) or "__init__"


def imports_of(module: str, type_checking: bool = True) -> set[str]:
    """The pfnode modules `module` imports anywhere in its code (with `type_checking`, also
    those under TYPE_CHECKING):
    `from .elements import data` counts the package `elements` (its __init__ runs) and the
    module `elements.data`."""
    tree = ast.parse(FILES[module].read_text())
    found: set[str] = set()

    def add(parts: list[str], names: list[str]) -> None:
        found.add(_resolve(parts))
        for i in range(1, len(parts)):  # importing a.b runs a's __init__ first
            found.add(_resolve(parts[:i]))
        for name in names:  # `from package import module`
            if _resolve(parts + [name]) in FILES:
                found.add(_resolve(parts + [name]))

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:
                base = _package_of(module)
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                add(base + (node.module.split(".") if node.module else []), names)
            elif (node.module or "").split(".")[0] == "pfnode":
                add(node.module.split(".")[1:], names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pfnode."):
                    add(alias.name.split(".")[1:], [])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    unknown = {m for m in found if m not in FILES}
    assert not unknown, f"{module} imports {unknown}, which are not modules of pfnode"
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_there_is_no_import_cycle_in_pfnode():
    graph = {module: imports_of(module) for module in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _outside(module: str, allowed: tuple[str, ...]) -> set[str]:
    """What `module` imports (TYPE_CHECKING imports included) outside the `allowed` packages."""
    return {m for m in imports_of(module) if not _in(m, *allowed)}


def test_the_core_is_pure_and_imports_nothing_above_it():
    """core/: the rules, no asyncio and no I/O; it imports only itself and the error table."""
    for module in MODULES:
        if not _in(module, "core"):
            continue
        assert not _outside(module, ("core", "errors")), (module, _outside(module, ("core", "errors")))
        tree = ast.parse(FILES[module].read_text())
        stdlib = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                  for alias in node.names}
        stdlib |= {node.module.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not stdlib & {"asyncio", "socket", "subprocess", "os", "selectors", "threading"}, (module, stdlib)


def test_the_elements_see_only_the_core_and_their_interface():
    """The standard elements import the core, the error table and their own package (whose
    `host.NodeControl` is the node as they see it); the worker elements also the handler
    registry they register into. Never the node, the pool, the transports or the hub's I/O."""
    for module in MODULES:
        if not _in(module, "elements"):
            continue
        allowed = ("core", "errors", "elements") + (("registry",) if _in(module, "elements.worker") else ())
        assert not _outside(module, allowed), (module, _outside(module, allowed))


def test_the_transports_never_import_the_node_or_what_is_behind_it():
    for module in MODULES:
        if _in(module, "transports"):
            bad = {m for m in imports_of(module) if _in(m, "node", "pool", "app", "elements", "dask")}
            assert not bad, (module, bad)


def test_data_flows_one_way_through_the_layers():
    """transport -> node -> scheduler/pool or hub: nothing below imports what is above it."""
    above = {"core": ("node", "pool", "transports", "app", "dask", "elements", "ops"),
             "ops": ("node", "pool", "transports", "app", "dask", "elements"),
             "pool": ("node", "app", "transports", "elements.hosted", "elements.catalog"),
             "dask": ("node", "app", "transports", "elements"),
             "node": ("app",)}
    for module in MODULES:
        for layer, banned in above.items():
            if _in(module, layer):
                bad = {m for m in imports_of(module) if _in(m, *banned)}
                assert not bad, (module, bad)


def test_there_is_one_transport_registry():
    """A transport is named in one place: the registry in pfnode/transports/__init__.py;
    the front, the dial-out and the settings' check all read it."""
    for module in ("app.front", "app.dialout", "settings"):
        imported = imports_of(module)
        assert "transports" in imported, module
        assert not imported & {"transports.picows", "transports.websockets"}, (module, imported)


def test_the_worker_side_of_the_elements_stays_out_of_the_front():
    """A worker that runs a standard data element loads the element's module and its
    errors, not the node elements (which import the front's protocol and flight code)."""
    for module in ("elements", "elements.errors", "elements.worker.data", "elements.predicates"):
        assert imports_of(module) <= {"elements", "elements.errors", "elements.worker"}, (module, imports_of(module))
    assert "elements.catalog" in imports_of("node.hosted")


def test_the_package_keeps_its_shape():
    """No class over ~300 lines and no function over ~60 in pfnode/; pfnode/ itself holds
    only its public modules (the API a user imports, the settings, and native: which modules run
    compiled) besides subpackages."""
    too_long = []
    for module, path in FILES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and lines > 310:
                too_long.append(f"class {module}.{node.name}: {lines} lines")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > 62:
                too_long.append(f"function {module}.{node.name}: {lines} lines")
    assert not too_long, too_long
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "client", "errors", "native", "ndarray", "registry", "settings"], top


def test_each_module_imports_alone():
    """`python -c "import pfnode.X"` in a fresh interpreter, for every module (in parallel)."""
    procs = {module: subprocess.Popen([sys.executable, "-c", f"import pfnode.{module}"], cwd=PACKAGE.parent,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for module in MODULES if module != "__main__"}
    failed = {}
    for module, proc in procs.items():
        _, stderr = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failed[module] = stderr.strip().splitlines()[-1:]
    assert not failed, failed
