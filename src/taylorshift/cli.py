"""The ``taylorshift`` command line: one entry point, one module per subcommand, one error path.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the
command being run is imported, so ``taylorshift crossover`` works without torch and ``--help`` is fast.

Errors: a command checks its inputs and outputs before doing any work (the argparse types and the
:func:`output_dir` / :func:`output_file` checks below) and raises; :func:`main` turns a :class:`CLIError`, a
usage error, or a ``ValueError``, ``TypeError``, ``KeyError``, ``OSError``, ``ImportError`` or
``ArithmeticError`` from anywhere into one line ``taylorshift <command>: error: <message>`` on stderr and exit
status 2, without a traceback. ``--debug`` (anywhere on the command line) or ``TAYLORSHIFT_DEBUG=1`` shows the
traceback instead. Warnings are printed as one line ``taylorshift <command>: warning: <message>``.

Exit status: 0 success; 1 the command ran and reports a failure (``data verify`` found a bad file, ``demo``
found a mismatch); 2 an error (bad option, unusable file or folder, missing data, ...); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from taylorshift.files import dir_write_problem, file_write_problem
from taylorshift.switches import env_switch

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
    "convert-hf": (
        "taylorshift.integrations.hf_cli",
        "convert a TaylorShift language model checkpoint into a Hugging Face transformers model folder",
    ),
    "export": ("taylorshift.deploy.cli", "export a checkpoint to ONNX (dynamic length, fixed backend), int8 optional"),
}


class CLIError(Exception):
    """An error in what the user asked for (an option, a file, a folder): :func:`main` prints the message as
    one line and exits with status 2. The message should name the option."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors raised as :class:`CLIError` (one line, exit 2) instead of printed."""

    def error(self, message: str):  # type: ignore[override]
        raise CLIError(f"{message} (see '{self.prog} --help')")


# errors main() reports as one line; anything else is a bug and keeps its traceback
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CLIError, ValueError, TypeError, KeyError, OSError, ImportError,
                                                    ArithmeticError)

# ------------------------------------------------------------------------------------ argparse types
def positive_int(text: str) -> int:
    """argparse type shared by the subcommands: an int >= 1, else a clear usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _finite(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``inf`` and ``nan`` are refused)."""
    value = _finite(text, "a finite number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _finite(text, "a finite number >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def device_type(allow_auto: bool = False) -> Callable[[str], str]:
    """argparse type factory: a torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``, ...), and ``auto`` if ``allow_auto``. The value stays a string."""

    def parse(text: str) -> str:
        if allow_auto and text == "auto":
            return text
        import torch

        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"unknown device {text!r}; expected cpu, cuda, cuda:<index>, mps{', or auto' if allow_auto else ''}"
            ) from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
        elif device.type != "cpu":
            try:
                torch.empty(0, device=device)
            except (RuntimeError, AssertionError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine ({first})") from None
        return text

    parse.__name__ = "device"
    return parse


# ------------------------------------------------------------------------------ output locations
_outputs: list[tuple[Path, str]] = []  # (absolute path, option) checked by this run, to name the option on errors


def output_dir(path: str, option: str) -> str:
    """Check, before any work, that files can be written in folder ``path`` (given by ``option``); it may
    not exist yet. Returns ``path``.

    Raises:
        CLIError: ``path`` is a file, or it (or the folder it would be created in) is not writable.
    """
    problem = dir_write_problem(path)
    if problem is not None:
        raise CLIError(f"{option} {path}: {problem}")
    _outputs.append((Path(path).expanduser().absolute(), option))
    return path


def output_file(path: str, option: str, create_parents: bool = False) -> str:
    """Check, before any work, that the file ``path`` (given by ``option``) can be written; without
    ``create_parents`` its folder must exist. Returns ``path``."""
    problem = file_write_problem(path, create_parents=create_parents)
    if problem is not None:
        raise CLIError(f"{option} {path}: {problem}")
    _outputs.append((Path(path).expanduser().absolute(), option))
    return path


def _option_for(filename: object) -> str | None:
    try:
        target = Path(str(filename)).expanduser().absolute()
    except (TypeError, ValueError):
        return None
    for path, option in reversed(_outputs):
        if target == path or path in target.parents:
            return option
    return None


def error_message(err: BaseException) -> str:
    """One line for ``err``: the message, with the file and the option that named it for ``OSError``."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
        option = _option_for(err.filename)
        if option is not None:
            text += f" (output of {option})"
    elif isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


@contextmanager
def _one_line_warnings(prefix: str) -> Iterator[None]:
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


# ------------------------------------------------------------------------------------------- entry
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s options are added (and its module imported)."""
    parser = ArgumentParser(
        prog="taylorshift",
        description="TaylorShift attention: exact Taylor-softmax attention in quadratic (direct) or "
        "linear (efficient) time. Run 'taylorshift <command> --help' for each command's options.",
        epilog="Errors are one line on stderr with exit status 2; --debug (or TAYLORSHIFT_DEBUG=1) shows the "
        "traceback.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback (anywhere on the line; or TAYLORSHIFT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
            p.set_defaults(_run=module.run)
    return parser


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (before a ``--``), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != "--debug"]
    return head + argv[end:], len(head) != end


def main(argv: list[str] | None = None) -> int:
    """Run ``taylorshift <command> ...``; returns the exit status (see the module docstring)."""
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = f"taylorshift {command}" if command in COMMANDS else "taylorshift"
    _outputs.clear()
    with _one_line_warnings(prefix):
        try:
            debug = debug or env_switch("TAYLORSHIFT_DEBUG", default=False)
            parser = build_parser(command if command in COMMANDS else None)
            args = parser.parse_args(argv)
            if getattr(args, "_run", None) is None:
                parser.print_help()
                return 2
            return int(args._run(args) or 0)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"\n{prefix}: interrupted", file=sys.stderr)
            return 130
        except EXPECTED_ERRORS as err:
            if debug:
                raise
            print(f"{prefix}: error: {error_message(err)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
