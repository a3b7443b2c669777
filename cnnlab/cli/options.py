"""What every group of ``cnnlab`` commands shares: argument types that refuse bad numbers with
argparse's own error, the help formatter, progress lines, and the files a run writes beside its
model."""

from __future__ import annotations

import argparse
import os
import sys
import time

FORMATTER = argparse.RawDescriptionHelpFormatter
REPORT_FILE = "report.html"


def add_command(commands, name: str, func, help: str, examples: list[str], details: str = "",
                notes: str = "") -> argparse.ArgumentParser:
    """A command's parser, the same shape for every command: ``help`` for the list of commands,
    ``func``'s docstring (then ``details``) as its description, worked ``examples`` (every
    command has some) and ``notes`` after them, and ``func`` to run."""
    epilog = "Example:\n" + "\n".join(f"  {line}" for line in examples)
    parser = commands.add_parser(name, help=help, formatter_class=FORMATTER,
                                 description=func.__doc__ + (f"\n\n{details}" if details else ""),
                                 epilog=epilog + (f"\n\n{notes}" if notes else ""))
    parser.set_defaults(func=func)
    return parser


def _number(kind, accepts, expected: str):
    """An argparse type: ``kind(text)`` where ``accepts`` it, else argparse's usage error saying
    what was ``expected``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected            # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "0 or a positive integer")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")


def progress_lines(say):
    """A report's progress: one line per part, with the seconds so far (no step is silent for
    long)."""
    start = time.perf_counter()
    return lambda what: say(f"  report: {what} ({time.perf_counter() - start:.0f} s)",
                            flush=True)


def timeline_path(model_path: str) -> str:
    """Where ``cnnlab train --report`` keeps a model's training timeline: beside the model."""
    return os.path.splitext(model_path)[0] + ".timeline.npz"


def say_warnings(caught) -> None:
    """Warnings recorded during a command, one line each on stderr."""
    for warning in caught:
        print(f"Warning: {warning.message}", file=sys.stderr)


def add_device_option(parser) -> None:
    """``--device``, for the commands that run a model."""
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"],
                        help="where the model runs: auto (the GPU when one can be used, else "
                             "the CPU), cpu or gpu (default: $CNNLAB_DEVICE, else auto)")


def use_device(args, say=print) -> str:
    """Apply ``--device`` (for this command: ``main`` restores the setting after it) and resolve
    it: asking for a GPU where none can be used is a one-line error before any work; a run on
    the GPU says which in one line, and so does 'auto' that passes over a GPU it sees."""
    from cnnlab import config
    from cnnlab.engine import devices
    if getattr(args, "device", None):
        config.set_device(args.device)
    where = devices.resolve()
    if where == "gpu":
        say(f"Running on the GPU: {devices.gpu_name()}.")
    elif config.device() == "auto" and devices.cupy_devices()[0]:
        say(f"Running on the CPU: {devices.gpu_unavailable()}.")
    return where
