"""``mmfinercam app``: a local web app to upload an image, type concepts and compare maps."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from ..errors import ConfigError

#: the name the command line calls it
NAME = "app"
#: its line in ``mmfinercam --help``
HELP = "a local web app: upload an image, type concepts, compare maps"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mmfinercam app``.

    Args:
        p: the ``app`` command's parser.
    """
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models", nargs="+", default=None, help="models offered (default: those present)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted")


def run(args: argparse.Namespace) -> int:
    """Run the command (until Ctrl-C).

    Args:
        args: the parsed ``app`` options.

    Returns:
        0.

    Raises:
        ConfigError: when Gradio is not installed.
    """
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("the web app needs Gradio: pip install 'mmfinercam[app]'")
    from ..apps.web import launch

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: listening on {args.host}: anyone who can reach it can use the app", file=sys.stderr)
    print(f"mmfinercam app on http://{args.host}:{args.port} (Ctrl-C stops it)")
    launch(args.host, args.port, models=args.models, max_upload_mb=args.max_upload_mb)
    return 0
