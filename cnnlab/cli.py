"""The ``cnnlab`` command: one function per command, each a thin layer over the Python API.

A user error (missing file, bad option, unreadable image) prints one line and exits with status 1;
argparse's usage errors exit with 2. No tracebacks for mistakes a user can fix.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

from cnnlab import outputs, zoo
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.runs import (
    DEFAULTS,
    TRAIN_SETTINGS,
    evaluation_data,
    fit_run,
    materialise,
    new_run,
    run_settings,
    total_epochs,
    training_data,
)

CHECKPOINT_FILE = "checkpoint.cnnlab"
REPORT_FILE = "report.html"

def _check_train_options(args) -> None:
    """Refuse combinations that cannot both be meant, before any work is done."""
    if args.optimizer == "adam" and args.momentum is not None:
        raise ConfigError("--momentum applies to --optimizer sgd only; Adam has no momentum "
                          "setting here.")
    if args.fine_tune is not None and args.pretrained is None:
        raise ConfigError("--fine-tune continues a --pretrained run; add --pretrained (a new "
                          "head on a shipped backbone), or train the whole model from scratch "
                          "without either.")
    if args.checkpoint_every is not None and not (args.checkpoint_dir or args.resume):
        raise ConfigError("--checkpoint-every needs --checkpoint-dir DIR (where to write them).")


def _same_setting(name: str, given, saved) -> bool:
    if name == "data" and isinstance(given, str) and isinstance(saved, str):
        return given == saved or os.path.abspath(given) == os.path.abspath(saved)
    if isinstance(given, (int, float)) and isinstance(saved, (int, float)):
        return float(given) == float(saved)
    return given == saved


def _check_agrees_with_checkpoint(args, settings: dict, path: str) -> None:
    """Re-running a killed run's command with ``--resume DIR`` added works: options that repeat
    the checkpoint's settings are fine; one that contradicts them is refused by name."""
    for name in TRAIN_SETTINGS:
        given = getattr(args, name)
        if given is not None and not _same_setting(name, given, settings[name]):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {given} contradicts the run saved in {path}, which has "
                              f"{flag} {settings[name]}; --resume continues that run with its own "
                              f"settings. Drop {flag}, or start a new run in another "
                              f"--checkpoint-dir.")


def _fresh_run(settings):
    model, train, test = new_run(settings)
    return model, settings, train, test, 0


def _resumed_run(args):
    import os

    from cnnlab import config
    from cnnlab.models import load_model
    path = os.path.join(args.resume, CHECKPOINT_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"No checkpoint to resume in {args.resume!r} (expected {path}).")
    model = load_model(path)
    settings = model.metadata.get("train_settings")
    if not isinstance(settings, dict) or model.training_state is None:
        raise ConfigError(f"{path} is not a cnnlab train checkpoint.")
    settings = {**DEFAULTS, **settings}
    _check_agrees_with_checkpoint(args, settings, path)
    threads = model._resume.get("threads")
    if isinstance(threads, int) and threads > 0:
        config.set_threads(threads)        # the same split, for a bit-exact continuation
    train, test, _, _ = training_data(settings)
    return model, settings, train, test, model.training_state["epoch"]


def cmd_train(args) -> int:
    """Train a zoo model on a dataset, report test accuracy, save the model. The run's seed and
    thread count hold for the command alone: a caller's generators and ``config.threads()`` are
    as they were after it (a checkpoint being resumed restores its own generators)."""
    from cnnlab import config, seeding
    settings = None if args.resume else run_settings(
        **{name: getattr(args, name) for name in TRAIN_SETTINGS})
    threads = config.threads()
    try:
        with seeding.seeded(DEFAULTS["seed"] if settings is None else settings["seed"]):
            return _train(args, settings)
    finally:
        config.set_threads(threads)


