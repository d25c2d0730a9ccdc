"""Launching a batch job: one process, a shard of several (torchrun, accelerate), or Ray actors.

Shards: process ``rank`` of ``world`` takes chunks ``c % world == rank`` (from ``RANK`` and
``WORLD_SIZE`` as set by ``torchrun`` or ``accelerate launch``, or ``--shard i/n``); chunk files
do not depend on the sharding, so merged output equals a single process's. With Ray, chunks
are handed to GPU (or CPU) actors through Ray Data ``map_batches``, writing to the same folder.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from ..errors import ConfigError
from .inputs import Collection
from .job import BatchJob, BatchReport, shard_from_env
from .runner import BatchRunner
from .store import BatchOutput


def run_distributed(
    job: BatchJob,
    collection: Collection,
    *,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
) -> BatchReport:
    """Run this process's shard of a job.

    Under torchrun or accelerate (``WORLD_SIZE`` > 1 with a rendezvous), each rank uses
    ``cuda:LOCAL_RANK`` when CUDA is there and no other device is asked for, and rank 0 merges
    after a barrier.

    Args:
        job: the run.
        collection: its inputs.
        batch_size: images a tower pass.
        workers: DataLoader worker processes.
        progress: show a progress bar.
        shard: (rank, world) by hand; default from the launcher's environment.
        device: where to run (default: CUDA when there).

    Returns:
        What this process did.

    Raises:
        ConfigError: for a shard out of range.
    """
    rank, world = shard or shard_from_env()
    if not 0 <= rank < world:
        raise ConfigError(f"shard {rank}/{world} is out of range")
    group = False
    if shard is None and world > 1 and "MASTER_ADDR" in os.environ:
        import torch.distributed as dist

        if torch.cuda.is_available() and device in (None, "cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device and device.startswith("cuda") else "gloo")
        group = True
    runner = BatchRunner(job, collection, device=device)
    if group:
        import torch.distributed as dist

        if rank == 0:
            runner.prepare_output()
        dist.barrier()  # run.json exists before anyone writes
    report = runner.run(
        rank=rank, world=world, batch_size=batch_size, workers=workers, progress=progress, merge=not group
    )
    if group:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            report.finished = runner.finalize()
        dist.barrier()  # no rank exits (and so ends the launch) before the merge is written
        dist.destroy_process_group()
    return report


class _ChunkActor:
    """A Ray Data actor: loads the model once, then computes the chunks it is handed."""

    def __init__(
        self, job: BatchJob, collection: Collection, batch_size: int, workers: int, device: str | None
    ) -> None:
        self.runner = BatchRunner(job, collection, device=device)  # None: CUDA where the actor has a GPU
        self.batch_size, self.workers = batch_size, workers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done, failed = [], []
        for c in batch["chunk"]:
            if self.runner.chunk_file(int(c)).exists():  # another actor (or an earlier run) did it
                done.append(0)
                failed.append(0)
                continue
            n_ok, n_failed = self.runner.process_chunk(
                int(c), batch_size=self.batch_size, workers=self.workers
            )
            done.append(n_ok)
            failed.append(n_failed)
        return {"chunk": np.asarray(batch["chunk"]), "images": np.asarray(done), "failed": np.asarray(failed)}


def run_with_ray(
    job: BatchJob,
    collection: Collection,
    *,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    batch_size: int = 32,
    workers: int = 0,
    address: str | None = None,
    device: str | None = None,
) -> BatchReport:
    """Chunks as a Ray Dataset, computed by model-holding actors via ``map_batches``.

    Workers write to ``job.out``, which must be on a file system every node sees.

    Args:
        job: the run.
        collection: its inputs.
        actors: how many actors (each holds the model).
        gpus_per_actor: GPUs each actor asks Ray for.
        batch_size: images a tower pass.
        workers: DataLoader workers inside each actor.
        address: a running cluster to join (``"auto"``); None starts a local Ray.
        device: where actors run (default: their GPU when ``gpus_per_actor`` gives them one).

    Returns:
        What the run did.

    Raises:
        ConfigError: when Ray is not installed.
    """
    try:
        import ray
    except ImportError as err:
        raise ConfigError("the Ray path needs `pip install 'mmfinercam[ray]'`") from err
    output = BatchOutput(job, collection)  # the driver holds no model; the actors do
    output.prepare_output()
    todo = [c for c in range(output.n_chunks()) if not output.chunk_file(c).exists()]
    start = time.time()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        results = []
        if todo:
            ds = ray.data.from_items([{"chunk": c} for c in todo])
            results = ds.map_batches(
                _ChunkActor,
                fn_constructor_kwargs={
                    "job": job,
                    "collection": collection,
                    "batch_size": batch_size,
                    "workers": workers,
                    "device": device,
                },
                batch_size=1,
                concurrency=actors,
                num_gpus=gpus_per_actor,
                num_cpus=1,
            ).take_all()
    finally:
        if started_here:
            ray.shutdown()
    images = sum(int(r["images"]) for r in results)
    failed = sum(int(r["failed"]) for r in results)
    finished = output.finalize()
    return BatchReport(
        len(todo), output.n_chunks() - len(todo), images, failed, time.time() - start, finished
    )
