"""cnnlab changes nothing global that the user owns: the plotting backend (no pyplot at all), Pillow's
pixel limit, the warnings filters, NumPy's print options. Checked in a fresh process that draws
every figure, writes a report and opens images."""

import platform
import subprocess
import sys
import textwrap

import pytest


def test_drawing_and_reading_images_leave_global_state_alone(tmp_path):
    code = textwrap.dedent("""
        import sys, warnings
        import numpy as np
        import matplotlib
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = 123_456_789            # the user's own settings
        warnings.simplefilter("default")
        np.set_printoptions(precision=3)

        def state():
            return (matplotlib.get_backend(), Image.MAX_IMAGE_PIXELS, list(warnings.filters),
                    np.get_printoptions())

        before = state()
        import cnnlab
        from cnnlab import preprocess, viz
        from cnnlab.viz.report import build_report
        model = cnnlab.zoo.get("lenet5")
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
        x = cnnlab.datasets.as_model_input(x[:128])
        history = model.fit(x, y[:128], epochs=1, verbose=0, validation_split=0.25)
        viz.plot_feature_maps(model, x[0], "maps.png")
        viz.plot_filters(model, path="filters.png")
        viz.plot_history(history, "history.png")
        viz.plot_misclassified(model, x, y[:128], path="mistakes.png")
        build_report(model, x[:32], y[:32])
        Image.new("L", (40, 30), 200).save("digit.png")
        preprocess.open_image("digit.png")
        assert state() == before, (state(), before)
        assert "matplotlib.pyplot" not in sys.modules
        print("untouched")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={"MPLBACKEND": "svg", "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "untouched" in result.stdout


def _process_state():
    """What a user of the library owns and a command must leave as it found it."""
    import random

    import numpy as np
    from threadpoolctl import threadpool_info

    import cnnlab
    return (cnnlab.seeding.global_generator().bit_generator.state, random.getstate(),
            np.random.get_state()[1].tolist(), cnnlab.config.threads(),
            {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()})


def _unchanged(before, after) -> bool:
    """The same state. A BLAS library loaded meanwhile (SciPy's, at a first import of it: this
    test alone, before any other has imported SciPy) is new, not changed: the limits compared
    are those of the libraries there before."""
    *rest_before, pools_before = before
    *rest_after, pools_after = after
    return rest_before == rest_after and \
        all(pools_after[path] == threads for path, threads in pools_before.items())


def test_training_commands_leave_the_process_as_they_found_it(tmp_path, monkeypatch):
    """`cnnlab train`, run in the user's process (a notebook calling ``cnnlab.cli.main``, the
    web app), fresh and resumed: the user's seeded generators (cnnlab's, Python's, NumPy's
    legacy one), ``config.threads()`` and the BLAS thread limits are as before. Before, a fresh
    run reseeded cnnlab's and Python's generators with the run's seed, and a resumed one set
    the thread count to the checkpoint's for the rest of the process."""
    import random

    import numpy as np

    import cnnlab
    from cnnlab.cli import main
    monkeypatch.chdir(tmp_path)
    cnnlab.utils.set_random_seed(42)
    random.seed(7)
    np.random.seed(3)
    threads = cnnlab.config.threads()
    try:
        cnnlab.config.set_threads(2)
        before = _process_state()
        assert main(["train", "--epochs", "1", "--verbose", "0", "--checkpoint-dir", "run",
                     "--checkpoint-every", "5", "--out", "m.cnnlab"]) == 0
        assert _unchanged(before, _process_state())
        cnnlab.config.set_threads(1)                # the checkpoint was written at 2 threads
        before = _process_state()
        assert main(["train", "--resume", "run", "--verbose", "0",
                     "--out", "m2.cnnlab"]) == 0
        assert _unchanged(before, _process_state())
    finally:
        cnnlab.config.set_threads(threads)


def test_a_run_is_seeded_by_its_own_seed_whatever_the_caller_seeded(tmp_path):
    """The same settings give the same weights whatever the global generator holds, and
    new_run outside its seed's block is refused rather than silently unseeded."""
    import pytest

    import cnnlab
    from cnnlab.runs import fit_run, new_run, run_settings
    settings = run_settings(epochs=1, batch_size=256)
    weights = []
    for user_seed in (1, 2):
        cnnlab.utils.set_random_seed(user_seed)
        with cnnlab.seeding.seeded(settings["seed"]):
            model, train, test = new_run(settings)
            fit_run(model, settings, (train[0][:512], train[1][:512]), test, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        assert (a == b).all()
    with pytest.raises(cnnlab.CnnlabError, match="seeding.seeded"):
        new_run(settings)


def test_a_seeded_block_draws_what_set_random_seed_would():
    """The same stream as the old global reseed, so runs recorded before (the shipped weights'
    recipes) repeat: weights, dropout's generator and fit's shuffling alike."""
    import cnnlab

    def trained():
        model = cnnlab.zoo.get("simple_convnet")
        model.compile("sgd", "sparse_categorical_crossentropy")
        (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
        model.fit(cnnlab.datasets.as_model_input(x[:256]), y[:256], batch_size=64, epochs=1,
                  verbose=0)
        return model.get_weights()
    cnnlab.utils.set_random_seed(11)
    globally = trained()
    cnnlab.utils.set_random_seed(99)
    with cnnlab.seeding.seeded(11):
        scoped = trained()
    for a, b in zip(globally, scoped):
        assert (a == b).all()


FAULTS_OF_STEPS = """
import resource, sys
import numpy as np
import cnnlab
if sys.argv[1] == "keep":
    assert cnnlab.config.keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():                          # a training step's temporaries: 24 of 1-4 MB, then freed
    held = [np.ones((k % 4 + 1) << 18, np.float32) for k in range(24)]
    del held
for _ in range(3):
    step()
before = faults()
for _ in range(10):
    step()
print(faults() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory tunes glibc's allocator")
def test_keeping_freed_memory_ends_the_page_faults_of_each_step_and_only_on_request():
    """By default glibc hands a step's freed arrays back to the system, and the next step
    faults every page in again; ``config.keep_freed_memory`` keeps them. Importing cnnlab does
    not ask for it (the allocator is the caller's), the ``cnnlab`` command does."""
    def faults(mode):
        return int(subprocess.run([sys.executable, "-c", FAULTS_OF_STEPS, mode], check=True,
                                  capture_output=True, text=True).stdout)
    assert faults("default") > 10_000                  # 10 steps of 60 MB: ~15k pages each
    assert faults("keep") < 1_000


def test_the_cnnlab_command_keeps_freed_memory(monkeypatch):
    from cnnlab import cli
    asked = []
    monkeypatch.setattr(cli.config, "keep_freed_memory", lambda: asked.append(True))
    monkeypatch.setattr(sys, "argv", ["cnnlab"])
    assert cli.run() == 0 and asked == [True]
