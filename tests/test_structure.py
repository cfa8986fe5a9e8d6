"""The package's structure: every import arrow points down, so a module can be read, tested and replaced without
the ones above it. An import cycle (plan <-> kinds <-> estimate <-> tasks <-> ... once tied 19 modules together)
fails here, naming the modules and the arrows that close it."""

from __future__ import annotations

import subprocess
import sys

import grimp


def import_cycles(package: str) -> list[list[str]]:
    """The groups of modules that import each other, directly or not (Tarjan's strongly connected components;
    imports inside functions and under TYPE_CHECKING count: they are arrows too)."""
    graph = grimp.build_graph(package, include_external_packages=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return [[f"{a} -> {b}" for a in group for b in sorted(graph.find_modules_directly_imported_by(a)) if b in group]
            for group in groups]


def test_no_import_cycle_inside_the_package() -> None:
    cycles = import_cycles("slimreg")
    assert not cycles, "import cycles (each arrow that closes one):\n" + "\n".join("; ".join(c) for c in cycles)


def test_the_check_finds_a_cycle(tmp_path, monkeypatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("cyclic") == [["cyclic.a -> cyclic.b", "cyclic.b -> cyclic.a"]]


def test_the_command_line_and_the_light_engine_load_without_simpleitk() -> None:
    """SimpleITK's import alone holds about 90 MB and takes 0.3 s, and only a torn section's pieces use it
    (slimreg.register.refine): the commands and the light engine import it where they need it, not on start."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, slimreg.cli, slimreg.register.batch, slimreg.register.feature, "
         "slimreg.register.pieces; print('SimpleITK' in sys.modules)"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
