"""What defines a batch run, and what a process reports of it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .._checks import check_whole
from ..errors import ConfigError
from ..options import FinerOptions
from .inputs import PromptSet

FORMAT_VERSION = 2  #: of ``run.json`` and ``manifest.json``


@dataclass
class BatchJob:
    """Everything that defines a run's output; a resumed run must match it.

    Args:
        out: the output folder.
        prompt_sets: the sets every image is explained for (empty: the rows' own targets).
        model: the model's name (as for :func:`mmfinercam.load`).
        pretrained: its pretrained tag or checkpoint.
        backend: a backend named outright.
        dtype: its precision.
        options: how the maps are made; batch runs the dense methods, one view.
        vocabulary: automatic contrasts for sets (or rows) without explicit ones.
        templates: prompt templates (default: the model's).
        chunk_size: images a chunk (the unit of resuming).
        top_k: the run's prompts each image's record names as its most similar.

    Raises:
        ConfigError: for settings batch cannot run (a gradient CAM, several views) or bad counts.
    """

    out: str
    prompt_sets: list[PromptSet] = field(default_factory=list)
    model: str = "testbed"
    pretrained: str | None = None
    backend: str | None = None
    dtype: str | None = None
    options: FinerOptions = field(default_factory=FinerOptions)
    vocabulary: str | None = None
    templates: list[str] | None = None
    chunk_size: int = 256
    top_k: int = 5

    def __post_init__(self) -> None:  # refused before any model is loaded or file written
        if not isinstance(self.options, FinerOptions):
            raise ConfigError(f"options must be FinerOptions, got {type(self.options).__name__}")
        if self.options.gradient:
            raise ConfigError(
                f"batch runs the dense methods; {self.options.method!r} needs a backward pass per "
                "image and prompt: use `mmfinercam localize` for it"
            )
        if self.options.views > 1:
            raise ConfigError("batch makes one view an image (shifts=1, flip=False): use `localize --smooth`")
        self.chunk_size = check_whole(self.chunk_size, "chunk_size")
        self.top_k = check_whole(self.top_k, "top_k", 0)

    def identity(self) -> dict[str, Any]:
        """The job as JSON-ready data, the output folder left out.

        Returns:
            Setting name -> value.
        """
        d = asdict(self)
        d.pop("out")
        d["options"] = self.options.as_dict()
        d["prompt_sets"] = [asdict(s) for s in self.prompt_sets]
        return d


@dataclass
class BatchReport:
    """What one process did of a run.

    Args:
        chunks_done: chunks this process computed.
        chunks_skipped: chunks already done (resume) or another shard's.
        images: images explained.
        failed: images that could not be used.
        seconds: wall time.
        finished: every chunk of the run is done and the merged files are written.
    """

    chunks_done: int
    chunks_skipped: int
    images: int
    failed: int
    seconds: float
    finished: bool

    @property
    def images_per_second(self) -> float:
        """Images explained a second."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def shard_from_env() -> tuple[int, int]:
    """This process's share of a run, from ``torchrun`` / ``accelerate`` environment variables.

    Returns:
        (rank, world size); (0, 1) without them.
    """
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
