"""``mmfinercam models``: the known model names, whether their weights are here, the backends."""

from __future__ import annotations

import argparse

from ..backends import available_backends, backend_spec, known_models, weights_present

#: the name the command line calls it
NAME = "models"
#: its line in ``mmfinercam --help``
HELP = "list the known models and the backends"


def run(args: argparse.Namespace) -> int:
    """List the shipped models, the backends and which weights are on disk.

    Args:
        args: the parsed ``models`` options.

    Returns:
        0.
    """
    print("Known models (mmfinercam localize --model NAME, mf.load(NAME)):")
    for name, entry in known_models().items():
        present = "present" if weights_present(name) else "absent"
        source = entry.get("model") or f"(shipped) {entry.get('folder')}"
        source += f" / {entry['pretrained']}" if entry.get("pretrained") else ""
        print(f"  {name:18s} {present:15s} {entry['backend']:13s} {source}  - {entry['description']}")
    print("\nBackends (any name or folder they recognise also works; '<backend>:<name>' names one outright):")
    for name in available_backends():
        print(f"  {name:13s} {backend_spec(name).description}")
    return 0
