"""Text from files (class names in a checkpoint, file names) made safe to print and to put in CSV.

A class name with an ANSI escape would drive the user's terminal; a file name with a newline would
forge a line of the output (``Summary: ...``); a CSV cell starting with ``=`` is a formula to a
spreadsheet.  ``printable`` escapes control characters (``\\x1b``, ``\\n``, ...) and ``csv_cell``
neutralises formula prefixes with a leading apostrophe, as OWASP recommends.
"""

from __future__ import annotations

import unicodedata

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def printable(text: object) -> str:
    """``text`` with every control or format character (C0, DEL, C1, bidi overrides, line and
    paragraph separators) written as a Python-style escape: one line, inert in a terminal."""
    out = []
    for ch in str(text):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Zl", "Zp") and ch != " ":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def csv_cell(text: object) -> str:
    """A text cell a spreadsheet will not run: formula prefixes get a leading apostrophe."""
    value = str(text)
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value
