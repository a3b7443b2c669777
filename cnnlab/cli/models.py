"""The commands that take a trained model: ``evaluate``, ``predict``, ``summary``, ``export``
and ``report``. Each names its model the one way (``zoo.find``) and gets its data from
``cnnlab.data``."""

from __future__ import annotations

import os

import numpy as np

from cnnlab import outputs, zoo
from cnnlab.cli.options import (
    REPORT_FILE,
    add_command,
    add_device_option,
    positive_int,
    progress_lines,
    timeline_path,
    use_device,
)
from cnnlab.data import class_names, evaluation_data, image_for_model, open_image
from cnnlab.models import test_time

TTA_HELP = ("test-time augmentation for photos: average the outputs over the image and its "
            "mirror image (flip), and also over both shifted one pixel up-left and down-right "
            "(flip-translate)")


def cmd_evaluate(args) -> int:
    """Loss and accuracy of a saved model on a dataset's test split (or a whole folder); with
    ``--tta``, the accuracy of its outputs averaged over views of each image."""
    use_device(args)
    model = zoo.find(args.model, compile=True)
    x_test, y_test, what, _ = evaluation_data(model, args.model, args.data)
    if args.tta:
        score = test_time.accuracy(model, x_test, y_test, args.tta, args.batch_size)
        print(f"{args.model} on {what}: accuracy {score:.4f} (the mean of "
              f"{test_time.VIEWS[args.tta]} views of each image, --tta {args.tta})")
        return 0
    if model.loss is None:
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    results = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0,
                             return_dict=True)
    print(f"{args.model} on {what}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    return 0


def cmd_predict(args) -> int:
    """Top classes for each image file."""
    use_device(args)
    model = zoo.find(args.model)
    invert = {"auto": "auto", "yes": True, "no": False}[args.invert]
    batch = np.stack([image_for_model(model, open_image(p), invert) for p in args.images])
    probs = (test_time.predict(model, batch, args.tta) if args.tta
             else model.predict(batch, verbose=0))
    names = class_names(model)
    for path, p in zip(args.images, probs):
        top = np.argsort(p)[::-1][:args.top]
        print(f"{path}: " + ", ".join(f"{names[int(k)]} ({p[k]:.1%})" for k in top))
    return 0


def cmd_summary(args) -> int:
    """Layers, output shapes, parameters and the output-size formula of a model or zoo name."""
    zoo.find(args.model, trained=False).summary()
    return 0


def cmd_export(args) -> int:
    """Write a saved model as ONNX for other runtimes."""
    outputs.given_path(args.out, "out", (".onnx",), args.overwrite)
    model = zoo.find(args.model)
    model.export(args.out, format="onnx", input_layout="NCHW" if args.nchw else "NHWC")
    print(f"Wrote {args.out} (ONNX opset 17, input {'NCHW' if args.nchw else 'NHWC'})")
    return 0


def cmd_report(args) -> int:
    """A self-contained HTML report of a model evaluated on a dataset's test split (with its
    training timeline when ``cnnlab train --report`` left one beside the model)."""
    from cnnlab.viz import timeline
    from cnnlab.viz.report import write_report
    out = outputs.output(args.out, REPORT_FILE, "--out", (".html",), args.overwrite)
    model = zoo.find(args.model)
    x_test, y_test, _, _ = evaluation_data(model, args.model, args.data, limit=2000)
    recorded = timeline_path(args.model)
    frames = timeline.load(recorded) if os.path.exists(recorded) else None
    out = write_report(model, x_test, y_test, out, timeline=frames,
                       progress=progress_lines(print))
    print(f"Wrote {out}")
    return 0


def add_commands(commands) -> None:
    evaluate = add_command(
        commands, "evaluate", cmd_evaluate, "evaluate a saved model",
        ["cnnlab evaluate article_cnn.cnnlab --data mnist_sample"])
    evaluate.add_argument("model", help=zoo.model_help())
    evaluate.add_argument("--data", help="a dataset name, an .npz or a folder (default: the "
                                          "test split of the dataset the model was trained on)")
    evaluate.add_argument("--batch-size", type=positive_int, default=256)
    evaluate.add_argument("--tta", choices=list(test_time.VIEWS), help=TTA_HELP)
    add_device_option(evaluate)

    predict = add_command(
        commands, "predict", cmd_predict, "classify image files",
        ["cnnlab predict article_cnn.cnnlab my_seven.png photo_of_a_3.jpg"],
        details="Images of any size or colour are converted to the "
        "model's input. For single-channel (digit) models, dark-on-light images are inverted to "
        "MNIST's white-on-black, and the digit is centred as MNIST's were.")
    predict.add_argument("model", help=zoo.model_help())
    predict.add_argument("images", nargs="+", help="PNG/JPEG/... files")
    predict.add_argument("--top", type=positive_int, default=3, help="classes to show (default 3)")
    predict.add_argument("--tta", choices=list(test_time.VIEWS), help=TTA_HELP)
    add_device_option(predict)
    predict.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                         help="invert grey levels: auto decides from the border (default)")

    summary = add_command(
        commands, "summary", cmd_summary, "print a model's layers and shapes",
        ["cnnlab summary article", "cnnlab summary article_cnn.cnnlab"])
    summary.add_argument("model", help=zoo.model_help(trained=False))
    export = add_command(
        commands, "export", cmd_export, "write a model as ONNX",
        ["cnnlab export article_cnn.cnnlab article.onnx",
         "cnnlab export article_cnn.cnnlab article_nchw.onnx --nchw"])
    export.add_argument("model", help=zoo.model_help())
    export.add_argument("out", help="the .onnx file to write")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.add_argument("--nchw", action="store_true",
                        help="take NCHW input (channels first) instead of cnnlab's NHWC")
    report = add_command(
        commands, "report", cmd_report, "write a self-contained HTML report",
        ["cnnlab report article_cnn.cnnlab --data mnist_sample --out report.html"])
    report.add_argument("model", help=zoo.model_help())
    report.add_argument("--data", help="a dataset name, an .npz or a folder (default: the test "
                                        "split of the dataset the model was trained on)")
    report.add_argument("--out", help=f"HTML file (default: {REPORT_FILE}, or report-2.html ... "
                                      f"when an earlier one is there)")
    report.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
