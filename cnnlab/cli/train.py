"""``cnnlab train``: a zoo model trained on a dataset, a folder or on top of shipped weights;
checkpoints, resume, a report at the end, and MPI. The run itself is ``cnnlab.runs``'; this
module turns options into its settings and says what it is doing."""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from cnnlab import config, outputs, seeding, zoo
from cnnlab.callbacks import ModelCheckpoint
from cnnlab.cli.options import (
    REPORT_FILE,
    add_command,
    add_device_option,
    positive_float,
    positive_int,
    progress_lines,
    timeline_path,
    use_device,
)
from cnnlab.data import materialise, training_data
from cnnlab.errors import ConfigError
from cnnlab.models import load_model, test_time
from cnnlab.runs import DEFAULTS, TRAIN_SETTINGS, fit_run, new_run, run_settings, total_epochs

CHECKPOINT_FILE = "checkpoint.cnnlab"


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
    settings = None if args.resume else run_settings(
        **{name: getattr(args, name) for name in TRAIN_SETTINGS})
    threads = config.threads()
    try:
        with seeding.seeded(DEFAULTS["seed"] if settings is None else settings["seed"]):
            return _train(args, settings)
    finally:
        config.set_threads(threads)


def _train(args, fresh_settings) -> int:
    _check_train_options(args)
    use_device(args)
    chief, comm = True, None
    if args.distributed:
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
        # a new head has the photo recipe's augmentation in front, whatever the backbone
        plan = recipe.describe(None if settings["pretrained"] else settings["model"])
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
                               progress=progress_lines(say))
        say(f"Wrote report {written}")
    ranks = f" on {comm.size} MPI rank{'s' * (comm.size > 1)}" if comm else ""
    held_out = len(test.source.file_paths) if streaming else len(x_test)
    say(f"Test accuracy: {accuracy:.2%} (loss {loss:.4f}) on {held_out:,} held-out images; "
          f"trained in {seconds:.1f} s{ranks} ({images / max(seconds, 1e-9):,.0f} images/s)")
    if settings["augment"] and chief:        # it learned mirrored and shifted photos alike
        views = "flip-translate"
        averaged = test_time.accuracy(model, test, None, views) if streaming else \
            test_time.accuracy(model, x_test, y_test, views)
        say(f"With test-time augmentation (cnnlab evaluate --tta {views}, the mean of "
            f"{test_time.VIEWS[views]} views of each image): {averaged:.2%}")
    say(f"Saved model to {out}")
    return 0


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


def add_commands(commands) -> None:
    train = add_command(
        commands, "train", cmd_train, "train a model and save it",
        ["cnnlab train", "cnnlab train --model lenet5 --epochs 3 --out lenet.cnnlab",
         "cnnlab train --checkpoint-dir runs/a   # killed? then: cnnlab train --resume runs/a",
         "cnnlab train --data photos/ --model resnet20",
         "cnnlab train --data photos/ --pretrained --fine-tune   # few photos",
         "mpirun -n 2 cnnlab train --distributed"],
        notes="Recipes (what --model NAME trains with unless an option says otherwise):\n"
              + "\n".join(f"  {name}: {recipe.describe(name)}" for name, recipe in zoo.RECIPES.items()))
    # settings default to None so that --resume can tell which ones were given
    train.add_argument("--model", help=f"zoo model: {', '.join(zoo.MODELS)} (default: "
                                       f"{DEFAULTS['model']}); each has a recipe, see below")
    train.add_argument("--data", help=f"a dataset name (mnist_sample, mnist, fashion_mnist, "
                                      f"cifar10, lfw_faces), an .npz, or a folder with one "
                                      f"subfolder of "
                                      f"images per class (default: {DEFAULTS['data']})")
    train.add_argument("--image-size", type=positive_int,
                       help="for a folder: images are resized to this square size (default: "
                            "the recipe's)")
    train.add_argument("--color-mode", choices=["grayscale", "rgb", "rgba"],
                       help=f"for a folder (default: {DEFAULTS['color_mode']})")
    train.add_argument("--epochs", type=positive_int,
                       help="passes over the training data (default: the recipe's)")
    train.add_argument("--batch-size", type=positive_int,
                       help="images per step (default: the recipe's)")
    train.add_argument("--optimizer", choices=list(zoo.OPTIMIZER_LR),
                       help="the optimizer (default: the model's recipe, sgd with momentum for "
                            "the digit models)")
    train.add_argument("--lr", type=positive_float,
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
    train.add_argument("--fine-tune", type=positive_int, nargs="?", const=zoo.FINE_TUNE_EPOCHS,
                       metavar="EPOCHS",
                       help=f"with --pretrained: then train every layer EPOCHS more epochs at "
                            f"{zoo.FINE_TUNE_FACTOR:g}x the rate (default "
                            f"{zoo.FINE_TUNE_EPOCHS})")
    train.add_argument("--dtype-policy", choices=["float32", "float64", "mixed_bfloat16"],
                       help="mixed_bfloat16: Keras' mixed precision, float32 variables and "
                            "bfloat16 arithmetic; on the CPU it is emulated (bfloat16's "
                            "numbers, not its speed) (default: float32)")
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
    train.add_argument("--checkpoint-every", type=positive_int, metavar="N",
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
    add_device_option(train)
