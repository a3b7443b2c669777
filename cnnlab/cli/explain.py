"""``cnnlab explain``: the article's concepts (convolution, pooling, ReLU, softmax, the
output-size formula) with real numbers from the engine, and animations of the slide."""

from __future__ import annotations

from cnnlab import outputs
from cnnlab.cli.options import FORMATTER, add_command, non_negative_int, positive_int


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


def add_commands(commands) -> None:
    explain = add_command(
        commands, "explain", cmd_explain,
        "convolution, padding, stride, pooling, ReLU, softmax, with numbers",
        ["cnnlab explain conv --size 6 --kernel 3 --padding 1 --stride 2",
         "cnnlab explain formula 28 5 0 1"])
    topics = explain.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    conv = topics.add_parser(
        "conv", help="slide a kernel over a zero-padded input", formatter_class=FORMATTER,
        epilog="Example:\n  cnnlab explain conv --size 6 --kernel 3 --padding 1 --stride 2 "
               "--gif conv.gif")
    conv.add_argument("--size", type=positive_int, default=6, help="input size (default 6)")
    conv.add_argument("--kernel", type=positive_int, default=3, help="kernel size (default 3)")
    conv.add_argument("--all", action="store_true",
                      help="write out the multiply-add at every position (default: the first 3)")
    conv.add_argument("--padding", type=non_negative_int, default=1,
                      help="zero padding (default 1)")
    conv.add_argument("--stride", type=positive_int, default=2, help="stride (default 2)")
    conv.add_argument("--seed", type=int, default=0, help="which example input (default 0)")
    conv.add_argument("--gif", metavar="PATH", help="also write an animation of the slide")
    conv.add_argument("--overwrite", action="store_true", help="replace --gif if it exists")
    pool = topics.add_parser(
        "pool", help="max and average pooling", formatter_class=FORMATTER,
        epilog="Example:\n  cnnlab explain pool --size 4 --pool 2 --stride 2 --gif pool.gif")
    pool.add_argument("--size", type=positive_int, default=4, help="input size (default 4)")
    pool.add_argument("--pool", type=positive_int, default=2, help="window size (default 2)")
    pool.add_argument("--stride", type=positive_int, default=2, help="stride (default 2)")
    pool.add_argument("--kind", choices=["both", "max", "avg"], default="both")
    pool.add_argument("--seed", type=int, default=0, help="which example input (default 0)")
    pool.add_argument("--gif", metavar="PATH", help="also write an animation (max, or --kind)")
    pool.add_argument("--overwrite", action="store_true", help="replace --gif if it exists")
    relu = topics.add_parser("relu", help="max(0, x) on a feature map", formatter_class=FORMATTER,
                             epilog="Example:\n  cnnlab explain relu")
    relu.add_argument("--seed", type=int, default=0)
    softmax = topics.add_parser(
        "softmax", help="scores to probabilities", formatter_class=FORMATTER,
        epilog="Example:\n  cnnlab explain softmax 2 1 0.1\n"
               "  cnnlab explain softmax -- 1e4 -1e4     # '--' before negative numbers")
    softmax.add_argument("logits", type=float, nargs="*", default=[2.0, 1.0, 0.1],
                         help="the scores (default: 2 1 0.1)")
    formula = topics.add_parser(
        "formula", help="O = floor((W - K + 2P) / S) + 1 with your numbers",
        formatter_class=FORMATTER, epilog="Example:\n  cnnlab explain formula 28 5 0 1")
    for name, text, kind in (("size", "W: input size", positive_int),
                             ("kernel", "K: kernel size", positive_int),
                             ("padding", "P: padding", non_negative_int),
                             ("stride", "S: stride", positive_int)):
        formula.add_argument(name, type=kind, help=text)
