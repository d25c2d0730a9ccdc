"""The ``mmfinercam`` command line: one module a command, each a thin ``run(args)`` over the API.

A command module has ``NAME``, ``HELP``, ``add_arguments(p)`` where it takes options, and
``run(args)``; adding a command is one module and one entry in :data:`COMMANDS`.

    mmfinercam localize bird.jpg --target "Cape May warbler" --contrast "Magnolia warbler" --out out/
    mmfinercam demo --out demo/
    mmfinercam models

Every error a user can cause prints one line (``mmfinercam: error: ...``) and exits 2; a run
where some images failed still writes the others and exits 1.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ..errors import MMFinerCAMError
from . import app, batch, bench, demo, evaluate, localize, models, traits

#: the commands, in the order ``--help`` lists them
COMMANDS = (localize, evaluate, demo, bench, batch, app, traits, models)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser, every command added.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="mmfinercam",
        description="Localize concepts named in words, and what separates them from similar ones.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        if hasattr(command, "add_arguments"):  # a command without options has none
            command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command.

    Args:
        argv: the arguments (default: the process's).

    Returns:
        The exit code: 0 done, 1 done with failed images, 2 nothing done (one line says why),
        130 interrupted.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = "mmfinercam " + shlex.join(argv)  # as given, for the reports
    try:
        return args.run(args)
    except (MMFinerCAMError, ValueError, OSError) as err:  # a missing file, a full disk: one line
        print(f"mmfinercam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmfinercam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