def _train(args, fresh_settings) -> int:
    import os

    from cnnlab.callbacks import ModelCheckpoint
    _check_train_options(args)
    chief, comm = True, None
    if args.distributed:
        from cnnlab import config
        from cnnlab.training.distributed import Communicator
        comm = Communicator()
        chief = comm.is_chief
        # ranks on one machine share its cores; MPI already runs one process per share
        config.set_threads(max(1, config.usable_cores() // comm.local_size))
        if not chief:
            args.verbose = 0
    say = print if chief else (lambda *a, **k: None)
    checkpoint_dir = args.checkpoint_dir or args.resume
    if args.checkpoint_dir and not args.resume and os.path.exists(
            os.path.join(args.checkpoint_dir, CHECKPOINT_FILE)):
        raise ConfigError(f"{args.checkpoint_dir!r} already holds a checkpoint: continue it with "
                          f"--resume {args.checkpoint_dir}, or choose another folder.")
    if args.out and not args.resume:               # checked before the data is even loaded
        outputs.given_path(args.out, "--out", (".cnnlab",), args.overwrite)
    # a bare --report is the default name (REPORT_FILE), which never replaces an earlier one
    report = args.report and outputs.output(None if args.report == REPORT_FILE else args.report,
                                            REPORT_FILE, "--report", (".html",),
                                            args.overwrite, say)
    model, settings, train, test, initial_epoch = (
        _resumed_run(args) if args.resume else _fresh_run(fresh_settings))
    streaming = not isinstance(train, tuple)
    out = args.out or settings.get("out") or outputs.free_path(f"{model.name}.cnnlab",
                                                               args.overwrite, say)
    settings = {**settings, "out": out}
    model.metadata["train_settings"] = settings      # checkpoints know where the model goes
    if initial_epoch:
        say(f"Resuming {model.name} from {checkpoint_dir}: epoch {initial_epoch + 1}, batch "
              f"{model.training_state['step']}")
    else:
        sizes = (f"{len(train.source.file_paths):,} train / {len(test.source.file_paths):,} "
                 f"validation images" if streaming else
                 f"{len(train[0]):,} train / {len(test[0]):,} test images")
        recipe = zoo.Recipe(**{k: settings[k] for k in zoo.Recipe.__dataclass_fields__})
        plan = recipe.describe()
        if settings["pretrained"]:
            plan = (f"a new head on {settings['model']}'s frozen backbone "
                    f"({settings['pretrained']} weights): {plan}")
            if settings["fine_tune"]:
                plan += (f"; then every layer {settings['fine_tune']} more epochs at "
                         f"{zoo.FINE_TUNE_FACTOR:g}x the rate")
        say(f"Training {model.name} on {settings['data']}: {sizes} {model.input_shape}, "
            f"{model.output_shape[-1]} classes; {plan}; seed {settings['seed']}")
    _warn_if_too_few_steps(len(train.source.file_paths) if streaming else len(train[0]),
                           settings["batch_size"], say)
    if not initial_epoch and not settings["pretrained"]:
        _suggest_pretrained(train.source.labels if streaming else train[1],
                            model.metadata["class_names"], say)
    callbacks = []
    if checkpoint_dir:
        # a run killed mid-write (SIGKILL) leaves its temporary file behind: only we write here
        for debris in glob.glob(os.path.join(glob.escape(checkpoint_dir),
                                             ".tmp-*-" + CHECKPOINT_FILE)):
            os.remove(debris)
        callbacks.append(ModelCheckpoint(os.path.join(checkpoint_dir, CHECKPOINT_FILE),
                                         save_freq=args.checkpoint_every or "epoch"))
    if streaming and args.distributed:
        raise ConfigError("--distributed trains on arrays (a dataset name or .npz), not on a "
                          "folder of images.")
    timeline = None
    if report and chief:
        from cnnlab.viz.timeline import timeline_for
        timeline = timeline_for(model, test)
    if timeline is not None:
        callbacks.append(timeline)
    start = time.perf_counter()
    fit_run(model, settings, train, test, verbose=args.verbose, callbacks=callbacks,
            initial_epoch=initial_epoch, distributed=args.distributed)
    seconds = time.perf_counter() - start
    if streaming:
        loss, accuracy = model.evaluate(test, verbose=0)
        x_test, y_test = materialise(test, limit=512)        # for the report
        images = len(train.source.file_paths) * (total_epochs(settings) - initial_epoch)
    else:
        (x_train, _), (x_test, y_test) = train, test
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        images = len(x_train) * (total_epochs(settings) - initial_epoch)
    if chief:                                # distributed: one writer
        model.save(out)
    if report and chief:
        from cnnlab.viz.report import write_report
        if timeline is not None:
            say(f"Wrote the training timeline ({len(timeline.frames)} frames) to "
                f"{timeline.save(timeline_path(out))}")
        written = write_report(model, x_test, y_test, report, timeline=timeline,
                               progress=_progress_lines(say))
        say(f"Wrote report {written}")
    ranks = f" on {comm.size} MPI rank{'s' * (comm.size > 1)}" if comm else ""
    held_out = len(test.source.file_paths) if streaming else len(x_test)
    say(f"Test accuracy: {accuracy:.2%} (loss {loss:.4f}) on {held_out:,} held-out images; "
          f"trained in {seconds:.1f} s{ranks} ({images / max(seconds, 1e-9):,.0f} images/s)")
    say(f"Saved model to {out}")
    return 0


def _progress_lines(say):
    """A report's progress: one line per part, with the seconds so far (no step is silent for
    long)."""
    start = time.perf_counter()
    return lambda what: say(f"  report: {what} ({time.perf_counter() - start:.0f} s)",
                            flush=True)


def _warn_if_too_few_steps(images: int, batch_size: int, say) -> None:
    """A dataset smaller than a few batches trains to chance without a hint: say so."""
    steps = -(-images // batch_size)
    if steps >= 4:
        return
    suggestion = max(4, 2 ** int(np.log2(max(images // 8, 1))))
    say(f"Warning: {images} training images at batch size {batch_size} make {steps} "
        f"step{'s' * (steps > 1)} per epoch, too few for the network to learn much. Try "
        f"--batch-size {suggestion} (and more --epochs).")


#: fewer training images than this in a class, and a network trained from scratch mostly guesses
FEW_IMAGES_PER_CLASS = 100


def _suggest_pretrained(labels, names, say) -> None:
    """Tiny data trains to a coin toss from scratch and nothing says why: say it, and what
    learns from few images (a pretrained backbone)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    fewest = int(counts.argmin())
    few = int(counts[fewest])
    if few >= FEW_IMAGES_PER_CLASS:
        return
    say(f"Warning: class {names[fewest]!r} has {few} training image"
        f"{'s' * (few != 1)} (the fewest of {len(names)} classes; "
        f"{len(labels)} in all). From scratch, a CNN needs hundreds per class and will mostly "
        f"guess. With few images, start from a network that has learnt to see: add "
        f"--pretrained (a new head on cnnlab's CIFAR-10 backbone; --fine-tune after it).")


def cmd_evaluate(args) -> int:
    """Loss and accuracy of a saved model on a dataset's test split (or a whole folder)."""
    model = zoo.find(args.model, compile=True)
    x_test, y_test, what, _ = evaluation_data(model, args.model, args.data)
    if model.loss is None:
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    results = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0,
                             return_dict=True)
    print(f"{args.model} on {what}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    return 0


def cmd_predict(args) -> int:
    """Top classes for each image file."""
    from cnnlab.preprocess import open_image
    from cnnlab.runs import class_names, image_for_model
    model = zoo.find(args.model)
    invert = {"auto": "auto", "yes": True, "no": False}[args.invert]
    batch = np.stack([image_for_model(model, open_image(p), invert) for p in args.images])
    probs = model.predict(batch, verbose=0)
    names = class_names(model)
    for path, p in zip(args.images, probs):
        top = np.argsort(p)[::-1][:args.top]
        print(f"{path}: " + ", ".join(f"{names[int(k)]} ({p[k]:.1%})" for k in top))
    return 0


def timeline_path(model_path: str) -> str:
    """Where ``cnnlab train --report`` keeps a model's training timeline: beside the model."""
    import os
    return os.path.splitext(model_path)[0] + ".timeline.npz"


def cmd_report(args) -> int:
    """A self-contained HTML report of a model evaluated on a dataset's test split (with its
    training timeline when ``cnnlab train --report`` left one beside the model)."""
    import os

    from cnnlab.viz import timeline
    from cnnlab.viz.report import write_report
    out = outputs.output(args.out, REPORT_FILE, "--out", (".html",), args.overwrite)
    model = zoo.find(args.model)
    x_test, y_test, _, _ = evaluation_data(model, args.model, args.data, limit=2000)
    recorded = timeline_path(args.model)
    frames = timeline.load(recorded) if os.path.exists(recorded) else None
    out = write_report(model, x_test, y_test, out, timeline=frames,
                       progress=_progress_lines(print))
    print(f"Wrote {out}")
    return 0


def cmd_export(args) -> int:
    """Write a saved model as ONNX for other runtimes."""
    outputs.given_path(args.out, "out", (".onnx",), args.overwrite)
    model = zoo.find(args.model)
    model.export(args.out, format="onnx", input_layout="NCHW" if args.nchw else "NHWC")
    print(f"Wrote {args.out} (ONNX opset 17, input {'NCHW' if args.nchw else 'NHWC'})")
    return 0


def cmd_serve(args) -> int:
    """A local web app: draw a digit and watch every layer respond, train live, and step through
    convolution and pooling."""
    import ipaddress
    import socket

    from cnnlab import serve
    if args.model:
        model, path = zoo.find(args.model), args.model
    else:
        model, path = serve.default_model(epochs=args.epochs)
    name = os.path.splitext(os.path.basename(str(path)))[0]
    models = {name: (model, str(path))}
    earlier = serve.saved_models(skip=[path],
                                 say=lambda line: print(line, file=sys.stderr))
    models.update({k: v for k, v in earlier.items() if k not in models})
    index = None
    if args.index:
        from cnnlab.tasks.search import load_index
        index = load_index(args.index)
    if args.data_root is not None and not os.path.isdir(args.data_root):
        raise ConfigError(f"--data-root {args.data_root!r} is not a folder.")
    app = serve.App(models, serve.models_dir(), default=name,
                    log=(lambda line: print(line, file=sys.stderr)) if args.log else None,
                    index=index, detector=args.detector, data_root=args.data_root)
    try:
        server = serve.make_server(app, args.host, args.port)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"Cannot listen on {args.host}:{args.port} ({reason}); choose another "
                          f"--port or --host.") from None
    if not ipaddress.ip_address(server.server_address[0]).is_loopback:
        print(f"cnnlab: warning: listening on {args.host} ({socket.gethostname()}): anyone who can "
              f"reach this machine can use the app and start training runs.", file=sys.stderr)
    print(f"cnnlab: model {name!r} ({model.count_params():,} parameters) from {path}"
          + (f"; also {len(earlier)} trained here before: {', '.join(earlier)}" if earlier else ""))
    serve.run(server)
    return 0


def cmd_summary(args) -> int:
    """Layers, output shapes, parameters and the output-size formula of a model or zoo name."""
    zoo.find(args.model, trained=False).summary()
    return 0


def cmd_explain(args) -> int:
    """The article's concepts with real numbers from the engine."""
    from cnnlab.viz import explain
    if getattr(args, "gif", None):
        outputs.given_path(args.gif, "--gif", (".gif",), args.overwrite)
    if args.topic == "conv":
        print(explain.explain_conv(args.size, args.kernel, args.padding, args.stride, args.seed,
                                   every_sum=args.all))
        slide = explain.conv_slide(args.size, args.kernel, args.padding, args.stride,
                                   args.seed) if args.gif else None
    elif args.topic == "pool":
        print(explain.explain_pool(args.size, args.pool, args.stride, args.kind, args.seed))
        kind = "max" if args.kind == "both" else args.kind
        slide = explain.pool_slide(args.size, args.pool, args.stride, kind,
                                   args.seed) if args.gif else None
    elif args.topic == "relu":
        print(explain.explain_relu(args.seed))
        slide = None
    elif args.topic == "softmax":
        print(explain.explain_softmax(args.logits))
        slide = None
    else:
        print(explain.explain_formula(args.size, args.kernel, args.padding, args.stride))
        slide = None
    if slide is not None:
        frames = explain.save_gif(slide, args.gif)
        print(f"\nSaved {args.gif}: {frames} frames, one per window position")
    return 0


def _add_explain(commands, formatter):
    explain = commands.add_parser(
        "explain", help="convolution, padding, stride, pooling, ReLU, softmax, with numbers",
        formatter_class=formatter, description=cmd_explain.__doc__,
        epilog="Example:\n  cnnlab explain conv --size 6 --kernel 3 --padding 1 --stride 2\n"
               "  cnnlab explain formula 28 5 0 1")
    topics = explain.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    conv = topics.add_parser(
        "conv", help="slide a kernel over a zero-padded input", formatter_class=formatter,
        epilog="Example:\n  cnnlab explain conv --size 6 --kernel 3 --padding 1 --stride 2 "
               "--gif conv.gif")
    conv.add_argument("--size", type=_positive_int, default=6, help="input size (default 6)")
    conv.add_argument("--kernel", type=_positive_int, default=3, help="kernel size (default 3)")
    conv.add_argument("--all", action="store_true",
                      help="write out the multiply-add at every position (default: the first 3)")
    conv.add_argument("--padding", type=_non_negative_int, default=1,
                      help="zero padding (default 1)")
    conv.add_argument("--stride", type=_positive_int, default=2, help="stride (default 2)")
    conv.add_argument("--seed", type=int, default=0, help="which example input (default 0)")
    conv.add_argument("--gif", metavar="PATH", help="also write an animation of the slide")
    conv.add_argument("--overwrite", action="store_true", help="replace --gif if it exists")
    pool = topics.add_parser(
        "pool", help="max and average pooling", formatter_class=formatter,
        epilog="Example:\n  cnnlab explain pool --size 4 --pool 2 --stride 2 --gif pool.gif")
    pool.add_argument("--size", type=_positive_int, default=4, help="input size (default 4)")
    pool.add_argument("--pool", type=_positive_int, default=2, help="window size (default 2)")
    pool.add_argument("--stride", type=_positive_int, default=2, help="stride (default 2)")
    pool.add_argument("--kind", choices=["both", "max", "avg"], default="both")
    pool.add_argument("--seed", type=int, default=0, help="which example input (default 0)")
    pool.add_argument("--gif", metavar="PATH", help="also write an animation (max, or --kind)")
    pool.add_argument("--overwrite", action="store_true", help="replace --gif if it exists")
    relu = topics.add_parser("relu", help="max(0, x) on a feature map", formatter_class=formatter,
                             epilog="Example:\n  cnnlab explain relu")
    relu.add_argument("--seed", type=int, default=0)
    softmax = topics.add_parser(
        "softmax", help="scores to probabilities", formatter_class=formatter,
        epilog="Example:\n  cnnlab explain softmax 2 1 0.1\n"
               "  cnnlab explain softmax -- 1e4 -1e4     # '--' before negative numbers")
    softmax.add_argument("logits", type=float, nargs="*", default=[2.0, 1.0, 0.1],
                         help="the scores (default: 2 1 0.1)")
    formula = topics.add_parser(
        "formula", help="O = floor((W - K + 2P) / S) + 1 with your numbers",
        formatter_class=formatter, epilog="Example:\n  cnnlab explain formula 28 5 0 1")
    for name, text, kind in (("size", "W: input size", _positive_int),
                             ("kernel", "K: kernel size", _positive_int),
                             ("padding", "P: padding", _non_negative_int),
                             ("stride", "S: stride", _positive_int)):
        formula.add_argument(name, type=kind, help=text)
    explain.set_defaults(func=cmd_explain)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="cnnlab", formatter_class=formatter,
        description="Build, train, inspect and use convolutional neural networks.",
        epilog="Example:\n  cnnlab train            # the article's CNN on the bundled digits\n"
               "  cnnlab predict article_cnn.cnnlab digit.png")
    from cnnlab.version import __version__
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train a model and save it", formatter_class=formatter,
        description=cmd_train.__doc__,
        epilog="Example:\n  cnnlab train\n  cnnlab train --model lenet5 --epochs 3 --out lenet.cnnlab\n"
               "  cnnlab train --checkpoint-dir runs/a   # killed? then: cnnlab train --resume runs/a\n"
               "  cnnlab train --data photos/ --model resnet20\n"
               "  cnnlab train --data photos/ --pretrained --fine-tune   # few photos\n"
               "  mpirun -n 2 cnnlab train --distributed\n\n"
               "Recipes (what --model NAME trains with unless an option says otherwise):\n"
               + "\n".join(f"  {name}: {recipe.describe()}"
                           for name, recipe in zoo.RECIPES.items()))
    # settings default to None so that --resume can tell which ones were given
    train.add_argument("--model", help=f"zoo model: {', '.join(zoo.MODELS)} (default: "
                                       f"{DEFAULTS['model']}); each has a recipe, see below")
    train.add_argument("--data", help=f"a dataset name (mnist_sample, mnist, fashion_mnist, "
                                      f"cifar10, lfw_faces), an .npz, or a folder with one "
                                      f"subfolder of "
                                      f"images per class (default: {DEFAULTS['data']})")
    train.add_argument("--image-size", type=_positive_int,
                       help="for a folder: images are resized to this square size (default: "
                            "the recipe's)")
    train.add_argument("--color-mode", choices=["grayscale", "rgb", "rgba"],
                       help=f"for a folder (default: {DEFAULTS['color_mode']})")
    train.add_argument("--epochs", type=_positive_int,
                       help="passes over the training data (default: the recipe's)")
    train.add_argument("--batch-size", type=_positive_int,
                       help="images per step (default: the recipe's)")
    train.add_argument("--optimizer", choices=list(zoo.OPTIMIZER_LR),
                       help="the optimizer (default: the model's recipe, sgd with momentum for "
                            "the digit models)")
    train.add_argument("--lr", type=_positive_float,
                       help="learning rate, or the one-cycle schedule's peak (default: the "
                            "recipe's; for another optimizer than the recipe's, " + ", ".join(
                                f"{lr:g} for {name}" for name, lr in zoo.OPTIMIZER_LR.items())
                            + ")")
    train.add_argument("--momentum", type=float,
                       help=f"SGD momentum (default: {DEFAULTS['momentum']})")
    train.add_argument("--schedule", choices=["constant", "onecycle"],
                       help="the learning rate over the run (default: the recipe's)")
    train.add_argument("--weight-decay", type=float,
                       help="decoupled weight decay, as in Keras 3 (default: the recipe's)")
    train.add_argument("--label-smoothing", type=float,
                       help="cross-entropy label smoothing in [0, 1) (default: the recipe's)")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                       help="random flips and pad-4 crops inside the model, in training "
                            "(default: the recipe's)")
    train.add_argument("--pretrained", nargs="?", const="auto", metavar="WEIGHTS",
                       help="transfer learning: freeze the model's shipped pretrained backbone "
                            "(BatchNormalization in inference mode) and train a new head for "
                            "the data's classes; WEIGHTS names them (default: the model's, "
                            "cifar10 for cifar_vgg, the default model) or is the path of a "
                            ".cnnlab file of a zoo model")
    train.add_argument("--fine-tune", type=_positive_int, nargs="?", const=zoo.FINE_TUNE_EPOCHS,
                       metavar="EPOCHS",
                       help=f"with --pretrained: then train every layer EPOCHS more epochs at "
                            f"{zoo.FINE_TUNE_FACTOR:g}x the rate (default "
                            f"{zoo.FINE_TUNE_EPOCHS})")
    train.add_argument("--seed", type=int,
                       help=f"random seed; the same seed repeats the run exactly "
                            f"(default: {DEFAULTS['seed']})")
    train.add_argument("--out", default=None,
                       help="where to save the model (default: MODEL_NAME.cnnlab, or "
                            "MODEL_NAME-2.cnnlab ... when an earlier run's model is there)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the files this run writes (--out, --report) when they "
                            "exist")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="write a checkpoint there after every epoch (weights, optimizer, "
                            "position, random states), atomically")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                       help="with --checkpoint-dir: checkpoint every N batches instead")
    train.add_argument("--report", metavar="HTML", nargs="?", const=REPORT_FILE,
                       help="at the end, write an HTML report (default name: report.html)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI ranks: run under mpirun (needs mpi4py)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run checkpointed in DIR exactly where it stopped")
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None,
                       help="0 silent, 1 progress bar, 2 one line per epoch "
                            "(default: a bar on a terminal, lines otherwise)")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model", formatter_class=formatter,
        description=cmd_evaluate.__doc__,
        epilog="Example:\n  cnnlab evaluate article_cnn.cnnlab --data mnist_sample")
    evaluate.add_argument("model", help=zoo.model_help())
    evaluate.add_argument("--data", help="a dataset name, an .npz or a folder (default: the "
                                          "test split of the dataset the model was trained on)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="classify image files", formatter_class=formatter,
        description=cmd_predict.__doc__ + "\n\nImages of any size or colour are converted to the "
        "model's input. For single-channel (digit) models, dark-on-light images are inverted to "
        "MNIST's white-on-black, and the digit is centred as MNIST's were.",
        epilog="Example:\n  cnnlab predict article_cnn.cnnlab my_seven.png photo_of_a_3.jpg")
    predict.add_argument("model", help=zoo.model_help())
    predict.add_argument("images", nargs="+", help="PNG/JPEG/... files")
    predict.add_argument("--top", type=_positive_int, default=3, help="classes to show (default 3)")
    predict.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                         help="invert grey levels: auto decides from the border (default)")
    predict.set_defaults(func=cmd_predict)

    summary = commands.add_parser(
        "summary", help="print a model's layers and shapes", formatter_class=formatter,
        description=cmd_summary.__doc__,
        epilog="Example:\n  cnnlab summary article\n  cnnlab summary article_cnn.cnnlab")
    summary.add_argument("model", help=zoo.model_help(trained=False))
    summary.set_defaults(func=cmd_summary)
    export = commands.add_parser(
        "export", help="write a model as ONNX", formatter_class=formatter,
        description=cmd_export.__doc__,
        epilog="Example:\n  cnnlab export article_cnn.cnnlab article.onnx\n"
               "  cnnlab export article_cnn.cnnlab article_nchw.onnx --nchw")
    export.add_argument("model", help=zoo.model_help())
    export.add_argument("out", help="the .onnx file to write")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.add_argument("--nchw", action="store_true",
                        help="take NCHW input (channels first) instead of cnnlab's NHWC")
    export.set_defaults(func=cmd_export)
    report = commands.add_parser(
        "report", help="write a self-contained HTML report", formatter_class=formatter,
        description=cmd_report.__doc__,
        epilog="Example:\n  cnnlab report article_cnn.cnnlab --data mnist_sample --out report.html")
    report.add_argument("model", help=zoo.model_help())
    report.add_argument("--data", help="a dataset name, an .npz or a folder (default: the test "
                                        "split of the dataset the model was trained on)")
    report.add_argument("--out", help=f"HTML file (default: {REPORT_FILE}, or report-2.html ... "
                                      f"when an earlier one is there)")
    report.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    report.set_defaults(func=cmd_report)
    serve = commands.add_parser(
        "serve", help="a local web app: draw, train, explain, search, detect",
        formatter_class=formatter,
        description=cmd_serve.__doc__ + "\n\nWith no MODEL it uses the article's CNN trained on "
        "the bundled digits, training it on first start (saved under $CNNLAB_HOME/models).",
        epilog="Example:\n  cnnlab serve                # then open the address it prints (with "
               "its ?token=)\n"
               "  cnnlab serve lenet.cnnlab --port 8080\n"
               "  cnnlab serve --data-root ~/photos   # the Train page trains on folders there\n"
               "  cnnlab serve --index photos.index   # and the Search page at /search\n\n"
               "It answers only its user: every API request needs the token it prints, pages of "
               "other\norigins are refused, and only localhost and loopback addresses are "
               "answered.")
    serve.add_argument("model", nargs="?",
                       help=zoo.model_help() + " (default: the digits model trained here)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks "
                                                             "a free one)")
    serve.add_argument("--epochs", type=_positive_int, default=3,
                       help="epochs for the first-start digits model (default: %(default)s)")
    serve.add_argument("--log", action="store_true", help="print one line per request")
    serve.add_argument("--data-root", metavar="DIR",
                       help="the Train page may train on folders under DIR (default: none, "
                            "only the bundled digits)")
    serve.add_argument("--index", metavar="FILE",
                       help="a photo index (cnnlab index) for the Search page")
    serve.add_argument("--detector", metavar="FILE",
                       help="a two-class .cnnlab classifier for the Detect page (default: the "
                            "shipped face model)")
    serve.set_defaults(func=cmd_serve)
    _add_explain(commands, formatter)
    from cnnlab import cli_tasks
    cli_tasks.add_commands(commands, formatter, _positive_int)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def main(argv=None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):      # a bare `cnnlab`: what it can do
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "train" and args.verbose is None:
        args.verbose = "auto"
    try:
        code = args.func(args)
        sys.stdout.flush()              # a closed pipe shows here, not at interpreter exit
        return code
    except CnnlabError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`cnnlab explain conv | head`): stop quietly, as Unix tools do;
        # stdout goes to /dev/null so Python's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
