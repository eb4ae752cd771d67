"""The package's import weight: ``import poster`` and ``import poster.models`` stay light (no
OpenCV, no face stack); the public names load what they need on first use."""

import subprocess
import sys

import pytest

_HEAVY = ("cv2", "poster.face", "poster.inference.recognizer")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import poster", "import poster.models", "import poster.meta",
                                       "import poster.inference.runtime"])
def test_light_imports_load_no_opencv_nor_face_stack(statement):
    loaded = _loaded_after(statement)
    assert not {m for m in loaded if m.split(".")[0] == "cv2" or m.startswith(_HEAVY[1:])}


def test_public_names_load_on_first_use():
    loaded = _loaded_after("import poster; poster.Recognizer; poster.create_model")
    assert "cv2" in loaded and "poster.inference.recognizer" in loaded
    import poster

    assert set(poster.__all__) <= set(dir(poster))
    with pytest.raises(AttributeError):
        poster.no_such_name  # noqa: B018


def _import_graph() -> dict[str, set[str]]:
    """Module -> the poster modules it imports, at module level or inside functions (from the source)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "poster"

    def name_of(path: Path) -> str:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for candidate in (target, *(f"{target}.{a.name}" for a in node.names)):
                    if candidate in modules and candidate != module:
                        graph[module].add(candidate)
            elif isinstance(node, ast.Import):
                graph[module] |= {a.name for a in node.names if a.name in modules and a.name != module}
    return graph


def test_no_import_cycles_even_counting_function_local_imports():
    graph = _import_graph()
    assert len(graph) > 50 and graph["poster.cli"], "the import graph was not read"
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        if module in visiting:
            cycles.append(trail[trail.index(module):] + [module])
            return
        if module in done:
            return
        visiting.add(module)
        for target in sorted(graph[module]):
            if target != "poster":  # the lazy package root imports nothing at load time
                visit(target, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, cycles[:3]


def _design_table() -> dict[str, set[str] | None]:
    """docs/design.md's "Who may import whom": layer -> the layers it may import (None: everything).

    A row names its layers in backticks (parenthesised notes are ignored); "nothing of poster" is the
    empty set, "everything" means any module."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("layer", "---"):
            continue
        layers, allowed = (re.findall(r"`([\w.*]+)`", re.sub(r"\([^)]*\)", "", c)) for c in cells)
        for layer in layers:  # the layers of one row are one layer: they may import each other
            table[layer] = None if "everything" in cells[1] else {a.removesuffix(".*") for a in allowed} | set(layers)
    return table


def _layer_of(module: str, layers) -> str | None:
    """The most specific layer ``poster.<layer>`` that ``module`` is or lies inside."""
    inside = [layer for layer in layers if module == f"poster.{layer}" or module.startswith(f"poster.{layer}.")]
    return max(inside, key=len, default=None)


def test_the_import_graph_keeps_to_the_table_in_design_md():
    table = _design_table()
    assert {"errors", "models", "inference", "serve", "commands"} <= set(table), table
    graph = _import_graph()
    unplaced = sorted(m for m in graph if m != "poster" and _layer_of(m, table) is None)
    assert not unplaced, f"modules docs/design.md's table does not place: {unplaced}"
    broken = []
    for module, targets in sorted(graph.items()):
        layer = _layer_of(module, table)
        if layer is None or table[layer] is None:
            continue
        for target in sorted(targets - {"poster"}):  # the lazy package root imports nothing at load time
            if module.startswith(f"{target}."):
                continue  # `from . import x` names the module's own package
            target_layer = _layer_of(target, table)
            allowed = table[layer] | {layer, "errors", "lazy"}  # the exception types and first-use names: everyone's
            if not any(target == f"poster.{a}" or target.startswith(f"poster.{a}.") or target_layer == a
                       for a in allowed):
                broken.append(f"{module} -> {target}")
    assert not broken, "imports that docs/design.md's table does not allow:\n" + "\n".join(broken)
