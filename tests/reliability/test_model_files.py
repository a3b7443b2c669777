"""Promise: a model file from anywhere is loaded or refused with a cnnlab error; it never runs
code, crashes, hangs or makes cnnlab allocate absurd memory. 10,000+ mutated files."""

import io
import json
import resource
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnlab
from cnnlab import callbacks, layers
from cnnlab.errors import CnnlabError


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    """A small but complete checkpoint: every kind of member a .cnnlab file (format 2) can hold,
    and a graph: a shortcut, a concatenation, BatchNormalization's state, Dropout's generator."""
    cnnlab.utils.set_random_seed(0)
    inputs = layers.Input((6, 6, 1))
    x = layers.Conv2D(2, 3, activation="relu", padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Concatenate()([layers.Add()([x, layers.Conv2D(2, 1)(inputs)]), inputs])
    x = layers.Dropout(0.1)(layers.Flatten()(layers.MaxPooling2D()(x)))
    model = cnnlab.Model(inputs, layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.metadata["note"] = "fuzz"
    path = tmp_path_factory.mktemp("fuzz") / "model.cnnlab"
    x = np.random.default_rng(0).random((16, 6, 6, 1)).astype(np.float32)
    model.fit(x, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(path, save_freq=1)])
    return path.read_bytes()


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
)


def mutate(data: bytes, steps) -> bytes:
    data = bytearray(data)
    for step in steps:
        at = int(step[1] * len(data)) if data else 0
        if step[0] == "truncate":
            del data[at:]
        elif step[0] == "flip" and data:
            data[min(at, len(data) - 1)] ^= step[2]
        elif step[0] == "insert":
            data[at:at] = step[2]
        elif step[0] == "delete":
            del data[at:at + step[2]]
        elif step[0] == "overwrite":
            data[at:at + len(step[2])] = step[2]
    return bytes(data)


def load_or_refuse(path):
    """The only acceptable outcomes: a usable model, or a CnnlabError."""
    try:
        model = cnnlab.models.load_model(path)
    except CnnlabError:
        return
    model.predict(np.zeros((1, *model.input_shape), np.float32), verbose=0)


@settings(max_examples=10_000, deadline=2000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(mutation, min_size=1, max_size=4))
def test_ten_thousand_mutated_files_load_or_give_a_cnnlab_error(valid_file, tmp_path_factory,
                                                                steps):
    path = tmp_path_factory.getbasetemp() / "mutant.cnnlab"
    path.write_bytes(mutate(valid_file, steps))
    load_or_refuse(path)


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info.filename) for info in archive.infolist()}


def _rebuild(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=1500, deadline=2000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(member=st.sampled_from(["model.npy", "format.npy", "training.npy"]),
       path_in_json=st.lists(st.sampled_from(["config", "layers", 0, 1, "config", "filters",
                                              "kernel_size", "units", "padding", "input_shape",
                                              "compile", "optimizer", "epoch", "generators",
                                              "shuffle_rng", "partial", "metadata",
                                              "inbound_nodes", "input_layers", "output_layers",
                                              2, 3, 4, "shape", "axis", "momentum"]),
                             min_size=1, max_size=5),
       value=json_values)
def test_structurally_valid_files_with_hostile_json_are_refused_cleanly(
        valid_file, tmp_path_factory, member, path_in_json, value):
    """Past the zip and .npy layers: well-formed JSON carrying wrong types and absurd sizes."""
    members = _members(valid_file)
    document = json.loads(np.load(io.BytesIO(members[member])).tobytes())
    target = document
    for key in path_in_json[:-1]:
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and isinstance(key, int) and key < len(target):
            target = target[key]
    last = path_in_json[-1]
    if isinstance(target, dict):
        target[str(last)] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.frombuffer(json.dumps(document).encode(), np.uint8))
    members[member] = buffer.getvalue()
    path = tmp_path_factory.getbasetemp() / "hostile.cnnlab"
    path.write_bytes(_rebuild(members))
    load_or_refuse(path)


def test_zz_fuzzing_did_not_balloon_memory():
    """Runs after the fuzz tests (file order): the process never grew past a modest peak."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize("field,value", [
    ("epoch", -1), ("step", "3"), ("shuffle_rng", {"bit_generator": "PCG64"}),
    ("dropout_rngs", [[{"state": 1}]]), ("generators", {"dropout": 1}),
    ("partial", {"loss_sum": "x"}), ("history", {"loss": 3}),
])
def test_a_hostile_training_record_is_refused_at_load_time(valid_file, tmp_path, field, value):
    members = _members(valid_file)
    record = json.loads(np.load(io.BytesIO(members["training.npy"])).tobytes())
    record[field] = value
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.frombuffer(json.dumps(record).encode(), np.uint8))
    members["training.npy"] = buffer.getvalue()
    path = tmp_path / "bad.cnnlab"
    path.write_bytes(_rebuild(members))
    with pytest.raises(cnnlab.errors.ModelFileError, match="invalid training record"):
        cnnlab.models.load_model(path)


def test_atheris_coverage_guided_fuzzing_finds_no_crash(valid_file, tmp_path):
    """libFuzzer mutates a real checkpoint for 20,000 runs, guided by coverage of cnnlab's code."""
    pytest.importorskip("atheris")      # a test extra on Linux x86_64, where its wheels exist
    import subprocess
    import sys
    from pathlib import Path
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "checkpoint.cnnlab").write_bytes(valid_file)
    v1 = Path(__file__).parent.parent / "data" / "v1_model.cnnlab"      # the format before graphs
    (corpus / "v1.cnnlab").write_bytes(v1.read_bytes())
    harness = Path(__file__).with_name("fuzz_model_file.py")
    result = subprocess.run([sys.executable, str(harness), str(corpus), "-runs=20000",
                             "-max_len=16384", "-rss_limit_mb=2048", "-timeout=10", "-seed=1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 20000 runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
