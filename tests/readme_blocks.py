"""Running a README ```python block as a reader pastes it: alone, and checking what it prints.

A ``print(...)`` line whose comment shows a value (``print(x)   # ['happy']``) claims that the line
prints exactly that; ``...`` in the comment stands for a part left out.  ``run_block`` executes a
block in a fresh namespace (nothing from an earlier block: its own imports must be there) and
returns what each of its lines printed; ``assert_prints_as_commented`` holds the comments to it.
"""

from __future__ import annotations

import builtins
import re
import sys
from collections import defaultdict

_PRINT_WITH_COMMENT = re.compile(r"^\s*print\(.*?\)\s+#\s*(?P<claim>\S.*?)\s*$")


def claimed_prints(code: str) -> dict[int, str]:
    """Line number (1-based) -> what the comment of that ``print`` line says it prints."""
    claims = {}
    for number, line in enumerate(code.splitlines(), start=1):
        found = _PRINT_WITH_COMMENT.match(line)
        if found:
            claims[number] = found.group("claim")
    return claims


def claim_matches(claim: str, printed: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in claim.split("..."))
    return re.fullmatch(pattern, printed.strip()) is not None


def run_block(code: str, name: str) -> dict[int, list[str]]:
    """Execute ``code`` in a fresh namespace; line number -> the lines its ``print`` calls wrote."""
    printed: dict[int, list[str]] = defaultdict(list)

    def recording_print(*values, sep=" ", end="\n", file=None, flush=False):
        caller = sys._getframe(1)
        if file is None and caller.f_code.co_filename == name:
            printed[caller.f_lineno].append(sep.join(str(v) for v in values))
        builtins.print(*values, sep=sep, end=end, file=file, flush=flush)

    exec(compile(code, name, "exec"), {"__name__": "__readme__", "print": recording_print})
    return dict(printed)


def assert_prints_as_commented(code: str, printed: dict[int, list[str]], name: str) -> int:
    """Every commented ``print`` line printed, and printed what its comment says; how many were checked."""
    lines = code.splitlines()
    for number, claim in claimed_prints(code).items():
        outputs = printed.get(number)
        assert outputs, f"{name}: line {number} printed nothing: {lines[number - 1].strip()}"
        for output in outputs:
            assert claim_matches(claim, output), (
                f"{name}, line {number}: the comment says {claim!r}, the line printed {output!r}")
    return len(claimed_prints(code))
