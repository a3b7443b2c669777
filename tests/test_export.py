"""The path out: ONNX under onnxruntime, PyTorch both ways, Keras .weights.h5 in. Each
converted model gives cnnlab's outputs within 1e-5 (float32)."""

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import cnnlab
from cnnlab import layers
from cnnlab.cli import main
from cnnlab.errors import ConfigError, ModelFileError
from cnnlab.export import from_torch, load_keras_weights, to_onnx, to_torch


def every_layer_type():
    """Each layer type cnnlab has, with asymmetric 'same' padding, dilation and strides."""
    return cnnlab.Sequential([
        layers.Input((17, 16, 3)),
        layers.Conv2D(6, 4, strides=2, padding="same", activation="relu"),
        layers.Conv2D(5, 3, dilation_rate=2, padding=((1, 0), (2, 1)), use_bias=False),
        layers.ReLU(),
        layers.MaxPooling2D(3, strides=1, padding="same"),
        layers.AveragePooling2D(2, padding="same"),
        layers.Activation("tanh"),
        layers.Conv2D(8, 1, activation="sigmoid"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(7, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(4),
        layers.Softmax(),
    ])


MODELS = {"article": lambda: cnnlab.zoo.get("article"), "lenet5": lambda: cnnlab.zoo.get("lenet5"),
          "every_layer_type": every_layer_type,
          "flatten_head": lambda: cnnlab.Sequential([
              layers.Input((9, 8, 2)), layers.Conv2D(3, 3, activation="relu"),
              layers.MaxPooling2D(), layers.Flatten(), layers.Dense(5, activation="softmax")])}


def inputs_for(model, n=6):
    return np.random.default_rng(0).random((n, *model.input_shape), dtype=np.float32)


def randomise_biases(model):
    rng = np.random.default_rng(1)
    model.set_weights([w + (0.1 * rng.standard_normal(w.shape) if w.ndim == 1 else 0)
                       for w in model.get_weights()])


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_onnx_export_runs_in_onnxruntime_with_cnnlab_outputs(name, layout, tmp_path):
    model = MODELS[name]()
    randomise_biases(model)
    x = inputs_for(model)
    path = tmp_path / "model.onnx"
    proto = to_onnx(model, path, input_layout=layout)
    onnx.checker.check_model(onnx.load(path))
    assert proto.opset_import[0].version >= 13
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    out = session.run(None, {"input": feed})[0]
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_unsupported_layer_is_named(tmp_path):
    class Doubler(layers.Layer):
        def call(self, x, ctx):
            return 2 * x, None

    model = cnnlab.Sequential([layers.Input((4, 4, 1)), Doubler(name="doubler"), layers.Flatten()])
    with pytest.raises(ConfigError, match="layer 'doubler' of type Doubler"):
        to_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="'doubler'"):
        to_torch(model)


def test_model_export_and_cli(tmp_path, capsys):
    model = cnnlab.zoo.get("lenet5")
    model.export(tmp_path / "a.onnx")
    model.save(tmp_path / "m.cnnlab")
    assert main(["export", str(tmp_path / "m.cnnlab"), str(tmp_path / "b.onnx"), "--nchw"]) == 0
    assert "NCHW" in capsys.readouterr().out
    assert ort.InferenceSession(str(tmp_path / "b.onnx")).get_inputs()[0].shape[1:] == [1, 28, 28]
    with pytest.raises(ConfigError, match="format='onnx'"):
        model.export(tmp_path / "c.tflite", format="tflite")


@pytest.mark.parametrize("name", list(MODELS))
def test_to_torch_gives_cnnlab_outputs(name):
    model = MODELS[name]()
    randomise_biases(model)
    x = inputs_for(model)
    net = to_torch(model)
    with torch.no_grad():
        out = net(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5, rtol=0)
    nhwc = to_torch(model, input_layout="NHWC")
    with torch.no_grad():
        np.testing.assert_allclose(nhwc(torch.tensor(x)).numpy(), out, atol=1e-6)


def test_from_torch_gives_torch_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, dilation=1), nn.Tanh()), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.Sigmoid(), nn.Dropout(0.2), nn.Linear(12, 4),
        nn.Softmax(dim=1)).eval()
    model = from_torch(net, (20, 20, 3))
    x = np.random.default_rng(2).random((5, 20, 20, 3), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5, rtol=0)
    # and back again
    with torch.no_grad():
        again = to_torch(model)(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    np.testing.assert_allclose(again.numpy(), expected, atol=1e-5, rtol=0)


def test_from_torch_refuses_what_it_cannot_express():
    with pytest.raises(ConfigError, match="Upsample"):
        from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2,
                                                                 mode="bilinear")), (8, 8, 1))
    with pytest.raises(ConfigError, match="groups"):
        from_torch(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), (8, 8, 4))


def write_keras_h5(path, groups):
    """A file in Keras 3's .weights.h5 layout, written with h5py alone (no Keras needed):
    layers/<name>/vars/<i>, plus empty groups for weightless layers, as Keras writes them."""
    with h5py.File(path, "w") as handle:
        top = handle.create_group("layers")
        for name, arrays in groups.items():
            variables = top.create_group(name).create_group("vars")
            variables.attrs["name"] = name
            for i, array in enumerate(arrays):
                variables.create_dataset(str(i), data=array)
        handle.create_group("vars").attrs["name"] = "sequential"


