"""Make the README's pictures of the sequel (``docs/pictures``), with cnnlab and its shipped
weights: on the bundled digits, and on CIFAR-10 photos the shipped CIFAR-10 model held out.

    python recipes/pictures.py --cifar /tmp/cifar10/train

Every picture is seeded; the CIFAR-10 photos are the model's own validation split (the same
seeded 20% of the folder that it was scored on), never ones it trained on.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "docs", "pictures")
SHOWN = 1000        # held-out images for the patches and the maps


def _save(fig, name: str) -> None:
    path = os.path.join(OUT, name)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path) / 1e3:.0f} kB)")


def digits() -> None:
    from cnnlab import datasets, zoo
    from cnnlab.viz import embedding, inside
    model = zoo.load("digits")
    _, (x, y) = datasets.load("mnist_sample")
    x, y = datasets.as_model_input(x[:SHOWN]).astype(model.dtype), y[:SHOWN]
    names = [str(k) for k in range(10)]
    _save(inside.plot_feature_visualisation(model, "conv1"), "digits-conv1-looks-for.png")
    _save(inside.plot_feature_visualisation(model, "conv2"), "digits-conv2-looks-for.png")
    _save(inside.plot_class_visualisation(model, names), "digits-classes.png")
    _save(inside.plot_top_patches(model, "conv2", x, k=6), "digits-conv2-patches.png")
    _save(inside.plot_attributions(model, x[0], names), "digits-attributions.png")
    _save(inside.plot_embedding(embedding.embedding_map(model, x), y, names),
          "digits-embedding.png")


def timeline_gif() -> None:
    """The article's CNN trained one epoch on the bundled digits, recorded every 8 steps."""
    from PIL import Image

    from cnnlab import seeding
    from cnnlab.runs import fit_run, new_run, run_settings
    from cnnlab.viz.timeline import TrainingTimeline, plot_frame
    settings = run_settings(epochs=1, seed=0)
    with seeding.seeded(settings["seed"]):
        model, train, test = new_run(settings)
        recorder = TrainingTimeline(test[0][0], every=8)
        fit_run(model, settings, train, test, verbose=0, callbacks=[recorder])
    frames = []
    for frame in recorder.frames:
        buffer = io.BytesIO()
        plot_frame(frame, recorder).savefig(buffer, format="png", dpi=60, bbox_inches="tight")
        frames.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    size = frames[0].size
    frames = [f.resize(size) for f in frames]
    path = os.path.join(OUT, "digits-timeline.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=450, loop=0,
                   optimize=True)
    print(f"wrote {os.path.normpath(path)} ({len(frames)} frames, "
          f"{os.path.getsize(path) / 1e3:.0f} kB)")


def cifar(folder: str) -> None:
    from cnnlab import zoo
    from cnnlab.data import FOLDER_VALIDATION_SPLIT, class_names
    from cnnlab.utils import image_dataset_from_directory
    from cnnlab.viz import embedding, inside
    model = zoo.load("cifar10")
    settings = model.metadata["train_settings"]
    held_out = image_dataset_from_directory(
        folder, image_size=(32, 32), batch_size=250, validation_split=FOLDER_VALIDATION_SPLIT,
        subset="validation", seed=settings["seed"], shuffle=True)
    xs, ys = [], []
    for images, labels in held_out:
        xs.append(images / 255.0)
        ys.append(labels)
        if sum(len(b) for b in xs) >= SHOWN:
            break
    x = np.concatenate(xs)[:SHOWN].astype(model.dtype)
    y = np.concatenate(ys)[:SHOWN]
    names = class_names(model)
    print(f"{len(x)} held-out CIFAR-10 photos; the model gets "
          f"{np.mean(model.predict(x, verbose=0).argmax(-1) == y):.1%} of them right")
    _save(inside.plot_feature_visualisation(model, "block1_1_conv"),
          "cifar-block1-looks-for.png")
    _save(inside.plot_feature_visualisation(model, "block3_1_conv"),
          "cifar-block3-looks-for.png")
    _save(inside.plot_class_visualisation(model, names), "cifar-classes.png")
    _save(inside.plot_top_patches(model, "block2_2_conv", x, k=6), "cifar-block2-patches.png")
    right = np.flatnonzero(model.predict(x[:50], verbose=0).argmax(-1) == y[:50])
    _save(inside.plot_attributions(model, x[right[0]], names), "cifar-attributions.png")
    _save(inside.plot_embedding(embedding.embedding_map(model, x), y, names),
          "cifar-embedding.png")
    _save(inside.plot_embedding(embedding.embedding_map(model, x, method="tsne"), y, names,
                                method="tsne"), "cifar-embedding-tsne.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", metavar="DIR", required=True,
                        help="the extracted CIFAR-10 training folder (one folder per class)")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    digits()
    timeline_gif()
    cifar(args.cifar)


if __name__ == "__main__":
    main()
