"""Timing calls against each other: interleaved rounds, paired ratios, the machine, reports.

The calls a ratio compares are measured **interleaved**, round by round (each call once a
round, in an order that rotates every round), so that a machine's drift between minutes (a
2-core CPU's speed moves by 10 %) falls on both sides alike. A ratio is the median over rounds
of each round's own ratio, with its range over the rounds. Ratios are what to read: absolute
times depend on the machine.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Timing:
    """One measured call.

    Args:
        name: what was timed.
        seconds: the median seconds a call.
        images: images a call.
        peak_mb: the peak GPU memory of a call, in MB (None on the CPU).
        extra: what else describes the call (concepts, size, batch).
        samples: the seconds of each round, in order.
        group: timings of one group were measured in the same rounds.
    """

    name: str
    seconds: float  #: median per call
    images: int  #: images per call
    peak_mb: float | None = None
    extra: dict = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  #: seconds of each round, in order
    group: int | None = None  #: timings of one group were measured in the same rounds

    @property
    def images_per_s(self) -> float:
        """Images a second."""
        return self.images / self.seconds


def synchronize(device: torch.device) -> None:
    """Wait for a CUDA device's queued work (timings on a GPU are otherwise of the launches).

    Args:
        device: the device.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_rounds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3, warmup: int = 1
) -> dict[str, tuple[list[float], float | None]]:
    """Seconds of every call of each function, interleaved.

    ``repeats`` rounds each call every function once, starting one further along each round, so a
    machine's drift falls on every function alike.

    Args:
        fns: name -> the call to time.
        device: where they run.
        repeats: rounds.
        warmup: untimed rounds first.

    Returns:
        Name -> (the seconds of each round, the peak memory in MB on CUDA or None).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {name: 0.0 for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**20)
    return {name: (times[name], peaks[name] if device.type == "cuda" else None) for name in names}


def paired_ratio(numerator: Timing, denominator: Timing) -> tuple[float, float, float]:
    """The median and range over rounds of one call's time over another's, round by round.

    Args:
        numerator: one timing.
        denominator: another, measured in the same rounds.

    Returns:
        (median, smallest, largest) of the rounds' ratios.

    Raises:
        ValueError: when the two were not measured in the same rounds.
    """
    if numerator.group is None or numerator.group != denominator.group:
        raise ValueError(f"{numerator.name!r} and {denominator.name!r} were not measured in the same rounds")
    pairs = [a / b for a, b in zip(numerator.samples, denominator.samples)]
    return statistics.median(pairs), min(pairs), max(pairs)


def machine() -> str:
    """The machine timings are of.

    Returns:
        The GPU's name, or the CPU's model and the threads torch uses.
    """
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def to_markdown(report: dict, command: str | None = None) -> str:
    """A report as RESULTS.md tables: the command, the machine, every timing and every ratio.

    Args:
        report: a report of :func:`run`.
        command: the command that made it (default: the report's).

    Returns:
        Markdown.
    """
    command = command or report.get("command", "mmfinercam bench")
    compiled = f", torch.compile {report['compile']}" if report.get("compile") else ""
    if report.get("compile_mode"):
        compiled += f" mode={report['compile_mode']}"
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {report['machine']} ({report['device']}, {report['dtype']}{compiled}, "
        f"torch {report['torch']}); "
        f"model {report['model']} (random weights), batch {report['batch']}, {report['size']} px, "
        f"median of {report['repeats']} interleaved rounds.",
        "",
        "| measurement | ms / call | images/s | peak MB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['name']} | {t['ms']:.1f} | {t['images_per_s']:.2f} | "
        + (f"{t['peak_mb']:.0f} |" if t.get("peak_mb") else "– |")
        for t in report["timings"]
    ]
    ranges = report.get("ratio_ranges", {})
    lines += ["", "| ratio | value | range over rounds |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {_range(ranges.get(k))} |" for k, v in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def _range(bounds: list[float] | None) -> str:
    return f"{bounds[0]:.2f}–{bounds[1]:.2f}" if bounds else "–"


def write_markdown(report: dict, path: str | Path, command: str | None = None) -> None:
    """Write :func:`to_markdown` of a report to a file.

    Args:
        report: a report of :func:`run`.
        path: the file.
        command: the command that made it.
    """
    Path(path).write_text(to_markdown(report, command))
