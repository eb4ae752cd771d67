"""The ``poster`` command line: ``poster <command> --help`` for each command."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys

from . import __version__
from .errors import PosterError, flag_wording
from .textsafe import printable


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one ``error:`` line (with a "did you mean" for a mistyped option or
    command) and exit status 2, instead of argparse's usage block."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message}{self._suggestion(message)}", file=sys.stderr)
        self.exit(2)

    def _suggestion(self, message: str) -> str:
        bad = re.search(r"unrecognized arguments: (\S+)", message) or re.search(r"invalid choice: '([^']+)'", message)
        if not bad:
            return ""
        word = bad.group(1).split("=", 1)[0]
        known = [o for action in self._actions for o in action.option_strings]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                known += list(action.choices)
        close = difflib.get_close_matches(word, known, n=1, cutoff=0.7)
        if not close and word.startswith("-"):  # an unknown option of a sub-command lands here
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for sub in action.choices.values():
                        close = close or difflib.get_close_matches(
                            word, [o for a in sub._actions for o in a.option_strings], n=1, cutoff=0.7)
        return f" (did you mean {close[0]}?)" if close else ""


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging and full tracebacks")


def build_parser() -> argparse.ArgumentParser:
    from .commands import benchmark, export, models, predict, serve, test, train, weights

    parser = _Parser(prog="poster", description="POSTER / POSTER V2 facial expression recognition")
    parser.add_argument("--version", action="version", version=f"poster-fer {__version__}")
    _add_verbose(parser, False)
    parser.add_argument("--offline", action="store_true", help="no network: never fetch weights (= POSTER_OFFLINE=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (test, models, train, predict, export, benchmark, weights, serve):
        module.add_parser(sub)
    for command in {id(p): p for p in sub.choices.values()}.values():
        if "--verbose" not in command._option_string_actions:  # -v after the command works too
            _add_verbose(command, argparse.SUPPRESS)
    return parser


def _user_message(error: BaseException) -> str:
    """The message of a PosterError, also when it was re-raised from a DataLoader worker."""
    text = str(error)
    found = re.findall(r"poster\.errors\.\w+: (.*)", text)
    return found[-1] if found else text.strip().splitlines()[-1] if text.strip() else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    if args.offline:
        os.environ["POSTER_OFFLINE"] = "1"
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        with flag_wording():  # library messages name --flags, not Python parameters
            return int(args.run(args) or 0)
    except PosterError as e:
        if args.verbose:
            raise
        print(f"error: {printable(_user_message(e))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`poster models | head`): stop quietly, as other programs do, and
        # point stdout at nowhere so the interpreter's final flush does not fail again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor
            pass
        return 141  # 128 + SIGPIPE, the shell's status for a program stopped by a closed pipe
    except OSError as e:
        if args.verbose or not e.filename:
            raise
        # a path the user named that cannot be read or written (exists, is a folder, no permission)
        where = " -> ".join(printable(f) for f in (e.filename, e.filename2) if f)
        print(f"error: {e.strerror or e}: {where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_main() -> int:
    """The ``poster`` program (and ``python -m poster``): :func:`main`, then ``gc.freeze()``.

    At interpreter shutdown the garbage collector walks every object still tracked, and torch
    leaves hundreds of thousands: ~0.3 s of a 1.8 s ``poster predict one.jpg`` on 2 cores
    (docs/benchmarks.md).  Frozen objects are left out of that walk.  Nothing is lost: by now every
    file a command wrote is closed and renamed into place, and objects are still released and
    ``atexit`` handlers still run as usual.  Only the program does this; a ``main()`` called from
    Python (tests, notebooks) keeps its collector as it was."""
    import gc

    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
