"""The contracts between the floors above training, each of which was once hidden: what the fit
loop may call on a model, how Sequential is built, where data, weights and commands live."""

import argparse
import ast
import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab import zoo
from cnnlab.errors import ConfigError

PACKAGE = Path(cnnlab.__file__).parent


def _private_model_accesses(path: Path) -> list[str]:
    """``model._name`` (and ``self.model._name``) read or written anywhere in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name == "model":
                found.append(f"{path.name}:{node.lineno} model.{node.attr}")
    return found


def test_the_fit_loop_uses_only_the_models_public_step_api():
    """FitLoop called five private Trainer members (``_train_step``, ``_logs``,
    ``_update_metrics``, ``_progress`` twice); now ``train_batch``, ``epoch_logs``,
    ``update_metrics`` and ``fit_position``, which the Trainer documents as the loop's API."""
    for module in ("loop.py", "progress.py"):
        assert _private_model_accesses(PACKAGE / "training" / module) == []
    for name in ("train_batch", "epoch_logs", "update_metrics"):
        assert inspect.getdoc(getattr(cnnlab.Model, name)), name


def test_sequential_is_built_by_functionals_own_init(monkeypatch):
    """Sequential's ``__init__`` skipped ``Functional.__init__`` and set its fields by hand, so a
    field added there was missing on every Sequential model."""
    from cnnlab.graph.functional import Functional
    calls = []
    original = Functional.__init__

    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Functional, "__init__", spy)
    model = cnnlab.Sequential([cnnlab.layers.Input((4, 4, 1)), cnnlab.layers.Flatten(),
                               cnnlab.layers.Dense(2)], name="chain")
    assert calls == ["Sequential"]
    assert model.built and model.trainable and model.name == "chain"
    assert model.predict(np.zeros((3, 4, 4, 1), np.float32), verbose=0).shape == (3, 2)
    empty = cnnlab.Sequential()
    assert not empty.built and empty.layers == [] and empty.inputs == []


def test_keras_names_for_data_are_the_data_packages_own_modules():
    """One home for data (``cnnlab.data``); Keras' names for its parts are the same objects, so
    patching or extending one is patching the other."""
    import cnnlab.datasets.mnist

    from cnnlab import data, preprocess, utils
    assert cnnlab.datasets.mnist is data.datasets.mnist
    assert cnnlab.datasets.load is data.datasets.load
    assert preprocess.open_image is data.open_image
    assert utils.image_dataset_from_directory is data.image_dataset_from_directory
    assert importlib.import_module("cnnlab.datasets.cifar10") is data.datasets.cifar10


def test_weights_are_named_the_same_way_by_get_and_by_a_transfer_run(tmp_path):
    """``zoo.get(weights=)`` and ``--pretrained`` each had a resolver; ``get`` did not take
    ``'auto'``, and the two said different things about a missing file. Both use
    ``zoo.stored_weights`` now."""
    from cnnlab.runs import run_settings
    auto = zoo.get("article", weights="auto")
    digits = zoo.find("digits")
    for a, b in zip(auto.get_weights(), digits.get_weights()):
        np.testing.assert_array_equal(a, b)
    settings = run_settings(pretrained="auto", model="article")
    assert (settings["model"], settings["pretrained"]) == ("article", "digits")
    path = tmp_path / "mine.cnnlab"
    digits.save(path)
    assert run_settings(pretrained=str(path))["pretrained"] == str(path.resolve())
    assert zoo.get("article", weights=str(path)).count_params() == digits.count_params()
    missing = str(tmp_path / "nope.cnnlab")
    with pytest.raises(ConfigError, match="No file") as from_get:
        zoo.get("article", weights=missing)
    with pytest.raises(ConfigError, match="No file") as from_run:
        run_settings(pretrained=missing)
    assert str(from_run.value) == f"--pretrained: {from_get.value}"


def test_each_command_group_adds_its_own_commands():
    """The parser was split over cli.py and cli_tasks.py, with a helper passed in to dodge an
    import cycle. Each module of ``cnnlab.cli`` now adds the parsers of its own commands."""
    from cnnlab import cli
    seen = set()
    for group in cli.GROUPS:
        commands = argparse.ArgumentParser().add_subparsers()
        group.add_commands(commands)
        for name, parser in commands.choices.items():
            assert parser.get_default("func").__module__ == group.__name__, name
            seen.add(name)
    every = cli.build_parser()._subparsers._group_actions[0].choices
    assert seen == set(every)
