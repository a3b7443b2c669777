"""The Keras-idiom scripts in examples/ run unchanged (one epoch) and learn."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script,min_accuracy", [("article_cnn.py", 0.8),
                                                 ("simple_mnist_convnet.py", 0.8),
                                                 ("small_resnet.py", 0.2)])
def test_example_runs_and_learns(script, min_accuracy):
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True,
                            text=True, env={**os.environ, "EPOCHS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr[-2000:]      # e.g. unsettled statistics
    accuracy = float(result.stdout.split("Test accuracy:")[1].split()[0])
    assert accuracy >= min_accuracy
