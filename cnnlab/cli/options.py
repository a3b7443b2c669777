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
