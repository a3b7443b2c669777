"""The sequel's pictures hold what they claim: feature visualisation raises its filter far above
real and random inputs and recovers a known pattern; the warp it trains through is the exact
adjoint (against PyTorch); PCA equals an independent PCA; the training timeline's first frame
is the initial weights and recording it changes no weight; the report has "How it learned"."""

import numpy as np
import pytest
from patterns import best_window_correlation, pattern_detector

import cnnlab
from cnnlab import datasets, zoo
from cnnlab.engine.augment import affine_sample_backward, affine_sample_forward
from cnnlab.viz import embedding, features, inside, timeline
from cnnlab.viz.features import _random_warps


@pytest.fixture(scope="module")
def digits():
    """The shipped digits model and 500 held-out digits it never trained on."""
    model = zoo.load("digits")
    _, (x, y) = datasets.load("mnist_sample")
    return model, datasets.as_model_input(x[:500]).astype(model.dtype), y[:500]


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_feature_visualisation_raises_each_filter_far_above_real_and_random_inputs(digits, layer):
    model, x, _ = digits
    filters = list(range(16))
    where = "centre" if layer == "conv1" else "mean"
    images = features.visualise(model, layer, filters=filters, where=where)
    reached = features.objective(model, layer, images, filters, where=where)
    real = np.stack([features.objective(model, layer, x, [f], where=where) for f in filters])
    noise = np.random.default_rng(1).uniform(0, 1, (len(filters), 28, 28, 1))
    random = features.objective(model, layer, noise, filters, where=where)
    alive = real.max(axis=1) > 0                       # a filter no digit excites is dead
    assert alive.sum() >= 10
    factor_real = reached[alive] / real[alive].mean(axis=1)
    factor_random = reached[alive] / np.maximum(random[alive], 1e-3)
    assert np.median(factor_real) > 3 and factor_real.min() > 1.5
    assert np.median(factor_random) > 5
    # and above the best of the 500 real digits for most filters
    assert np.mean(reached[alive] > real[alive].max(axis=1)) >= 0.75
    assert images.min() >= 0 and images.max() <= 1                      # the input range


@pytest.mark.parametrize("size,n", [(15, 15), (27, 9)])
def test_the_visualisation_of_a_filter_built_to_detect_a_pattern_shows_that_pattern(size, n):
    """One cell seeing the whole image (15, 15), and a filter slid over a larger one (27, 9):
    each visualisation matches its own pattern best, and well."""
    model, patterns = pattern_detector(size, n)
    images = features.visualise(model, "detector", filters=range(3))[..., 0]
    for k, image in enumerate(images):
        scores = [best_window_correlation(image, p) for p in patterns]
        assert scores[k] >= 0.55, scores
        assert scores[k] == max(scores), (k, scores)


def test_the_warp_feature_visualisation_trains_through_matches_pytorch_and_its_adjoint():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 12, 10, 2))
    matrices = _random_warps(rng, 3, 12, 10, jitter=2, rotate=5.0, scale=(0.95, 1.05))
    out, cache = affine_sample_forward(x, matrices, fill_mode="nearest")
    # PyTorch's grid_sample reads at normalised (x, y) = 2 * (col, row) / (size - 1) - 1
    rows, cols = np.meshgrid(np.arange(12.0), np.arange(10.0), indexing="ij")
    source = np.einsum("nkl,lhw->nkhw", matrices, np.stack([rows, cols, np.ones_like(rows)]))
    grid = np.stack([2 * source[:, 1] / 9 - 1, 2 * source[:, 0] / 11 - 1], axis=-1)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.grid_sample(xt, torch.tensor(grid), mode="bilinear",
                                         padding_mode="border", align_corners=True)
    np.testing.assert_allclose(out, yt.detach().numpy().transpose(0, 2, 3, 1), atol=1e-12)
    g = rng.standard_normal(out.shape)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(affine_sample_backward(g, cache),
                               xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-12)


