"""atheris (libFuzzer) harness for the model loader: any input must load or raise CnnlabError.

    python tests/reliability/fuzz_model_file.py CORPUS_DIR -runs=100000

Any other exception is a crash: libFuzzer stops and writes the input to crash-<hash>.
Each input is written to ``fuzz-input.cnnlab`` in the working folder, where libFuzzer writes
its crash files too (a temporary folder would outlive the run: libFuzzer exits without
Python's cleanup).
"""

import os
import sys

import atheris

with atheris.instrument_imports(include=["cnnlab"]):
    import cnnlab
    from cnnlab.errors import CnnlabError

PATH = os.path.abspath("fuzz-input.cnnlab")


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as handle:
        handle.write(data)
    try:
        cnnlab.models.load_model(PATH)
    except CnnlabError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
