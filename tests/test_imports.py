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
