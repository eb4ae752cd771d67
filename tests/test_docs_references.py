"""What the README and docs/ name exists: every repository path, ``tests/...::test`` and
``poster.module.name`` they cite in backticks, so a move or a rename cannot leave a stale reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.])((?:poster|tests|docs|scripts|examples)/[\w./*-]*)(?:::(\w+))?")
DOTTED = re.compile(r"(?<![\w/.])(poster(?:\.\w+)+)")


def _cited() -> list[tuple[str, str]]:
    """(document name, backticked text) for every inline code span of the documents."""
    found = []
    for doc in DOCUMENTS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)  # code blocks run elsewhere
        found += [(doc.name, span) for span in re.findall(r"`([^`\n]+)`", text)]
    return found


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(source: str, name: str) -> bool:
    """Defined, assigned, listed in a mapping, or re-exported by an import in ``source``."""
    return bool(re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^\s*{name}\s*[:=]|[\"']{name}[\"']\s*:"
                          rf"|^from\s+\S+\s+import\s+(?:\([^)]*|[^\n]*)\b{name}\b", source, flags=re.M))


def _lazy_export(parts: list[str]) -> list[str]:
    """``poster.Recognizer...`` as the module that defines it (the package root exports on first use)."""
    source = (ROOT / "poster" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(rf"[\"']{parts[1]}[\"']\s*:\s*[\"']\.([\w.]+)[\"']", source) if len(parts) > 1 else None
    return ["poster", *found.group(1).split("."), *parts[1:]] if found else parts


def _problem_with_dotted(name: str) -> str | None:
    parts = _lazy_export(name.split("."))
    for cut in range(len(parts), 0, -1):
        module = _module_file(parts[:cut])
        if module is None:
            continue
        source = module.read_text(encoding="utf-8")
        rest = parts[cut:]
        if rest and not _defines(source, rest[0]):
            return f"{'.'.join(parts[:cut])} defines no {rest[0]}"
        if len(rest) > 1 and not _defines(source, rest[1]):  # a method of a class defined there
            return f"{'.'.join(parts[:cut + 1])} has no {rest[1]}"
        return None
    return "no such module"


def _problem_with_path(path: str, test: str | None) -> str | None:
    path = path.split("#")[0].rstrip(".")
    if "*" in path:
        return None if list(ROOT.glob(path)) else "matches no file"
    target = ROOT / path
    if not target.exists():
        return "no such file"
    if test and not re.search(rf"^def {test}\b", target.read_text(encoding="utf-8"), flags=re.M):
        return f"no test {test} in it"
    return None


def test_documents_are_read():
    assert len(DOCUMENTS) >= 5 and len(_cited()) > 100


@pytest.mark.parametrize("doc", [d.name for d in DOCUMENTS])
def test_cited_paths_modules_and_tests_exist(doc):
    stale = []
    for where, span in _cited():
        if where != doc:
            continue
        for path, test in PATH.findall(span):
            problem = _problem_with_path(path, test or None)
            if problem:
                stale.append(f"`{span}`: {path}{'::' + test if test else ''}: {problem}")
        for name in DOTTED.findall(span):
            problem = _problem_with_dotted(name)
            if problem:
                stale.append(f"`{span}`: {name}: {problem}")
    assert not stale, f"{doc} cites what does not exist:\n" + "\n".join(stale)