def test_feature_visualisation_is_seeded_and_refuses_bad_requests(digits):
    model = digits[0]
    a = features.visualise(model, "conv2", filters=[3], steps=8, seed=4)
    b = features.visualise(model, "conv2", filters=[3], steps=8, seed=4)
    c = features.visualise(model, "conv2", filters=[3], steps=8, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(cnnlab.errors.ConfigError, match=r"filters must be in \[0, 64\)"):
        features.visualise(model, "conv2", filters=[64])
    with pytest.raises(cnnlab.errors.ConfigError, match="features has"):
        features.visualise(model, "features")
    with pytest.raises(cnnlab.errors.ConfigError, match="where must be one of"):
        features.visualise(model, "conv2", where="edge")
    logit = features.objective(model, None, features.visualise(model, class_index=7),
                               class_index=7)
    real = features.objective(model, None, digits[1], class_index=7)
    sevens = real[digits[2] == 7]
    noise = np.random.default_rng(1).uniform(0, 1, (20, 28, 28, 1))
    # above what a real 7 scores on average (the best real 7s score a little more: the
    # regularisers keep the image smooth), and far above random pixels
    assert logit[0] > np.mean(sevens) and logit[0] > 3 * features.objective(
        model, None, noise, class_index=7).max()


def test_pca_equals_an_independent_pca_and_t_sne_is_seeded(digits):
    sklearn = pytest.importorskip("sklearn.decomposition")
    model, x, y = digits
    found = embedding.penultimate_features(model, x[:200])
    ours = embedding.pca(found)
    theirs = sklearn.PCA(n_components=2, svd_solver="full").fit_transform(found)
    for axis in range(2):                           # the same axes, up to each one's sign
        sign = np.sign(ours[:, axis] @ theirs[:, axis])
        np.testing.assert_allclose(ours[:, axis], sign * theirs[:, axis], rtol=1e-6,
                                   atol=1e-6 * np.abs(theirs).max())
    first = embedding.embedding_map(model, x[:120], method="tsne", seed=3)
    again = embedding.embedding_map(model, x[:120], method="tsne", seed=3)
    assert first.shape == (120, 2) and np.array_equal(first, again)
    with pytest.raises(cnnlab.errors.ConfigError, match="method must be one of"):
        embedding.embedding_map(model, x, method="umap")


def test_the_digits_embedding_map_keeps_classes_apart(digits):
    """In the PCA plane of the penultimate layer, an image's nearest neighbour shares its class
    far more often than chance (10%)."""
    model, x, y = digits
    points = embedding.embedding_map(model, x)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert np.mean(y[distances.argmin(axis=1)] == y) > 0.5


def _article_on_digits(seed=0):
    cnnlab.utils.set_random_seed(seed)
    model = zoo.get("article")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    (x, y), _ = datasets.load("mnist_sample")
    return model, datasets.as_model_input(x[:256]).astype(model.dtype), y[:256]


def test_the_timeline_keeps_its_recording_within_its_budget_of_the_training_time(monkeypatch):
    """On a fake clock (a frame costs 1 s, a batch 0.5 s): frames in between are taken only
    while recording stays within 10% of training; the first and last always."""
    clock = [0.0]
    monkeypatch.setattr(timeline.time, "perf_counter", lambda: clock[0])

    def frame(self):
        clock[0] += 1.0
        return timeline.Frame(self.step, 0.0, np.zeros(1), np.zeros(1), np.zeros(1))
    monkeypatch.setattr(timeline.TrainingTimeline, "_frame", frame)
    recorder = timeline.TrainingTimeline(np.zeros((28, 28, 1)), every=1)
    recorder.model, recorder.params = zoo.get("article"), {"steps": 200}
    recorder.on_train_begin()
    recorder.on_epoch_begin(0)
    for batch in range(200):
        clock[0] += 0.5
        recorder.on_train_batch_end(batch)
    training = 200 * 0.5
    in_between = len(recorder.frames) - 1
    assert recorder.recording_seconds <= 0.1 * training
    assert in_between == 9                          # 1 + 9 frames of 1 s in 100 s of training
    recorder.on_train_end()
    assert recorder.frames[-1].step == 200 and recorder.frames[0].step == 0


def test_the_timeline_starts_at_the_initial_weights_has_its_frames_and_changes_no_weight(
        tmp_path):
    model, x, y = _article_on_digits()
    initial = model.get_layer("conv1").weights[0].copy()
    recorder = timeline.TrainingTimeline(x[0], every=3, visual_filters=2, visual_steps=8,
                                         budget=None)
    model.fit(x, y, epochs=2, batch_size=32, callbacks=[recorder], verbose=0)
    # 8 steps an epoch: before training, steps 3, 6, 9, 12, 15, and the last (16)
    assert [f.step for f in recorder.frames] == [0, 3, 6, 9, 12, 15, 16]
    assert np.array_equal(recorder.frames[0].kernels, initial)
    assert np.array_equal(recorder.frames[-1].kernels, model.get_layer("conv1").weights[0])
    assert recorder.frames[0].maps.shape == (24, 24, 32)
    assert recorder.frames[0].visuals.shape == (2, 28, 28, 1)
    plain, _, _ = _article_on_digits()
    plain.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        assert np.array_equal(a, b)                  # recording changed nothing of training
    path = recorder.save(tmp_path / "run.timeline.npz")
    loaded = timeline.load(path)
    assert [f.step for f in loaded.frames] == [f.step for f in recorder.frames]
    assert np.array_equal(loaded.frames[3].maps, recorder.frames[3].maps)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(cnnlab.errors.DataError, match="Cannot read the timeline"):
        timeline.load(tmp_path / "bad.npz")


def test_every_sequel_figure_is_drawn_and_labelled(digits, tmp_path):
    model, x, y = digits
    names = [str(k) for k in range(10)]
    figures = {
        "first": inside.plot_feature_visualisation(model, "conv1", steps=8),
        "second": inside.plot_feature_visualisation(model, "conv2", steps=8),
        "classes": inside.plot_class_visualisation(model, names, steps=8),
        "patches": inside.plot_top_patches(model, "conv2", x[:100]),
        "attributions": inside.plot_attributions(model, x[0], names),
        "map": inside.plot_embedding(embedding.embedding_map(model, x[:100]), y[:100], names),
    }
    texts = {name: " ".join(t.get_text() for t in fig.findobj(
        lambda a: hasattr(a, "get_text"))) for name, fig in figures.items()}
    assert "conv1 (Conv2D, output 24x24x32)" in texts["first"]
    assert "centre cell" in texts["first"] and "5x5 receptive field" in texts["first"]
    assert "its mean over the map" in texts["second"] and "filter 15" in texts["second"]
    assert "black 0 .. white 1" in texts["second"]
    assert "14x14 receptive field" in texts["patches"]
    for label in ("Grad-CAM", "Integrated Gradients", "Occlusion", "logit drop when hidden"):
        assert label in texts["attributions"]
    assert "PCA" in texts["map"] and "true class" in texts["map"]
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")


def test_train_report_records_the_timeline_and_report_shows_how_it_learned(tmp_path,
                                                                           monkeypatch):
    from cnnlab import cli
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--data", "mnist_sample", "--epochs", "1", "--out", "m.cnnlab",
                     "--report", "trained.html", "--verbose", "0"]) == 0
    frames = timeline.load(tmp_path / "m.timeline.npz").frames
    # the first and last frames; those in between as the 10% time budget allowed
    assert frames[0].step == 0 and frames[-1].step == 63 and len(frames) >= 2
    assert cli.main(["report", "m.cnnlab", "--out", "later.html"]) == 0
    for page in ("trained.html", "later.html"):
        text = (tmp_path / page).read_text()
        assert "How it learned" in text and text.count("data-step=") == len(frames)
        assert "What conv1&#x27;s filters look for" in text or "What conv1's filters" in text
        assert "How the classes arrange themselves" in text


def test_colour_decorrelation_keeps_rgb_pictures_near_photo_colours():
    """On the shipped CIFAR-10 model: with the decorrelated steps (1/f in space, natural
    photos' colour covariance across channels) the pictures are far less saturated than plain
    gradient ascent's (mean per-pixel spread across R, G, B), at most of the activation."""
    model = zoo.load("cifar10")
    filters = list(range(8))
    shaped = features.visualise(model, "block2_2_conv", filters=filters, steps=64)
    plain = features.visualise(model, "block2_2_conv", filters=filters, steps=64,
                               decorrelate=False)
    assert shaped.std(axis=-1).mean() < 0.5 * plain.std(axis=-1).mean()
    ratio = (features.objective(model, "block2_2_conv", shaped, filters)
             / features.objective(model, "block2_2_conv", plain, filters))
    assert np.median(ratio) > 0.7
