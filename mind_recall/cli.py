"""`mind` console script.

Each subcommand lives in the module that owns it and exposes two functions:
``configure_parser(parser: argparse.ArgumentParser) -> None`` and
``main(args: argparse.Namespace) -> int``. Only the chosen subcommand's module is imported,
so `mind serve` never imports training code and `mind --help` starts fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("model.train", "train a MIND model on an interaction log into a run directory"),
    "evaluate": ("model.evaluate", "evaluate a run or bundle under the ComiRec protocol, with baselines"),
    "export": ("model.export", "export a trained run into a verified serving bundle"),
    "serve": ("service.main", "serve a bundle over HTTP (POST /recall)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mind", description="MIND multi-interest candidate retrieval.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
