"""The ``taylorshift`` command line: one entry point, one module per subcommand.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
heavy imports (matplotlib, the benchmark machinery) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module implementing it
COMMANDS: dict[str, str] = {
    "demo": "taylorshift.demo",
    "crossover": "taylorshift.analysis.cli",
    "bench": "taylorshift.bench.cli_bench",
    "scaling": "taylorshift.bench.cli_scaling",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taylorshift",
        description="TaylorShift attention: exact Taylor-softmax attention in quadratic (direct) or "
        "linear (efficient) time. Run 'taylorshift <command> --help' for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and err.name.startswith("taylorshift"):
                continue  # command not built yet in this checkout
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
