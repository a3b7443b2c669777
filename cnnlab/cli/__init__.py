"""The ``cnnlab`` command: one module per group of commands, each a thin layer over the Python
API, each adding its own parsers.

    train.py     train (checkpoints, resume, transfer, MPI)
    models.py    evaluate, predict, summary, export, report: a trained model, named by ``zoo.find``
    tasks.py     index, search, detect, video: the article's uses of a CNN
    explain.py   explain: the article's concepts with numbers
    serve.py     serve: the local web app
    options.py   argument types and the files beside a model, shared by all of them

A user error (missing file, bad option, unreadable image) prints one line and exits with status 1;
argparse's usage errors exit with 2. No tracebacks for mistakes a user can fix.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from cnnlab import config
from cnnlab.cli import explain, models, serve, tasks, train
from cnnlab.cli.options import FORMATTER
from cnnlab.errors import CnnlabError
from cnnlab.version import __version__

#: the groups, in the order ``cnnlab --help`` lists their commands
GROUPS = (train, models, serve, explain, tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab", formatter_class=FORMATTER,
        description="Build, train, inspect and use convolutional neural networks.",
        epilog="Example:\n  cnnlab train            # the article's CNN on the bundled digits\n"
               "  cnnlab predict article_cnn.cnnlab digit.png")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as a command's user reads it: ``Warning: ...``, not the source file and line
    Python shows a programmer."""
    print(f"Warning: {message}", file=sys.stderr if file is None else file)


def run() -> int:
    """The ``cnnlab`` command: :func:`main` in a process of its own, whose allocator keeps freed
    memory for the next training step (``config.keep_freed_memory``) and whose warnings print
    as one line each: both the process's owner's to choose, which a library must not do to its
    caller's process."""
    config.keep_freed_memory()
    warnings.showwarning = _show_warning
    return main()


def main(argv=None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):      # a bare `cnnlab`: what it can do
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "train" and args.verbose is None:
        args.verbose = "auto"
    device = config.device()               # --device holds for this command alone
    try:
        code = args.func(args)
        sys.stdout.flush()              # a closed pipe shows here, not at interpreter exit
        return code
    except CnnlabError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`cnnlab explain conv | head`): stop quietly, as Unix tools do;
        # stdout goes to /dev/null so Python's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        config.set_device(device)


if __name__ == "__main__":
    sys.exit(main())
