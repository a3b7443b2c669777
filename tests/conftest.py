import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Each test gets the default float32 floatx and a fixed global seed, whatever ran before it.


@pytest.fixture(autouse=True)
def _fresh_state():
    import cnnlab
    threads = cnnlab.config.threads()
    cnnlab.config.set_floatx("float32")
    cnnlab.seeding.set_random_seed(1234)
    yield
    cnnlab.config.set_floatx("float32")
    cnnlab.config.set_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
