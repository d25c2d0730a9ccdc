"""Batch localization over a collection: resumable, chunked, sharded across processes or Ray.

    mmfinercam batch photos/ --target "red wing" --contrast "blue wing" --out run/
    mmfinercam batch list.csv --out run/                      # per-row target/contrast columns
    torchrun --nproc-per-node 4 -m mmfinercam batch photos/ --prompt-sets sets.json --out run/

* :mod:`.inputs`: folders, CSV/Parquet lists and saved ``datasets`` as rows; prompt sets;
* :mod:`.job`: what defines a run;
* :mod:`.runner`: running it with one model (the one dense Finer-CAM path);
* :mod:`.store`: the output folder, its chunk files and reading results back;
* :mod:`.launch`: one process, shards, or Ray.
"""

from __future__ import annotations

from .inputs import Collection, PromptSet, Row, load_prompt_sets, read_collection
from .job import BatchJob, BatchReport, shard_from_env
from .launch import run_distributed, run_with_ray
from .runner import BatchRunner
from .store import BatchOutput, iter_results, load_map, unusable_masks

__all__ = [
    "BatchJob",
    "BatchOutput",
    "BatchReport",
    "BatchRunner",
    "Collection",
    "PromptSet",
    "Row",
    "iter_results",
    "load_map",
    "load_prompt_sets",
    "read_collection",
    "run_distributed",
    "run_with_ray",
    "shard_from_env",
    "unusable_masks",
]
