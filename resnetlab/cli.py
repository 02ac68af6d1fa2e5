"""`resnetlab` command line: a table of subcommands, each defined in `resnetlab/commands/<name>.py`.

Every command module exposes `register(subparsers)`, which adds its parser and sets `func` to a function taking the
parsed namespace and returning an exit code. Command modules import torch lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

from resnetlab.errors import ResnetlabError

# Order here is the order in `resnetlab --help`.
COMMANDS: tuple[str, ...] = (
    "models",
    "summary",
    "data",
    "train",
    "eval",
    "predict",
    "explain",
    "export",
    "serve",
    "experiment",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    from resnetlab import __version__

    parser = argparse.ArgumentParser(prog="resnetlab", description="Residual networks for your image folders.")
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"resnetlab.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"resnetlab.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Pillow warns on opening an image between its pixel limit and twice it; every reader here refuses such a file
    # itself with a one-line reason (`data.images`), so the multi-line warning would only repeat it.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")  # without importing PIL
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not valid UTF-8 (Python holds its odd bytes as lone surrogates) must not crash a report
        # printed under a strict UTF-8 locale: it prints as `caf\udce9.jpg`, which --json readers turn back into it.
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, rather than at the exit's flush
    except ResnetlabError as exc:
        if not exc.quiet:
            print(f"resnetlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `resnetlab models | head`: the reader has gone, so stop quietly as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not raise again
        return 128 + signal.SIGPIPE
    except OSError as exc:  # a file the command reads or writes (an --out in a missing folder, a full disk)
        if exc.filename is None:
            raise
        print(f"resnetlab {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
