"""The package's shape: data flows one way, so no module of pfnode/ imports one that
(directly or not) imports it back, counting imports inside functions too; and each
module imports alone, in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pfnode"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> set[str]:
    """The pfnode modules `module` imports anywhere in its code (not under TYPE_CHECKING)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base.startswith("pfnode"):
                target = base.removeprefix("pfnode").lstrip(".") if node.level == 0 else base
                if target:
                    found.add(target.split(".")[0])
                else:  # from . import a, b
                    found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pfnode."):
                    found.add(alias.name.split(".")[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return {m if m in MODULES else "__init__" for m in found}


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


def test_the_transports_and_the_hub_depend_on_the_node_interface_only():
    for module in ("ws_picows", "ws_websockets", "hub", "scheduler", "dispatch", "link"):
        assert not imports_of(module) & {"node", "front", "pool", "dialout"}, (module, imports_of(module))


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