def test_keras_weights_load_by_keras_automatic_names(tmp_path):
    source = cnnlab.zoo.get("article")
    randomise_biases(source)
    weights = source.get_weights()
    groups = {"conv2d": weights[0:2], "max_pooling2d": [], "conv2d_1": weights[2:4],
              "max_pooling2d_1": [], "flatten": [], "dense": weights[4:6],
              "dense_1": weights[6:8]}
    path = tmp_path / "keras.weights.h5"
    write_keras_h5(path, groups)
    x = inputs_for(source)
    by_order = cnnlab.zoo.get("article")
    for i, layer in enumerate(by_order.layers):        # names the file does not know
        layer.name = f"mine_{i}"
    load_keras_weights(by_order, path)                 # matched by Keras' creation order
    np.testing.assert_array_equal(by_order.predict(x, verbose=0), source.predict(x, verbose=0))
    by_name = cnnlab.zoo.get("article")
    for layer, name in zip(by_name.layers, groups):    # the same names as in the file
        layer.name = name
    load_keras_weights(by_name, path)
    np.testing.assert_array_equal(by_name.predict(x, verbose=0), source.predict(x, verbose=0))


def test_keras_weights_with_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "bad.weights.h5"
    write_keras_h5(path, {"conv2d": [np.zeros((3, 3, 1, 32), np.float32), np.zeros(32)]})
    with pytest.raises(ModelFileError, match="needs"):
        load_keras_weights(cnnlab.zoo.get("article"), path)
    (tmp_path / "not.h5").write_text("hello")
    with pytest.raises(ModelFileError, match="Cannot read"):
        load_keras_weights(cnnlab.zoo.get("article"), tmp_path / "not.h5")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_to_torch_then_from_torch_is_the_same_model(name, layout):
    model = MODELS[name]()
    randomise_biases(model)
    back = from_torch(to_torch(model, input_layout=layout), model.input_shape)
    x = inputs_for(model)
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5, rtol=0)


def resnet_with_batch_norm():
    """A small ResNet: a stem, two basic blocks (one with a strided 1x1 projection), every conv
    followed by BatchNormalization, a nested model as a block, and an Inception-style join."""
    def block(filters, strides, name):
        inputs = cnnlab.Input((8, 8, 4))
        h = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(inputs)
        h = layers.ReLU()(layers.BatchNormalization()(h))
        h = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same")(h))
        shortcut = inputs
        if strides != 1 or filters != 4:
            shortcut = layers.BatchNormalization()(
                layers.Conv2D(filters, 1, strides=strides, use_bias=False)(inputs))
        return cnnlab.Model(inputs, layers.ReLU()(layers.Add()([h, shortcut])), name=name)

    inputs = cnnlab.Input((8, 8, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(inputs)))
    x = block(4, 1, "block1")(x)
    x = block(6, 2, "block2")(x)
    x = layers.Concatenate()([x, layers.MaxPooling2D(3, strides=1, padding="same")(
        layers.Conv2D(2, 1)(x))])
    return cnnlab.Model(inputs, layers.Dense(5, activation="softmax")(
        layers.GlobalAveragePooling2D()(x)))


def trained_resnet():
    cnnlab.utils.set_random_seed(0)
    model = resnet_with_batch_norm()
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 8, 8, 3), dtype=np.float32), rng.integers(0, 5, 64), epochs=2,
              verbose=0)                           # moving statistics away from 0 and 1
    return model, rng.random((6, 8, 8, 3), dtype=np.float32)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_a_resnet_with_batch_norm_exports_to_onnx(layout, tmp_path):
    model, x = trained_resnet()
    moving = [v.value for v in model.variables if v.name == "moving_mean"]
    assert moving and all(np.abs(m).max() > 0.01 for m in moving)
    to_onnx(model, tmp_path / "resnet.onnx", input_layout=layout)
    session = ort.InferenceSession(str(tmp_path / "resnet.onnx"),
                                   providers=["CPUExecutionProvider"])
    feed = x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    out = session.run(None, {"input": feed})[0]
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5, rtol=0)
    ops = {node.op_type for node in onnx.load(tmp_path / "resnet.onnx").graph.node}
    assert {"BatchNormalization", "Sum", "Concat"} <= ops


