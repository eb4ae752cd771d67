"""The ``poster`` command line: ``poster <command> --help`` for each command."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from . import __version__
from .errors import PosterError


def build_parser() -> argparse.ArgumentParser:
    from .commands import models, test

    parser = argparse.ArgumentParser(prog="poster", description="POSTER / POSTER V2 facial expression recognition")
    parser.add_argument("--version", action="version", version=f"poster-fer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (test, models):
        module.add_parser(sub)
    for name in ("train", "predict", "export", "benchmark", "serve"):
        _maybe_add(sub, name)
    return parser


def _maybe_add(sub, name: str) -> None:
    """Commands whose module exists in this version are added; others are simply absent."""
    import importlib

    try:
        module = importlib.import_module(f".commands.{name}", __package__)
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(f"commands.{name}"):
            return
        raise
    module.add_parser(sub)


def _user_message(error: BaseException) -> str:
    """The message of a PosterError, also when it was re-raised from a DataLoader worker."""
    text = str(error)
    found = re.findall(r"poster\.errors\.\w+: (.*)", text)
    return found[-1] if found else text.strip().splitlines()[-1] if text.strip() else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except PosterError as e:
        if args.verbose:
            raise
        print(f"error: {_user_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
