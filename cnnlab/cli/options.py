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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


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
    it: asking for a GPU where none can be used is a one-line error before any work; 'auto'
    that passes over a GPU it sees says so in one line."""
    from cnnlab import config
    from cnnlab.engine import devices
    if getattr(args, "device", None):
        config.set_device(args.device)
    where = devices.resolve()
    reason = devices.gpu_unavailable()
    if where == "cpu" and config.device() == "auto" and reason and reason.startswith("CuPy sees"):
        say(f"Running on the CPU: {reason}.")
    return where
