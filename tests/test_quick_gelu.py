"""QuickGELU in one pass (``mmfinercam.quick_gelu``) against the module's three.

As for the other kernels: under Triton's interpreter in a subprocess (this file run as a
script) in fp32 and fp16, and compiled by Triton for Hopper and Ampere here, without a GPU.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import counted_calls, rel_err, run_interpreted
from torch import nn

from mmfinercam.explain.tower import dense_tokens
from mmfinercam.kernels import aot, quick_gelu

pytest.importorskip("triton")
open_clip = pytest.importorskip("open_clip")


def interpreted_checks() -> dict:
    """Run under TRITON_INTERPRET=1: the kernel against the module, case by case."""
    torch.manual_seed(0)
    found = {}
    act = open_clip.transformer.QuickGELU()
    cases = {"mlp activations": (2, 197, 384), "ragged": (7, 13), "none": (0, 384)}
    for dtype in (torch.float32, torch.float16):
        for name, shape in cases.items():
            x = torch.randn(shape).mul(4).to(dtype)
            with torch.no_grad(), counted_calls(quick_gelu, "plan_quick_gelu") as launches:
                out = quick_gelu.activation(x, act)
            ref = act(x)
            key = f"{str(dtype)[6:]} {name}"
            found[f"launches {key}"] = len(launches)
            found[f"same shape and dtype {key}"] = out.shape == ref.shape and out.dtype == dtype
            found[f"max diff {key}"] = (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0
            found[f"differ {key}"] = (out != ref).float().mean().item() if out.numel() else 0.0

    # OpenAI-style towers (QuickGELU) in fp16, open_clip's and transformers', fused or not
    import mmfinercam as mf
    from mmfinercam.testing import TINY_VIT_CONFIG, build_tiny_open_clip, open_clip_to_transformers

    model = build_tiny_open_clip(config={**TINY_VIT_CONFIG, "quick_gelu": True}, seed=0).half()
    towers = {
        "open_clip": mf.Localizer.from_open_clip(model, None, name="tiny").backend.vision,
        "transformers": mf.Localizer.from_transformers(open_clip_to_transformers(model), None).backend.vision,
    }
    pixels = torch.randn(2, 3, 64, 64).half()
    for name, tower in towers.items():
        with torch.inference_mode():
            with counted_calls(quick_gelu, "plan_quick_gelu") as launches:
                fused = dense_tokens(tower, pixels)
            with quick_gelu.fused(False):
                plain = dense_tokens(tower, pixels)
        found[f"tower {name} launches"] = len(launches)
        found[f"tower {name} tokens"] = rel_err(fused.tokens, plain.tokens)
        found[f"tower {name} embedding"] = rel_err(fused.global_embedding, plain.global_embedding)
    found["tower blocks"] = len(towers["open_clip"].blocks)
    return found


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(__file__)


def test_fused_quick_gelu_is_the_modules_to_the_last_bit(interpreted):
    for key, launches in interpreted.items():
        if not key.startswith("launches"):
            continue
        case = key[len("launches ") :]
        assert launches == 1 and interpreted[f"same shape and dtype {case}"], case
        if case.startswith("float16"):  # each step rounded as PyTorch rounds it: the same numbers
            assert interpreted[f"max diff {case}"] == 0.0, case
        else:  # the sigmoid's exponential and division in fp32's last bit
            assert interpreted[f"max diff {case}"] < 2e-6, case


def test_openai_style_towers_take_the_kernel_in_every_block(interpreted):
    blocks = interpreted["tower blocks"]
    for backend in ("open_clip", "transformers"):
        # every block's MLP (the last block's for the class token alone)
        assert interpreted[f"tower {backend} launches"] == blocks, backend
        assert interpreted[f"tower {backend} tokens"] < 1e-6, backend
        assert interpreted[f"tower {backend} embedding"] < 1e-6, backend


@pytest.mark.parametrize("gpu", [("cuda", 90, 32), ("cuda", 80, 32)], ids=["sm_90", "sm_80"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_compiles_with_whole_vector_loads_and_no_spills(gpu, dtype):
    x = torch.empty(256 * 197, 3072, dtype=dtype)  # ViT-B/16's MLP activations at batch 256
    _, launch = quick_gelu.plan_quick_gelu(x)
    compiled = aot.compile_ahead(launch, gpu)
    assert aot.resource_usage(compiled)["spilled"] == 0
    ptx = compiled.asm["ptx"]
    assert set(re.findall(r"ld\.global\S*", ptx)) == {"ld.global.v4.b32"}, dtype
    assert set(re.findall(r"st\.global\S*", ptx)) == {"st.global.v4.b32"}, dtype


def test_only_quick_gelus_and_only_on_a_gpu():
    import transformers.activations

    x = torch.randn(4, 8)
    quick = [open_clip.transformer.QuickGELU(), transformers.activations.QuickGELUActivation()]
    assert all(quick_gelu.is_quick_gelu(act) for act in quick)
    assert not any(quick_gelu.is_quick_gelu(act) for act in (nn.GELU(), nn.SiLU(), nn.Identity()))
    assert not quick_gelu.takes_kernel(x, quick[0])  # no GPU and no interpreter here
    torch.testing.assert_close(quick_gelu.activation(x, quick[0]), x * torch.sigmoid(1.702 * x))


if __name__ == "__main__":
    print(json.dumps(interpreted_checks()))
