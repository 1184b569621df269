"""Command line: ``python -m vtrain_opt COMMAND ...``.

Each command lives in ``vtrain_opt/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Bad input (a ValueError from parsing or validation, an unreadable file) becomes one
line on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from vtrain_opt import __version__

# Commands in the order `--help` lists them.
COMMANDS = (
    "simulate",
    "search",
    "validate",
    "calibrate",
    "chinchilla",
    "sweep",
    "profile",
    "catalog",
)


class UsageError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="vtrain_opt",
        description="Predict, and search for, the fastest and cheapest way to train an LLM.",
    )
    parser.add_argument("--version", action="version", version=f"vtrain_opt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vtrain_opt.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vtrain_opt.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return its exit status (callable from tests)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"vtrain_opt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vtrain_opt {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def console_main() -> None:
    sys.exit(main())
