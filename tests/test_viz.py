"""The pictures hold the data: grids are the activations, attributions are real gradients
(finite differences), Grad-CAM finds the one region that matters, and every plot is drawn."""

import numpy as np
import pytest
from reference import finite_difference_grad

import cnnlab
from cnnlab import layers, viz
from cnnlab.layers.base import CallContext
from cnnlab.viz.attribution import _class_gradient, as_batch
from cnnlab.viz.grids import grid_shape, tile_position


def small_model(seed=0, dtype="float64"):
    cnnlab.config.set_floatx(dtype)
    cnnlab.utils.set_random_seed(seed)
    return cnnlab.Sequential([
        layers.Input((10, 9, 2)), layers.Conv2D(3, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(4, 2, padding="same", activation="relu"), layers.Flatten(),
        layers.Dropout(0.3), layers.Dense(5, activation="relu"), layers.Dense(3, activation="softmax")])


def test_feature_map_grid_pixels_are_the_min_max_scaled_activations():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((5, 7, 11))
    maps[:, :, 4] = 3.0                                         # a constant map shows as zeros
    grid = viz.feature_map_grid(maps)
    rows, cols = grid_shape(11)
    assert (rows, cols) == (3, 4) and grid.shape == (3 * 6 - 1, 4 * 8 - 1)
    for c in range(11):
        tile = grid[tile_position(c, (5, 7), 11)]
        expected = (maps[:, :, c] - maps[:, :, c].min()) / np.ptp(maps[:, :, c]) if c != 4 \
            else np.zeros((5, 7))
        np.testing.assert_allclose(tile, expected, atol=1e-12)
    assert np.isnan(grid[5, :]).all()                           # separator row
    assert viz.feature_map_grid(np.array([1.0, 3.0, 2.0])).tolist() == [[0.0, 1.0, 0.5]]


def test_feature_maps_are_each_layers_output():
    model = small_model()
    image = np.random.default_rng(1).random((10, 9, 2))
    maps = viz.feature_maps(model, image)
    assert [name for name, _ in maps] == [layer.name for layer in model.layers]
    x = image[None]
    for (_name, out), layer in zip(maps, model.layers):
        x = layer(x)                                            # each layer on its own, eagerly
        np.testing.assert_array_equal(out, x[0])


def logit_of_layer_output(model, index, activation, class_index):
    """Run the layers after ``index`` on a given output of layer ``index``; return one logit."""
    h = activation[None]
    for layer in model.layers[index + 1:-1]:
        h = layer(h)
    return model.layers[-1].forward(h, CallContext(), activation="linear")[0][0, class_index]


@pytest.mark.parametrize("index", [0, 2, 5])
def test_class_gradient_matches_finite_differences(index):
    model = small_model(seed=3)
    image = np.random.default_rng(2).random((10, 9, 2))
    tensor = model.layers[index].output
    tape, grads, _ = _class_gradient(model, as_batch(model, image), 1, wanted=[tensor])
    grad = grads.tensors[id(tensor)]
    activation = tape.values[id(tensor)][0].copy()
    # where a ReLU output is 0, max pooling may see ties and is not differentiable there
    # (central differences split the gradient between tied cells): compare where it is > 0
    differentiable = activation.reshape(-1) > 0
    flat, numeric, eps = activation.reshape(-1), [], 1e-6
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        up = logit_of_layer_output(model, index, activation, 1)
        flat[k] = saved - eps
        down = logit_of_layer_output(model, index, activation, 1)
        flat[k] = saved
        numeric.append((up - down) / (2 * eps))
    assert differentiable.sum() >= 3
    np.testing.assert_allclose(grad[0].reshape(-1)[differentiable],
                               np.array(numeric)[differentiable], rtol=1e-5, atol=1e-8)


def test_saliency_is_the_input_gradient():
    model = small_model(seed=4)
    image = np.random.default_rng(3).random((10, 9, 2))
    heat = viz.saliency(model, image, class_index=2)
    numeric = np.zeros(image.shape)
    for idx in np.ndindex(image.shape):
        bumped = image.copy()
        bumped[idx] += 1e-6
        dropped = image.copy()
        dropped[idx] -= 1e-6
        numeric[idx] = (logit_of_layer_output(model, -1, bumped, 2)
                        - logit_of_layer_output(model, -1, dropped, 2)) / 2e-6
    expected = np.abs(numeric).max(axis=-1)
    np.testing.assert_allclose(heat, expected / expected.max(), atol=1e-5)


def shapes_dataset(n, rng, size=20):
    """Class 1 iff a '+' cross is present; every image also has a square distractor, so only
    the cross's region decides. Returns images, labels and each cross's centre (or None).

    (The decisive object must differ in *kind* from the distractor: Grad-CAM weighs whole
    channels, so two identical squares would light up together wherever they are.)"""
    x = rng.normal(0, 0.05, (n, size, size, 1))
    y = rng.integers(0, 2, n)
    centres = []
    for i in range(n):
        square_right = rng.integers(0, 2)
        sr, sc = rng.integers(2, size - 6), rng.integers(0, 5) + (10 if square_right else 0) + 1
        x[i, sr:sr + 4, sc:sc + 4, 0] += 1
        if y[i]:
            cr, cc = rng.integers(3, size - 3), rng.integers(3, 7) + (0 if square_right else 10)
            x[i, cr - 2:cr + 3, cc, 0] += 1
            x[i, cr, cc - 2:cc + 3, 0] += 1
            centres.append((cr, cc))
        else:
            centres.append(None)
    return np.clip(x, -1, 2).astype(np.float32), y, centres


def test_grad_cam_peaks_in_the_only_region_that_matters():
    cnnlab.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y, _ = shapes_dataset(800, rng)
    model = cnnlab.Sequential([
        layers.Input((20, 20, 1)), layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(), layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Flatten(), layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=10, verbose=0)
    x_test, y_test, centres = shapes_dataset(60, rng)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.95
    hits = positives = 0
    for image, label, centre in zip(x_test, y_test, centres):
        if label == 1:
            heat = viz.grad_cam(model, image, class_index=1)
            assert heat.shape == (20, 20) and heat.min() >= 0 and heat.max() == pytest.approx(1)
            row, col = np.unravel_index(heat.argmax(), heat.shape)
            positives += 1
            hits += abs(row - centre[0]) <= 3 and abs(col - centre[1]) <= 3
    assert hits >= 0.9 * positives


def test_every_plot_is_drawn_and_saved(tmp_path):
    pytest.importorskip("matplotlib")
    model = cnnlab.zoo.get("lenet5")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
    x = cnnlab.datasets.as_model_input(x[:256])
    history = model.fit(x, y[:256], epochs=2, batch_size=64, validation_split=0.25, verbose=0)
    matrix = viz.confusion_matrix(model, x, y[:256])
    predicted = model.predict(x, verbose=0).argmax(axis=1)
    assert matrix.sum() == 256 and np.trace(matrix) == (predicted == y[:256]).sum()
    for i, true, guess, confidence in viz.misclassified(model, x, y[:256]):
        assert true == y[i] != guess == predicted[i] and 0 < confidence <= 1
    drawings = {
        "maps": lambda p: viz.plot_feature_maps(model, x[0], p),
        "filters": lambda p: viz.plot_filters(model, path=p),
        "history": lambda p: viz.plot_history(history, p),
        "confusion": lambda p: viz.plot_confusion_matrix(matrix, path=p),
        "mistakes": lambda p: viz.plot_misclassified(model, x, y[:256], path=p),
        "gradcam": lambda p: viz.plot_grad_cam(model, list(x[:4]), path=p),
    }
    from PIL import Image
    for name, draw in drawings.items():
        path = tmp_path / f"{name}.png"
        draw(path)
        with Image.open(path) as picture:
            assert picture.width > 200 and picture.height > 100, name
            assert len(np.unique(np.asarray(picture.convert("L")))) > 10, name   # not blank


def residual_graph(seed=0):
    cnnlab.config.set_floatx("float64")
    cnnlab.utils.set_random_seed(seed)
    inputs = cnnlab.Input((9, 8, 2))
    a = layers.Conv2D(3, 3, padding="same", activation="relu", name="branch")(inputs)
    b = layers.Conv2D(3, 1, name="shortcut")(inputs)
    joined = layers.Add(name="join")([a, b])
    h = layers.GlobalAveragePooling2D(name="gap")(layers.Conv2D(4, 3, activation="tanh",
                                                                name="top")(joined))
    return cnnlab.Model(inputs, layers.Dense(3, activation="softmax", name="head")(h))


def test_feature_maps_of_a_graph_are_every_node_in_topological_order():
    model = residual_graph()
    image = np.random.default_rng(5).random((9, 8, 2))
    maps = dict(viz.feature_maps(model, image))
    assert list(maps) == [node.layer.name for node in model.nodes]
    assert list(maps)[2] == "join"
    x = image[None]
    branch, shortcut = model.get_layer("branch")(x), model.get_layer("shortcut")(x)
    np.testing.assert_array_equal(maps["branch"], branch[0])            # each layer, eagerly
    np.testing.assert_array_equal(maps["join"], (branch + shortcut)[0])


def test_grad_cam_gradient_at_a_merge_of_a_graph_matches_finite_differences():
    model = residual_graph(seed=1)
    image = np.random.default_rng(6).random((9, 8, 2))
    tensor = model.get_layer("join").output
    tape, grads, _ = _class_gradient(model, as_batch(model, image), 2, wanted=[tensor])
    joined = tape.values[id(tensor)][0].copy()

    def logit():
        h = model.get_layer("gap")(model.get_layer("top")(joined[None]))
        return model.get_layer("head").forward(h, CallContext(), activation="linear")[0][0, 2]

    picks, numeric = finite_difference_grad(logit, joined, max_entries=40)
    np.testing.assert_allclose(grads.tensors[id(tensor)][0].reshape(-1)[picks], numeric,
                               rtol=1e-5, atol=1e-8)
    heat = viz.grad_cam(model, image, layer="join")
    assert heat.shape == (9, 8) and heat.max() == pytest.approx(1)
    assert viz.grad_cam(model, image).shape == (9, 8)                   # the last conv: 'top'


def test_the_mistakes_gallery_counts_honestly_and_keeps_titles_clear():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    model = cnnlab.Sequential([layers.Input((12, 12, 1)), layers.Conv2D(2, 3), layers.Flatten(),
                               layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(0)
    x, y = rng.random((60, 12, 12, 1)).astype(np.float32), rng.integers(0, 3, 60)
    wrong = len(viz.misclassified(model, x, y, limit=None))
    assert wrong > 16                                    # an untrained model errs a lot
    fig = viz.plot_misclassified(model, x, y, limit=16)
    assert fig._suptitle.get_text() == f"16 of {wrong} misclassified images shown"
    FigureCanvasAgg(fig).draw()
    grid = [ax for ax in fig.axes]
    for upper, lower in zip(grid[:8], grid[8:16]):       # a title stays below the row above
        assert lower.title.get_window_extent().y1 <= upper.get_window_extent().y0 + 1


def test_feature_maps_fill_the_reports_width():
    from PIL import Image
    model = cnnlab.zoo.get("lenet5")
    (x, _), _ = cnnlab.datasets.mnist_sample.load_data()
    buffer = __import__("io").BytesIO()
    viz.plot_feature_maps(model, cnnlab.datasets.as_model_input(x[:1])[0]).savefig(
        buffer, format="png", dpi=100, bbox_inches="tight")
    assert Image.open(buffer).width >= 900               # the report's column is 1,000 px


def _small_classifier(seed=0, pool=None):
    cnnlab.utils.set_random_seed(seed)
    model = cnnlab.Sequential([cnnlab.layers.Input((10, 9, 2)),
                               cnnlab.layers.Conv2D(4, 3, activation="tanh"),
                               (pool or cnnlab.layers.MaxPooling2D)(2),
                               cnnlab.layers.Flatten(),
                               cnnlab.layers.Dense(3, activation="softmax")])
    return model


def test_integrated_gradients_add_up_to_the_logit_difference_better_with_more_steps():
    """Completeness (Sundararajan et al., 2017): sum of attributions = f(x) - f(baseline), to
    within the midpoint rule's error: like 1 / steps^2 on a smooth network (tanh, average
    pooling), less regularly where max pooling switches along the path."""
    from cnnlab.viz.attribution import class_logits, integrated_gradients
    cnnlab.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    x, base = rng.random((10, 9, 2)), 0.2 * rng.random((10, 9, 2))
    target = 1
    for model, steps, shrink in ((_small_classifier(pool=cnnlab.layers.AveragePooling2D),
                                  (4, 16, 64), 10), (_small_classifier(), (4, 1024), 100)):
        gap = float(class_logits(model, x[None], target)[0]
                    - class_logits(model, base[None], target)[0])
        errors = [abs(float(integrated_gradients(model, x, target, base, steps=n).sum()) - gap)
                  for n in steps]
        assert all(b * shrink < a for a, b in zip(errors, errors[1:])), errors
        assert errors[-1] < 1e-3 * abs(gap), (errors, gap)
    model = _small_classifier()
    # and one step is the gradient at the midpoint times (x - x'), by the definition
    from cnnlab.viz.attribution import as_batch
    mid = as_batch(model, (x + base) / 2)
    outputs, tape = model.run(mid, keep_cache=True, logits=True)
    onehot = np.zeros_like(outputs[0])
    onehot[0, target] = 1
    grad = model.backward_from(tape, [onehot], want_inputs=True).inputs[0][0]
    np.testing.assert_allclose(integrated_gradients(model, x, target, base, steps=1),
                               (x - base) * grad, rtol=1e-12)


def test_occlusion_agrees_with_a_brute_force_loop():
    from cnnlab.viz.attribution import class_logits, occlusion
    cnnlab.config.set_floatx("float64")
    model = _small_classifier(1)
    x = np.random.default_rng(2).random((10, 9, 2))
    heat = occlusion(model, x, class_index=2, patch=3, stride=2, fill=0.5, batch_size=5)
    reference = class_logits(model, x[None], 2)[0]
    total, count = np.zeros((10, 9)), np.zeros((10, 9))
    for top in [0, 2, 4, 6, 7]:                      # every 2 pixels, and the last row covered
        for left in [0, 2, 4, 6]:
            hidden = x.copy()
            hidden[top:top + 3, left:left + 3] = 0.5
            total[top:top + 3, left:left + 3] += reference - class_logits(model, hidden[None],
                                                                          2)[0]
            count[top:top + 3, left:left + 3] += 1
    np.testing.assert_allclose(heat, total / count, rtol=1e-12, atol=1e-12)
    with pytest.raises(cnnlab.errors.ConfigError, match="patch must be"):
        occlusion(model, x, patch=20)


def _odd_geometry_model():
    """Stride 2 with 'same' padding, then a dilated conv, then average pooling: every way a
    receptive field can be miscounted. Linear (no dead ReLUs), float64."""
    cnnlab.config.set_floatx("float64")
    cnnlab.utils.set_random_seed(7)
    return cnnlab.Sequential([cnnlab.layers.Input((23, 19, 2)),
                              cnnlab.layers.Conv2D(3, 3, strides=2, padding="same", name="a"),
                              cnnlab.layers.Conv2D(4, 3, dilation_rate=2, name="b"),
                              cnnlab.layers.AveragePooling2D(2, name="c"),
                              cnnlab.layers.Conv2D(2, 2, padding="same", name="d")])


@pytest.mark.parametrize("layer", ["a", "b", "c", "d"])
def test_a_cells_crop_is_exactly_the_pixels_its_activation_depends_on(layer):
    """The crop (receptive field, clipped) equals the bounding box of the input pixels with a
    non-zero gradient: checked against the model's own dependence, not the formula."""
    from cnnlab.viz.attribution import receptive_field, target_node
    from cnnlab.viz.patches import cell_box
    model = _odd_geometry_model()
    x = np.random.default_rng(3).random((1, 23, 19, 2))
    node = target_node(model, layer)
    tensor = node.outputs[0]
    h, w = tensor.shape[1:3]
    field = receptive_field(node)
    for row, col in {(0, 0), (h - 1, w - 1), (h // 2, w // 3), (0, w - 1)}:
        sensitivity = _input_gradient_of_cell(model, x, tensor, row, col)
        rows, cols = np.nonzero(np.abs(sensitivity).sum(axis=-1) > 1e-12)
        assert cell_box(field, row, col, 23, 19) == (rows.min(), cols.min(), rows.max() + 1,
                                                     cols.max() + 1)


def _input_gradient_of_cell(model, x, tensor, row, col):
    """How activation (row, col, filter 1) changes when each input value moves by 1, from a
    sub-model's forward passes (an independent route: no backward pass, no formula)."""
    sub = cnnlab.Model(model.inputs[0], tensor)
    base = sub.predict(x, verbose=0)[0, row, col, 1]
    shifted = np.repeat(x.reshape(1, -1), x[0].size, axis=0)
    shifted[np.arange(x[0].size), np.arange(x[0].size)] += 1.0
    values = sub.predict(shifted.reshape(-1, *x.shape[1:]), verbose=0)[:, row, col, 1]
    return (values - base).reshape(x.shape[1:])


def test_top_patches_are_the_largest_activations_by_brute_force():
    from cnnlab.viz.patches import top_patches
    model = _odd_geometry_model()
    images = np.random.default_rng(4).random((13, 23, 19, 2))
    found = top_patches(model, "b", images, k=5, batch_size=4, one_per_image=False)
    distinct = top_patches(model, "b", images, k=5, batch_size=4)
    maps = cnnlab.Model(model.inputs[0], model.get_layer("b").output).predict(images, verbose=0)
    for f, patches in found.items():
        values = np.sort(maps[..., f].reshape(-1))[::-1][:5]
        np.testing.assert_allclose([p.activation for p in patches], values, rtol=1e-12)
        # one per image: the 5 images whose strongest cell is strongest, each at that cell
        per_image = maps[..., f].reshape(len(images), -1).max(axis=1)
        order = np.argsort(-per_image, kind="stable")[:5]
        assert [p.image for p in distinct[f]] == order.tolist()
        np.testing.assert_allclose([p.activation for p in distinct[f]], per_image[order],
                                   rtol=1e-12)
        for p in patches + distinct[f]:
            assert maps[p.image, p.row, p.col, f] == p.activation
            top, left, bottom, right = p.box
            np.testing.assert_array_equal(p.pixels, images[p.image, top:bottom, left:right])


def test_viz_sees_the_layers_of_a_nested_backbone():
    """A --pretrained model nests its backbone: filters, Grad-CAM and the report see the
    backbone's conv layers, and Grad-CAM equals that of the same layers built flat by hand."""
    from cnnlab.viz.attribution import grad_cam
    from cnnlab.viz.plots import plot_filters
    cnnlab.config.set_floatx("float64")
    cnnlab.utils.set_random_seed(2)
    conv1, conv2 = cnnlab.layers.Conv2D(4, 3, activation="relu"), cnnlab.layers.Conv2D(5, 3)
    pool, dense = cnnlab.layers.MaxPooling2D(2), cnnlab.layers.Dense(3, activation="softmax")
    inner = cnnlab.Input((12, 12, 1))
    backbone = cnnlab.Model(inner, conv2(pool(conv1(inner))), name="backbone")
    inputs = cnnlab.Input((12, 12, 1))
    flat_head = cnnlab.layers.Flatten()
    nested = cnnlab.Model(inputs, dense(flat_head(backbone(inputs, training=False))))
    same = cnnlab.Input((12, 12, 1))                    # the same layers, called flat by hand
    by_hand = cnnlab.Model(same, dense(flat_head(conv2(pool(conv1(same))))))
    image = np.random.default_rng(0).random((12, 12, 1))
    np.testing.assert_allclose(grad_cam(nested, image), grad_cam(by_hand, image), atol=1e-12)
    figure = plot_filters(nested)                        # the backbone's first conv
    assert figure.axes[0].get_title() == f"{conv1.name}: 4 filters of 3x3"
