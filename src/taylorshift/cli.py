"""The ``taylorshift`` command line: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the
command being run is imported, so ``taylorshift crossover`` works without torch and ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "taylorshift.demo",
        "quick self-check: direct vs efficient agreement, theoretical crossovers, timings on this machine",
    ),
    "crossover": (
        "taylorshift.analysis.cli",
        "analytic crossover lengths N0 above which efficient TaylorShift beats direct (FLOPs and memory)",
    ),
    "bench": (
        "taylorshift.bench.cli_bench",
        "measure time and memory of direct, efficient, SDPA and naive softmax attention over N; CSV, JSON, plots",
    ),
    "calibrate": (
        "taylorshift.bench.cli_calibrate",
        "measure this machine's direct/efficient crossover per head size and store it for backend='auto'",
    ),
    "scaling": (
        "taylorshift.bench.cli_scaling",
        "norms of the efficient path's intermediate results vs N and d, with and without normalisation",
    ),
    "data": ("taylorshift.data.cli", "list the benchmark tasks, prepare their data in the cache, verify checksums"),
    "generate": (
        "taylorshift.generate",
        "sample text from a trained byte-level language model checkpoint, streamed to stdout as it is generated",
    ),
    "train": ("taylorshift.train.cli", "train a model on a task (resumable, CSV metrics, plots, torchrun-ready)"),
    "eval": ("taylorshift.train.eval", "evaluate a checkpoint with any backend; compare direct and efficient"),
}


def positive_int(text: str) -> int:
    """argparse type shared by the subcommands: an int >= 1, else a clear usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s options are added (and its module imported)."""
    parser = argparse.ArgumentParser(
        prog="taylorshift",
        description="TaylorShift attention: exact Taylor-softmax attention in quadratic (direct) or "
        "linear (efficient) time. Run 'taylorshift <command> --help' for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
