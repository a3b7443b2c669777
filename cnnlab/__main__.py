import sys

from cnnlab.cli import run

sys.exit(run())
