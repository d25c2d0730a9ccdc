"""Shared fixtures: a tiny random open_clip ViT (CPU) and a synthetic backend with known tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import mmfinercam as mf
from mmfinercam.testing import TINY_VIT_CONFIG, build_tiny_open_clip


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_open_clip(seed=0)


@pytest.fixture(scope="session")
def tiny_localizer(tiny_model):
    import open_clip

    return mf.Localizer.from_open_clip(tiny_model, open_clip.get_tokenizer("ViT-B-16"), name="tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    """The tiny model saved as an open_clip folder (config + safetensors), loadable by path."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-open-clip")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_VIT_CONFIG, "preprocess_cfg": {}})
    )
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture()
def rgb_image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "bird.png"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def sample_images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (96 + 16 * i, 128, 3), dtype=np.uint8) for i in range(3)]


@pytest.fixture()
def no_torch_grad():
    with torch.no_grad():
        yield


def load_errors_offline(tmp_path, *names: str) -> list[str]:
    """The messages of mf.load(name) for each name, offline with an empty HF cache (subprocess,
    since huggingface_hub reads HF_HUB_OFFLINE at import)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = (
        "import sys, mmfinercam as mf\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n        mf.load(name)\n"
        "    except mf.WeightsNotFoundError as e:\n        print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, timeout=180
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(names), proc.stdout + proc.stderr
    return lines


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error of ``out`` against ``ref`` (Frobenius norms, in float64)."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run_interpreted(script: str) -> dict:
    """Run a test file as a script under Triton's interpreter (``TRITON_INTERPRET=1`` is read
    when triton is imported, so in a subprocess) and return the JSON its last line prints."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextmanager
def counted_calls(owner: object, name: str) -> Iterator[list]:
    """Within the block, ``owner.name`` is counted: one entry in the yielded list a call (how
    many fused launches a tower made, say)."""
    calls: list = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


# GPU tests --------------------------------------------------------------------------------------
# Tests marked ``gpu`` run where CUDA is available (``pytest -m gpu`` runs only them) and are
# deselected elsewhere, so the suite never needs a GPU. MMFINERCAM_TEST_DEVICE=cpu runs them on
# the CPU against themselves, to check the tests' own code on a machine without a GPU.
def gpu_test_device() -> torch.device | None:
    name = os.environ.get("MMFINERCAM_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
    return torch.device(name) if name else None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (deselected where there is none)")


def pytest_collection_modifyitems(config, items):
    if gpu_test_device() is not None:
        return
    keep = [item for item in items if "gpu" not in item.keywords]
    dropped = [item for item in items if "gpu" in item.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
