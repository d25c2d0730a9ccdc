"""Running a batch job with one loaded model: chunks in, maps and records out.

Each chunk is read by a torch DataLoader (decoding and preprocessing in worker processes), run
through the image tower once per same-sized group for every prompt set, explained by the one
dense Finer-CAM path (:func:`~mmfinercam.explain.dense.explain_dense`) with every prompt of the
run encoded once, and written as its maps and its :class:`~mmfinercam.results.MapRecord` rows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import prompts as prompt_library
from .._checks import check_contrast_ranks
from .._device import to_host
from ..explain.contrasts import ContrastPlan
from ..explain.dense import explain_dense, global_similarity
from ..localizer import Localizer, load
from ..metrics import energy_pointing_game
from ..pixels import check_short_side
from ..results import MapRecord, grid_statistics, make_record
from .inputs import Collection, ImageRows, PromptSet, Row, collate
from .job import BatchJob, BatchReport
from .store import BatchOutput, map_file


class BatchRunner(BatchOutput):
    """Runs a :class:`~mmfinercam.batch.job.BatchJob` over a collection with one loaded model.

    Args:
        job: the run.
        collection: its inputs.
        localizer: a loaded model to use (default: the job's model, loaded here).
        device: where to load it (default: CUDA when there).

    Raises:
        ConfigError: for a shorter side that holds no patch, or unusable contrast ranks.
    """

    def __init__(
        self,
        job: BatchJob,
        collection: Collection,
        localizer: Localizer | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(job, collection)
        self.loc = localizer or load(
            job.model,
            job.pretrained,
            backend=job.backend,
            device=device,
            dtype=job.dtype,
            templates=job.templates,
        )
        if job.options.short_side is not None:  # refused now, not image by image
            check_short_side(job.options.short_side, self.loc.patch_size)
        vocabulary = list(dict.fromkeys(prompt_library.load(job.vocabulary))) if job.vocabulary else []
        texts = [s.target for s in job.prompt_sets] + [c for s in job.prompt_sets for c in s.contrast]
        if self.per_row:
            texts += [r.target or "" for r in collection.rows] + [
                c for r in collection.rows for c in r.contrast
            ]
        self.prompts = list(dict.fromkeys(texts + vocabulary))  #: every prompt of the run, once
        self.prompt_index = {p: i for i, p in enumerate(self.prompts)}
        # the ranks kept for this vocabulary (one of its entries may be a set's target)
        ranks = check_contrast_ranks(job.options.contrast_ranks, len(vocabulary) - 1) if vocabulary else []
        self.plan = ContrastPlan(
            torch.tensor([self.prompt_index[v] for v in vocabulary], dtype=torch.long), ranks
        )
        templates = self.loc.templates if job.templates is None else job.templates
        self.text = self.loc.encode_text(self.prompts, templates)  # P×E, on the device

    def _sets_of(self, row: Row) -> list[PromptSet]:
        if self.per_row:
            return [PromptSet(row.target or "", row.target or "", row.contrast)]
        return self.job.prompt_sets

    def run(
        self,
        *,
        rank: int = 0,
        world: int = 1,
        batch_size: int = 32,
        workers: int = 2,
        progress: bool = True,
        merge: bool = True,
    ) -> BatchReport:
        """Process this shard's chunks that are not done yet.

        Args:
            rank: this process's share (chunks ``c % world == rank``).
            world: how many shares there are.
            batch_size: images a tower pass.
            workers: DataLoader worker processes.
            progress: show a progress bar.
            merge: merge if the whole run is then done (whichever shard ends last does it; the
                files are written atomically).

        Returns:
            What this process did.
        """
        from tqdm.auto import tqdm

        self.prepare_output()
        todo = [c for c in range(self.n_chunks()) if c % world == rank and not self.chunk_file(c).exists()]
        total = sum(len(self.chunk_rows(c)) for c in todo)
        desc = f"batch {rank}/{world}" if world > 1 else "batch"
        bar = tqdm(total=total, desc=desc, unit="img", disable=not progress or None, smoothing=0.1)
        start, images, failed = time.time(), 0, 0
        for c in todo:
            n_ok, n_failed = self.process_chunk(c, batch_size=batch_size, workers=workers, bar=bar)
            images, failed = images + n_ok, failed + n_failed
        bar.close()
        finished = self.finalize() if merge else self.all_done()
        return BatchReport(
            len(todo), self.n_chunks() - len(todo), images, failed, time.time() - start, finished
        )

    def _loader(self, indices: list[int], batch_size: int, workers: int) -> Iterable[list[dict[str, Any]]]:
        cfg = self.loc.backend.image_config
        side = self.job.options.short_side or min(cfg.size)
        data = ImageRows(self.collection, indices, side, self.loc.patch_size, cfg.mean, cfg.std)
        return torch.utils.data.DataLoader(
            data,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.loc.device.type == "cuda",
            persistent_workers=False,
        )

    def process_chunk(
        self, c: int, *, batch_size: int = 32, workers: int = 2, bar: Any = None
    ) -> tuple[int, int]:
        """Compute and write chunk ``c``.

        Args:
            c: the chunk.
            batch_size: images a tower pass.
            workers: DataLoader worker processes.
            bar: a progress bar to advance.

        Returns:
            (images done, images failed).
        """
        indices = self.chunk_rows(c)
        records: dict[int, list[dict[str, Any]]] = {}
        maps: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        n_failed = 0
        for items in self._loader(indices, batch_size, workers):
            groups: dict[tuple[int, ...], list[dict[str, Any]]] = defaultdict(list)
            for it in items:
                if it["error"] is not None:
                    row = self.collection.rows[it["index"]]
                    failed = MapRecord(row.key, self._source_name(row), status="failed", error=it["error"])
                    records[it["index"]] = [failed.as_dict()]
                    n_failed += 1
                else:
                    groups[tuple(it["pixels"].shape)].append(it)
            for group in groups.values():
                for it, scores, recs in zip(group, *self._localize(group)):
                    grid = (int(scores.shape[-2]), int(scores.shape[-1]))
                    for rec in recs:
                        rec.update(map_file=map_file(c, grid), map_index=len(maps[grid]))
                    maps[grid].append(scores.numpy().astype(np.float16))
                    records[it["index"]] = recs
            if bar is not None:
                bar.update(len(items))
        self.write_chunk(c, [rec for i in indices for rec in records[i]], maps)
        return len(indices) - n_failed, n_failed

    @torch.inference_mode()
    def _localize(self, group: list[dict[str, Any]]) -> tuple[list[Tensor], list[list[dict[str, Any]]]]:
        """One tower pass for a same-sized group; every prompt set in one gather and matmul."""
        job, loc = self.job, self.loc
        pixels = torch.stack([it["pixels"] for it in group]).to(loc.device, non_blocking=True)
        tokens = loc.image_tokens(pixels, method=job.options.method, depth=job.options.depth)
        rows = [self.collection.rows[it["index"]] for it in group]
        sets = [self._sets_of(r) for r in rows]
        target = torch.tensor([[self.prompt_index[p.target] for p in ss] for ss in sets], device=loc.device)
        explicit = [[[self.prompt_index[c] for c in p.contrast] for p in ss] for ss in sets]
        similarity = global_similarity(tokens, self.text)  # B×P
        choice = self.plan.choose(similarity, target, *ContrastPlan.explicit_lists(explicit, loc.device))
        dense = explain_dense(
            tokens, self.text, target, choice, alpha=job.options.alpha, weighting=job.options.weighting,
            logit_scale=loc.backend.logit_scale,
        )  # fmt: skip
        top = similarity.topk(min(job.top_k, similarity.shape[1]), dim=1)
        stats = grid_statistics(dense.scores)
        host = dict(zip(stats, to_host(*stats.values())))
        names = (
            "index",
            "valid",
            "weights",
            "target_similarity",
            "contrast_similarity",
            "top_index",
            "top_values",
        )
        tensors = (
            choice.index,
            choice.valid,
            dense.weights,
            choice.target_similarity,
            choice.contrast_similarity,
        )
        host |= dict(zip(names, to_host(*tensors, top.indices, top.values)))
        energies = mask_energies([it["mask"] for it in group], dense.scores)
        grid = (int(dense.scores.shape[-2]), int(dense.scores.shape[-1]))
        records = [
            image_records(self, i, it, row, sets[i], host, grid, None if energies is None else energies[i])
            for i, (it, row) in enumerate(zip(group, rows))
        ]
        return list(dense.scores.float().cpu()), records

    def _source_name(self, row: Row) -> str:
        return source_name(self.collection, row)


def source_name(collection: Collection, row: Row) -> str:
    """How a row's image is named in the outputs.

    Args:
        collection: its collection.
        row: the row.

    Returns:
        Its path, or ``#N`` for row N of a ``datasets`` dataset.
    """
    return f"#{row.source}" if collection.kind == "datasets" else str(row.source)


def image_records(
    runner: BatchRunner,
    i: int,
    item: dict[str, Any],
    row: Row,
    sets: list[PromptSet],
    host: dict[str, Tensor],
    grid: tuple[int, int],
    energies: list[float | None] | None,
) -> list[dict[str, Any]]:
    """One image's records, a prompt set each, from its batch's numbers on the host.

    Args:
        runner: the run (its prompts and settings).
        i: the image's row in the batch.
        item: its loaded item (size, mask error).
        row: its input row.
        sets: its prompt sets.
        host: the batch's numbers: :func:`~mmfinercam.results.grid_statistics` and the
            choice's indices, validity, weights and similarities, B×S(×D) each.
        grid: the score grid's (rows, columns).
        energies: each set's mask energy, or None without a mask.

    Returns:
        The records as dicts.
    """
    size = (int(item["size"][0]), int(item["size"][1]))
    top_prompts = [runner.prompts[int(k)] for k in host["top_index"][i]]
    stat_names = ("peak", "score_max", "score_min", "score_mean", "positive_fraction")
    out = []
    for j, ps in enumerate(sets):
        used = host["valid"][i, j].nonzero().flatten().tolist()
        record = make_record(
            key=row.key,
            source=source_name(runner.collection, row),
            target=ps.target,
            contrast=[runner.prompts[int(host["index"][i, j, k])] for k in used],
            weights=[float(host["weights"][i, j, k]) for k in used],
            target_similarity=float(host["target_similarity"][i, j]),
            contrast_similarity=[float(host["contrast_similarity"][i, j, k]) for k in used],
            stats={k: float(host[k][i, j]) for k in stat_names},
            size=size,
            grid=grid,
            error=item["mask_error"],  # the map stands; only its mask energy is missing
            prompt_set=ps.name,
            set_index=j,
            alpha=runner.job.options.alpha,
            method=runner.job.options.method,
            mask_energy=None if energies is None else energies[j],
            top_prompts=top_prompts,
            top_similarities=[float(v) for v in host["top_values"][i]],
        )
        out.append(record.as_dict())
    return out


def mask_energies(masks: list[Tensor | None], scores: Tensor) -> list[list[float | None]] | None:
    """The share of each positive map inside its image's mask (energy-based pointing).

    Args:
        masks: each image's mask as kept (:func:`~mmfinercam.masks.mask_for_energy`), or None.
        scores: B×S×h×w score maps.

    Returns:
        B×S energies (None for an image without a mask), or None when no image has one.
    """
    if all(m is None for m in masks):
        return None
    out: list[list[float | None]] = []
    for i, mask in enumerate(masks):
        if mask is None:
            out.append([None] * scores.shape[1])
            continue
        up = F.interpolate(  # at the mask's size: the image's, or reduced (masks.mask_for_energy)
            scores[i : i + 1].float(), size=tuple(mask.shape), mode="bilinear", align_corners=False
        )
        out.append(energy_pointing_game(up[0], mask.to(up.device)[None].expand(up.shape[1], -1, -1)).tolist())
    return out