def test_a_resnet_with_batch_norm_converts_to_torch():
    model, x = trained_resnet()
    net = to_torch(model)
    with torch.no_grad():
        out = net(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_two_input_two_output_graphs_export():
    image, meta = cnnlab.Input((6, 6, 2), name="image"), cnnlab.Input((3,), name="meta")
    h = layers.Flatten()(layers.Conv2D(3, 3, activation="tanh")(image))
    joined = layers.Concatenate()([h, layers.Dense(4, activation="relu")(meta)])
    model = cnnlab.Model([image, meta], [layers.Dense(3, activation="softmax", name="cls")(joined),
                                         layers.Dense(2, name="reg")(layers.Subtract()([
                                             layers.Dense(5)(joined), layers.Dense(5)(joined)]))])
    rng = np.random.default_rng(1)
    xs = [rng.random((4, 6, 6, 2), dtype=np.float32), rng.random((4, 3), dtype=np.float32)]
    expected = model.predict(xs, verbose=0)
    session = ort.InferenceSession(to_onnx(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["cls", "reg"], {"image": xs[0], "meta": xs[1]})
    with torch.no_grad():
        torch_out = to_torch(model, input_layout="NHWC")(*[torch.tensor(a) for a in xs])
    for ours, onnx_out, torch_result in zip(expected, got, torch_out):
        np.testing.assert_allclose(onnx_out, ours, atol=1e-5, rtol=0)
        np.testing.assert_allclose(torch_result.numpy(), ours, atol=1e-5, rtol=0)


class TorchResidual(nn.Module):
    """What people write in torch: a residual block with BatchNorm, a concatenation, F.relu."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.side = nn.Conv2d(3, 2, 1)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.stem(x)))
        h = torch.relu(self.bn2(self.conv(h)) + h)
        h = torch.cat([h, self.side(x)], dim=1)
        return self.head(torch.flatten(F.max_pool2d(h, 2), 1))


def test_from_torch_traces_a_residual_module_with_batch_norm():
    torch.manual_seed(0)
    net = TorchResidual()
    with torch.no_grad():                          # trained-looking statistics
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    net.eval()
    model = from_torch(net, (8, 8, 3))
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"BatchNormalization", "Add", "Concatenate"} <= kinds
    x = np.random.default_rng(3).random((4, 8, 8, 3), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5, rtol=0)


def test_a_resnet_goes_to_torch_and_back():
    model, x = trained_resnet()
    back = from_torch(to_torch(model), model.input_shape)
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5, rtol=0)


def test_keras_weights_load_into_a_functional_model_by_layer_name(tmp_path):
    def flat_resnet():
        inputs = cnnlab.Input((8, 8, 3))
        h = layers.BatchNormalization(name="bn")(layers.Conv2D(4, 3, padding="same",
                                                                name="conv")(inputs))
        h = layers.Add(name="add")([h, layers.Conv2D(4, 1, name="shortcut")(inputs)])
        return cnnlab.Model(inputs, layers.Dense(3, name="head")(
            layers.GlobalAveragePooling2D(name="gap")(h)))

    source = flat_resnet()
    rng = np.random.default_rng(4)
    source.set_weights([w + rng.uniform(0.1, 0.5, w.shape) for w in source.get_weights()])
    path = tmp_path / "functional.weights.h5"
    # HDF5 lists groups alphabetically: the file's order is not the model's
    write_keras_h5(path, {layer.name: layer.get_weights() for layer in source.layers})
    target = flat_resnet()
    load_keras_weights(target, path)
    x = inputs_for(source)
    np.testing.assert_array_equal(target.predict(x, verbose=0), source.predict(x, verbose=0))


def modern_layers_model():
    """Every layer and activation added for modern CNNs, in one graph."""
    inputs = cnnlab.Input((12, 11, 3))
    x = layers.RandomCrop(10, 9, seed=1)(layers.ZeroPadding2D(((1, 2), (0, 1)))(inputs))
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                               activation="hard_sigmoid")(x)
    x = layers.SeparableConv2D(5, 3, padding="same", dilation_rate=2, activation="silu")(x)
    x = layers.LeakyReLU(0.1)(layers.UpSampling2D((2, 1))(x))
    x = layers.ELU(0.5)(layers.Cropping2D(((1, 0), (2, 1)))(x))
    x = layers.Conv2D(4, 1, activation="leaky_relu")(x)
    x = layers.Conv2D(4, 1, activation="elu")(x)
    x = layers.Conv2D(4, 1, activation="gelu")(x)
    x = layers.Conv2D(4, 1, activation="gelu_tanh")(x)
    pooled = layers.Concatenate()([layers.GlobalMaxPooling2D()(x),
                                   layers.GlobalAveragePooling2D()(x)])
    return cnnlab.Model(inputs, layers.Dense(3, activation="softmax")(pooled))


def test_modern_layers_export_to_onnx_and_torch_and_back(tmp_path):
    cnnlab.utils.set_random_seed(2)
    model = modern_layers_model()
    randomise_biases(model)
    x = inputs_for(model)
    expected = model.predict(x, verbose=0)
    session = ort.InferenceSession(to_onnx(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-5, rtol=0)
    net = to_torch(model, input_layout="NHWC")
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.tensor(x)).numpy(), expected, atol=1e-5, rtol=0)
    back = from_torch(net, model.input_shape)
    kinds = {type(layer).__name__ for layer in back.layers}
    assert {"DepthwiseConv2D", "UpSampling2D", "Cropping2D", "GlobalMaxPooling2D"} <= kinds
    np.testing.assert_allclose(back.predict(x, verbose=0), expected, atol=1e-5, rtol=0)
