""""A data-set of your own": folders of real image files, streamed, with the Keras semantics,
robust to bad files, and usable from the command line."""

import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from PIL import Image

import cnnlab
from cnnlab.cli import main
from cnnlab.utils import image_dataset_from_directory


def upright(digit):
    return Image.fromarray(digit)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """zero/ one/ two/ (digits 0-2 from the bundled MNIST) + broken and irrelevant files."""
    root = tmp_path_factory.mktemp("photos")
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    counts = {}
    for label, name in enumerate(("zero", "one", "two")):
        (root / name).mkdir()
        picks = np.flatnonzero(y == label)[:30]
        for k, i in enumerate(picks):
            image = upright(x[i])
            if k % 3 == 1:                                     # some in colour
                image = Image.merge("RGB", (image, image.point(lambda v: v // 2), image))
            if k % 5 == 2:                                     # stored rotated, EXIF says so
                exif = Image.Exif()
                exif[0x0112] = 8                                # display: rotate 90 degrees CCW
                image.rotate(-90, expand=True).save(root / name / f"{k}.png", exif=exif)
            elif k % 2:
                image.convert("RGB").save(root / name / f"{k}.jpg", quality=95)
            else:
                image.save(root / name / f"{k}.png")
        counts[name] = len(picks)
    (root / "two" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "one" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root, counts


def test_classes_labels_and_counts(folder, capsys):
    root, counts = folder
    with pytest.warns(RuntimeWarning, match=r"no images: \['empty'\]"):
        dataset = image_dataset_from_directory(root, image_size=(28, 28), batch_size=16,
                                               shuffle=False, color_mode="grayscale")
    assert dataset.class_names == ["empty", "one", "two", "zero"]          # sorted
    assert "Found 91 files belonging to 4 classes" in capsys.readouterr().out
    assert not any(p.endswith(".txt") for p in dataset.file_paths)
    with pytest.warns(RuntimeWarning, match=r"Skipped 1 unreadable image.*broken\.png"):
        batches = list(dataset)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.shape == (90, 28, 28, 1) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 255
    assert np.bincount(y, minlength=4).tolist() == [0, counts["one"], counts["two"],
                                                    counts["zero"]]


def test_exif_orientation_is_respected(folder):
    root, _ = folder
    from cnnlab.data.folders import decode
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    index = np.flatnonzero(y == 0)[2]                  # k == 2: stored rotated, with EXIF
    decoded = decode(root / "zero" / "2.png", "grayscale", (28, 28), "nearest")[..., 0]
    np.testing.assert_array_equal(decoded, x[index].astype(np.float32))


def test_on_error_raise_names_the_file(folder):
    root, _ = folder
    dataset = image_dataset_from_directory(root, image_size=(28, 28), on_error="raise",
                                           shuffle=False, verbose=False)
    with pytest.raises(cnnlab.errors.DataError, match="broken.png"):
        list(dataset)


def test_validation_split_is_disjoint_and_needs_a_seed(folder):
    root, _ = folder
    train, val = image_dataset_from_directory(root, image_size=(28, 28), validation_split=0.25,
                                              subset="both", seed=3, verbose=False)
    assert not set(train.file_paths) & set(val.file_paths)
    assert len(train.file_paths) + len(val.file_paths) == 91
    assert len(val.file_paths) == 91 - int(91 * 0.75)
    with pytest.raises(cnnlab.errors.ConfigError, match="give a seed"):
        image_dataset_from_directory(root, validation_split=0.2, subset="both")


def test_fit_and_evaluate_take_the_dataset_and_generators(folder):
    root, _ = folder
    cnnlab.utils.set_random_seed(0)
    train = image_dataset_from_directory(root, image_size=(28, 28), color_mode="grayscale",
                                         batch_size=16, seed=1, verbose=False)
    model = cnnlab.Sequential([
        cnnlab.layers.Input((28, 28, 1)), cnnlab.layers.Rescaling(1 / 255),
        cnnlab.layers.RandomRotation(0.02, seed=1),
        cnnlab.layers.Conv2D(8, 3, activation="relu"), cnnlab.layers.MaxPooling2D(),
        cnnlab.layers.Flatten(), cnnlab.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with pytest.warns(RuntimeWarning, match="broken.png"):
        history = model.fit(train, epochs=6, verbose=0)
    assert history.history["accuracy"][-1] > 0.8
    assert model.evaluate(train, verbose=0)[1] > 0.8

    def generator():                                         # any iterable of (x, y) batches
        yield from train

    model.fit(generator(), epochs=1, verbose=0)
    assert model.predict(train, verbose=0).shape == (90, 4)


def test_cli_trains_on_a_folder_and_predicts_class_names(folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "folder.cnnlab"
    assert main(["train", "--data", str(root), "--image-size", "28", "--color-mode",
                 "grayscale", "--model", "lenet5", "--epochs", "3", "--batch-size", "16",
                 "--optimizer", "adam", "--out", str(out), "--verbose", "0"]) == 0
    text = capsys.readouterr().out
    assert "Found 91 files belonging to 4 classes" in text and "Test accuracy" in text
    model = cnnlab.models.load_model(out)
    assert model.input_shape == (28, 28, 1) and model.output_shape == (None, 4)
    assert model.metadata["class_names"] == ["empty", "one", "two", "zero"]
    assert main(["predict", str(out), str(root / "one" / "0.png")]) == 0
    line = capsys.readouterr().out
    assert any(name in line for name in ("one (", "zero (", "two ("))


def test_streaming_keeps_memory_bounded(tmp_path):
    """5,000 images whose decoded floats (240 MB) exceed the budget: peak RSS grows by much less."""
    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for k in range(2500):
            noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(noise).save(root / name / f"{k}.bmp")   # fast to write and read
    script = textwrap.dedent(f"""
        import resource, numpy as np, cnnlab
        from cnnlab import layers
        from cnnlab.utils import image_dataset_from_directory
        data = image_dataset_from_directory({str(root)!r}, image_size=(64, 64), batch_size=32,
                                            seed=0, verbose=False)
        model = cnnlab.Sequential([layers.Input((64, 64, 3)), layers.Rescaling(1 / 255),
                                   layers.Conv2D(4, 3, strides=2, activation="relu"),
                                   layers.GlobalAveragePooling2D(),
                                   layers.Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(next(iter(data))[0][:2], np.zeros(2, int), verbose=0)   # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        model.fit(data, epochs=1, verbose=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(before, after)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = map(float, result.stdout.split())
    decoded_total_mb = 5000 * 64 * 64 * 3 * 4 / 2**20          # 234 MB if all held at once
    assert after - before < 80, (before, after)                 # a few batches, not the folder
    assert decoded_total_mb > 200


def test_after_training_on_a_folder_evaluate_uses_its_validation_split(folder, tmp_path, capsys,
                                                                      monkeypatch):
    """evaluate without --data names the folder to use; with it, the images held out in training
    (not the training images); a second run never overwrites the first's model; a dataset of a
    few batches is flagged."""
    root, _ = folder
    monkeypatch.chdir(tmp_path)
    command = ["train", "--data", str(root), "--image-size", "28", "--color-mode", "grayscale",
               "--model", "lenet5", "--epochs", "1", "--verbose", "0"]
    assert main(command) == 0
    first = capsys.readouterr().out
    assert "too few for the network to learn much. Try --batch-size 8" in first  # 72 at 128
    saved = (tmp_path / "lenet5.cnnlab").read_bytes()
    assert main([*command, "--batch-size", "16"]) == 0
    second = capsys.readouterr().out
    assert "lenet5.cnnlab holds an earlier run's file; this run writes lenet5-2.cnnlab" \
        in second and "too few" not in second
    assert (tmp_path / "lenet5.cnnlab").read_bytes() == saved and (tmp_path / "lenet5-2.cnnlab"
                                                                   ).exists()
    assert main(["evaluate", "lenet5.cnnlab"]) == 0        # the recorded folder, said so
    out = capsys.readouterr().out
    held_out = re.search(r"([\d,]+) validation images", first).group(1)   # what training held out
    assert "the 20% validation split" in out and f"{held_out} images it never trained on" in out
    assert main(["evaluate", "lenet5.cnnlab", "--data", str(root)]) == 0
    assert f"{held_out} images it never trained on, the same files as recorded" in \
        capsys.readouterr().out


def test_evaluation_uses_exactly_the_files_training_held_out(folder, tmp_path):
    """The very files, not only their count: the split once followed `shuffle`, and evaluation
    (unshuffled) scored training images, all of one class."""
    from cnnlab.data import evaluation_data
    from cnnlab.models import load_model
    from cnnlab.runs import new_run, run_settings
    root, _ = folder
    settings = run_settings(model="lenet5", data=str(root), image_size=28,
                            color_mode="grayscale", epochs=1, seed=5)
    with cnnlab.seeding.seeded(5):
        model, train, test = new_run(settings)
    model.save(tmp_path / "m.cnnlab")
    model = load_model(tmp_path / "m.cnnlab")
    for spec in (None, str(root)):
        evaluation = evaluation_data(model, "m.cnnlab", spec)
        assert evaluation.files == test.source.file_paths
        assert not set(evaluation.files) & set(train.source.file_paths)
        assert len(set(evaluation.y.tolist())) == 3                   # every class, not one
    # a folder that changed since training is refused: its split is not the held-out files
    extra = root / "zero" / "added-later.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(extra)
    try:
        with pytest.raises(cnnlab.errors.ConfigError, match="has changed since"):
            evaluation_data(model, "m.cnnlab", str(root))
    finally:
        extra.unlink()


def test_colour_and_size_conversions_are_said_in_one_line_each(tmp_path, capsys):
    """A greyscale folder for an RGB model (and the reverse), and images of another size: the
    batches come in the asked shape, and one line says each conversion."""
    grey, colour = tmp_path / "grey", tmp_path / "colour"
    rng = np.random.default_rng(0)
    for root, mode, size in ((grey, "L", 20), (colour, "RGB", 32)):
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            for k in range(3):
                pixels = rng.integers(0, 256, (size, size, 3) if mode == "RGB" else (size, size))
                Image.fromarray(pixels.astype(np.uint8), mode).save(root / name / f"{k}.png")
    dataset = image_dataset_from_directory(grey, image_size=(32, 32), shuffle=False)
    lines = capsys.readouterr().out.splitlines()
    assert "Converting greyscale images to RGB (color_mode='rgb')." in lines
    assert "Resizing images of 20x20 pixels to 32x32 (image_size=(32, 32))." in lines
    assert next(iter(dataset))[0].shape == (6, 32, 32, 3)
    dataset = image_dataset_from_directory(colour, image_size=(32, 32), shuffle=False,
                                           color_mode="grayscale")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["Converting RGB images to greyscale (color_mode='grayscale')."]
    assert next(iter(dataset))[0].shape == (6, 32, 32, 1)
    image_dataset_from_directory(colour, image_size=(32, 32))
    assert len(capsys.readouterr().out.splitlines()) == 1          # nothing to convert: silent


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb", "rgba"])
def test_cache_gives_the_same_batches_and_reads_each_file_once(folder, tmp_path, monkeypatch,
                                                               color_mode):
    """A cached dataset's epochs equal the uncached one's, bit for bit (uint8 keeps every
    decoded value), and after the first epoch no file is decoded again; the broken file is
    tried, and skipped, every epoch."""
    from cnnlab.data import folders
    root, _ = folder
    options = dict(image_size=(20, 24), batch_size=16, seed=5, color_mode=color_mode,
                   verbose=False)
    with pytest.warns(RuntimeWarning, match="no images"):
        plain = image_dataset_from_directory(root, **options)
        cached = image_dataset_from_directory(root, **options).cache()
    assert cached.cache_bytes == 91 * 20 * 24 * {"grayscale": 1, "rgb": 3, "rgba": 4}[color_mode]
    decoded = []
    real_decode = folders.decode
    monkeypatch.setattr(folders, "decode", lambda path, *a: decoded.append(path) or
                        real_decode(path, *a))
    for epoch in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # the broken file, said once
            expected = list(plain)
            decoded.clear()
            got = list(cached)
        assert len(got) == len(expected) == 6
        for (x, y), (x_ref, y_ref) in zip(got, expected):
            assert x.dtype == np.float32 and np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
        if epoch == 0:
            assert len(decoded) == 91                          # 90 images and the broken file
        else:
            assert [p.rsplit("/", 1)[-1] for p in decoded] == ["broken.png"]


def test_training_data_caches_a_folder_that_fits_the_budget_and_a_quarter_of_memory(
        folder, monkeypatch, capsys):
    from cnnlab.data import splits
    root, _ = folder
    settings = dict(data=str(root), image_size=16, color_mode="rgb", batch_size=8, seed=0)
    with pytest.warns(RuntimeWarning, match="no images"):
        train, test, _, _ = splits.training_data(settings)
    assert train.source._is_cached is not None and test.source._is_cached is not None
    assert "Keeping the decoded images in memory after the first epoch (0 MB)" in \
        capsys.readouterr().out
    needed = 91 * 16 * 16 * 3
    monkeypatch.setattr(splits, "FOLDER_CACHE_BYTES", needed - 1)
    with pytest.warns(RuntimeWarning, match="no images"):
        train, test, _, _ = splits.training_data(settings)
    assert train.source._is_cached is None and "Keeping" not in capsys.readouterr().out
    # nor past a quarter of the machine's memory
    monkeypatch.setattr(splits, "FOLDER_CACHE_BYTES", 1 << 30)
    monkeypatch.setattr(splits.config, "physical_memory", lambda: 4 * needed - 4)
    assert splits.folder_cache_budget() == needed - 1
    with pytest.warns(RuntimeWarning, match="no images"):
        train, _, _, _ = splits.training_data(settings)
    assert train.source._is_cached is None
