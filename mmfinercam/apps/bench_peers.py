"""The peers ``mmfinercam bench`` times ours against: gem_torch and pytorch-grad-cam.

* ``gem_torch``: the reference GEM (gem_torch 1.0.1 on open_clip 2.23, kept running in a
  subprocess with ``PYTHONPATH=<ref dir>`` that makes one call whenever asked; install with
  ``pip install --no-deps --target .gem-ref open_clip_torch==2.23.0 gem_torch==1.0.1``). It
  re-encodes the prompts on every call;
* ``grad-cam``: pytorch-grad-cam's ``FinerCAM`` on CLIP through a hand-written wrapper, one
  backward pass per concept map.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .timing import Timing

REF_WORKER = Path(__file__).resolve().parents[2] / "benchmarks" / "gem_torch_worker.py"


def prompts(k: int) -> list[str]:
    """``k`` distinct prompts for timing.

    Args:
        k: how many.

    Returns:
        The prompts.
    """
    return [f"a photo of a bird with trait number {i}." for i in range(k)]


def peer(
    name: str, measure_peer: Callable[[], list[Timing]], log: Callable[[str], None]
) -> list[Timing] | None:
    """A peer's timings, or None (said in one line) where it cannot run in this setting.

    A precision a peer does not support, say: our own figures stand without it.

    Args:
        name: the peer's name.
        measure_peer: its measurement.
        log: where the line goes.

    Returns:
        Its timings, or None.
    """
    try:
        return measure_peer()
    except Exception as err:  # noqa: BLE001 - any failure of a third-party peer
        log(f"{name}: failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return None


@contextmanager
def gem_torch_peer(
    model: Any, spec: dict, x: torch.Tensor, ref_dir: str | Path, log: Callable[[str], None]
) -> Iterator[Callable[[str], None] | None]:
    """The reference GEM in its own process and environment, same weights and inputs, 100 prompts.

    Args:
        model: the open_clip model timed.
        spec: its name and config, for the worker to build the same model.
        x: the images.
        ref_dir: where gem_torch and open_clip 2.23 are installed.
        log: where progress lines go.

    Yields:
        ``call(kind)`` that runs one ``"full"`` or ``"visual"`` call and waits for it, or None
        where it cannot run.
    """
    ref_dir = Path(ref_dir)
    if not (ref_dir / "gem").is_dir() or not REF_WORKER.is_file():
        log(f"gem_torch: skipped (no reference in {ref_dir}; see the module docstring)")
        yield None
        return
    if x.dtype != torch.float32:
        log("gem_torch: measured in fp32 only (its code assumes fp32)")
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(x.cpu(), tmp / "images.pt")
        (tmp / "prompts.json").write_text(json.dumps({"prompts": prompts(100), **spec}))
        path = [str(ref_dir.resolve()), os.environ.get("PYTHONPATH", "")]  # the reference comes first
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
        proc = subprocess.Popen(
            [sys.executable, str(REF_WORKER), str(tmp), str(x.device)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def answer(expected: str) -> None:
            """Wait for the worker's word (anything else it prints is passed over)."""
            for line in stdout:
                if line.strip() == expected:
                    return
            proc.wait()
            last = (stderr.read().strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"the worker ended: {last}")

        def call(kind: str) -> None:
            stdin.write(kind + "\n")
            stdin.flush()
            answer("done")

        try:
            answer("ready")
        except RuntimeError as err:
            log(f"gem_torch: failed ({err})")
            yield None
            return
        try:
            yield call
        finally:
            stdin.close()
            proc.wait()


def gradcam_peer(
    model: Any, loc: Any, x: torch.Tensor, k: int, log: Callable[[str], None]
) -> Callable[[], None] | None:
    """pytorch-grad-cam's FinerCAM on CLIP through a wrapper, one CAM call per concept.

    Args:
        model: the open_clip model timed.
        loc: its localizer (for the prompts' embeddings).
        x: the images.
        k: maps a call.
        log: where progress lines go.

    Returns:
        A call making all ``k`` maps of the batch, or None without grad-cam.
    """
    try:
        from pytorch_grad_cam import FinerCAM
    except ImportError:
        log("grad-cam: skipped (pip install grad-cam)")
        return None
    text = loc.encode_text(prompts(k), loc.templates).to(x.dtype)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            z = F.normalize(self.model.encode_image(images), dim=-1)
            return self.model.logit_scale.exp() * z @ text.T

    grid = x.shape[-1] // loc.patch_size[0]

    def reshape(t: torch.Tensor) -> torch.Tensor:
        t = t[:, 1:] if t.shape[1] == grid * grid + 1 else t
        return t.reshape(t.shape[0], grid, grid, t.shape[-1]).permute(0, 3, 1, 2)

    cam = FinerCAM(Wrapper(), [model.visual.transformer.resblocks[-1].ln_1], reshape_transform=reshape)

    def all_maps() -> None:
        for target in range(k):
            cam(x, target_idx=target)

    return all_maps
