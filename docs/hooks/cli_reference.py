"""MkDocs hook: the command-line reference, made from the parser itself when the site is built.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; each command's ``--help`` replaces
it, so the reference can never drift from the options the commands take.
"""

from __future__ import annotations

import os
from typing import Any

MARKER = "<!-- cli-reference -->"


def reference() -> str:
    """Every command's help as Markdown sections.

    Returns:
        One ``##`` section a command, its help in a code block.
    """
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same width every build
    from mmfinercam.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    sections = [f"```text\n{parser.format_help()}```"]
    for name, sub in commands.items():
        sections.append(f"## `mmfinercam {name}`\n\n```text\n{sub.format_help()}```")
    return "\n\n".join(sections)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Put the reference where the marker is.

    Args:
        markdown: the page's Markdown.
        page: the page.
        config: the site's configuration.
        files: the site's files.

    Returns:
        The Markdown with the reference in place of the marker.
    """
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
