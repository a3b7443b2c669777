"""A ``cnnlab train`` run SIGKILLed after its first checkpoint and resumed, beside the same run
never interrupted: what the bit-exact resume tests share (``tests/test_zoo.py`` on the CPU,
``tests/test_gpu.py`` on a GPU)."""

import signal
import subprocess
import time

import cnnlab


def killed_and_resumed(command, options, folder, every: int):
    """``command(out, *extra)``: the argv of a ``cnnlab train`` that saves its model to ``out``.
    Runs it with ``options`` straight through, then again with a checkpoint every ``every``
    batches, killed once the first is written and resumed from it. Returns ``(resumed,
    reference, progress)``: both final models, and the step the checkpoint held."""
    subprocess.run(command(folder / "reference.cnnlab", *options), check=True, timeout=300)
    checkpoints, out = folder / "ck", folder / "resumed.cnnlab"
    process = subprocess.Popen(command(out, *options, "--checkpoint-dir", str(checkpoints),
                                       "--checkpoint-every", str(every)), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint.cnnlab").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]   # killed, not finished
    progress = cnnlab.load_model(checkpoints / "checkpoint.cnnlab").optimizer.iterations
    subprocess.run(command(out, "--resume", str(checkpoints)), check=True, timeout=300)
    return cnnlab.load_model(out), cnnlab.load_model(folder / "reference.cnnlab"), progress
