"""``cnnlab serve``: the local web app, on the loopback address, behind a token."""

from __future__ import annotations

import os
import sys

from cnnlab import zoo
from cnnlab.cli.options import add_command, positive_int
from cnnlab.errors import ConfigError


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
                    index=index, detector=args.detector, data_root=args.data_root,
                    verifier=args.verifier)
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


def add_commands(commands) -> None:
    serve = add_command(
        commands, "serve", cmd_serve, "a local web app: draw, train, explain, search, detect",
        ["cnnlab serve                # then open the address it prints (with its ?token=)",
         "cnnlab serve lenet.cnnlab --port 8080",
         "cnnlab serve --data-root ~/photos   # the Train page trains on folders there",
         "cnnlab serve --index photos.index   # and the Search page at /search"],
        details="With no MODEL it uses the article's CNN trained on "
        "the bundled digits, training it on first start (saved under $CNNLAB_HOME/models).",
        notes="It answers only its user: every API request needs the token it prints, pages of "
              "other\norigins are refused, and only localhost and loopback addresses are "
              "answered.")
    serve.add_argument("model", nargs="?",
                       help=zoo.model_help() + " (default: the digits model trained here)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks "
                                                             "a free one)")
    serve.add_argument("--epochs", type=positive_int, default=3,
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
    serve.add_argument("--verifier", metavar="FILE", action="append",
                       help="a second .cnnlab classifier that looks again at each box the "
                            "detector finds, on the Detect and Video pages (as cnnlab detect's "
                            "--verifier); repeated, a cascade")
