"""The fused residual add and LayerNorm (``mmfinercam.add_norm``) against PyTorch's two passes.

As for the attention kernel (``tests/test_kernels.py``): the kernel runs under Triton's
interpreter in a subprocess (this file run as a script) in fp32 and fp16, and Triton's own
compiler builds it for Hopper and Ampere here, without a GPU.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import counted_calls, rel_err, run_interpreted
from torch import nn

from mmfinercam.explain.tower import dense_tokens
from mmfinercam.kernels import aot
from mmfinercam.kernels import fused_norm as add_norm

pytest.importorskip("triton")


def interpreted_checks() -> dict:
    """Run under TRITON_INTERPRET=1: the kernel against PyTorch, case by case."""
    torch.manual_seed(0)
    found = {}
    cases = [  # name, x, y given, affine
        ("vit-b", torch.randn(2, 197, 768).mul(3), True, True),  # 768 wide: masked to 1,024
        ("width 72, no affine", torch.randn(5, 72), True, False),
        ("no add", torch.randn(3, 17).add(5), False, True),
        ("no rows", torch.randn(0, 64), True, True),
        ("class tokens of a batch", torch.randn(4, 9, 32)[:, :1], True, True),  # strided rows
    ]
    for dtype in (torch.float32, torch.float16):
        for name, x, has_y, affine in cases:
            x = x.to(dtype)
            y = torch.randn(x.shape).to(dtype) if has_y else None
            norm = nn.LayerNorm(x.shape[-1], eps=1e-6, elementwise_affine=affine).to(dtype)
            if affine:
                with torch.no_grad():
                    norm.weight.normal_()
                    norm.bias.normal_()
            with torch.no_grad(), counted_calls(add_norm, "plan_add_layer_norm") as launches:
                total, out = add_norm.add_norm(x, y, norm)
                _, with_norms, norms = add_norm.add_norm_row_norms(x, y, norm)
            with torch.no_grad():
                ref_total = x + y if has_y else x
                ref = norm(ref_total)
            key = f"{str(dtype)[6:]} {name}"
            found[f"launches {key}"] = len(launches) / 2
            found[f"sum equal {key}"] = torch.equal(total, ref_total)
            found[f"shape {key}"] = list(out.shape) == list(x.shape) and out.dtype == dtype
            found[f"max diff {key}"] = (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0
            # the row norms: those of the norm as stored, summed in another order than Tensor.norm's
            found[f"norms of the same output {key}"] = torch.equal(with_norms, out)
            found[f"norms shape {key}"] = list(norms.shape) == list(x.shape[:-1]) and norms.dtype == dtype
            ref_norms = out.norm(dim=-1)
            found[f"norms rel diff {key}"] = (
                ((norms.float() - ref_norms.float()).abs() / ref_norms.float().clamp_min(1e-6)).max().item()
                if out.numel()
                else 0.0
            )

    # whole towers in fp16: the residual stream's adds and norms fused or in PyTorch
    from open_clip.model import CLIP

    import mmfinercam as mf
    from mmfinercam.testing import build_tiny_open_clip, open_clip_to_transformers

    model = build_tiny_open_clip(seed=0).half()
    timm_vision = dict(
        image_size=64, timm_model_name="vit_tiny_patch16_224", timm_pool="token", timm_proj="linear"
    )
    timm_model = CLIP(embed_dim=32, vision_cfg=timm_vision, text_cfg=dict(width=32, heads=2, layers=1))
    towers = {
        "open_clip": mf.Localizer.from_open_clip(model, None, name="tiny").backend.vision,
        "transformers": mf.Localizer.from_transformers(open_clip_to_transformers(model), None).backend.vision,
        "timm": mf.Localizer.from_open_clip(timm_model.half().eval(), None).backend.vision,
    }
    pixels = torch.randn(2, 3, 64, 64).half()
    for name, tower in towers.items():
        for method in ("gem", "raw"):
            with torch.inference_mode():
                with counted_calls(add_norm, "plan_add_layer_norm") as launches:
                    with counted_calls(torch.Tensor, "norm") as fused_norms:
                        fused = dense_tokens(tower, pixels, method)
                with add_norm.fused(False), counted_calls(torch.Tensor, "norm") as plain_norms:
                    plain = dense_tokens(tower, pixels, method)
            key = f"tower {name} {method}"
            found[f"{key} launches"] = len(launches)
            found[f"{key} norm passes saved"] = len(plain_norms) - len(fused_norms)
            found[f"{key} tokens"] = rel_err(fused.tokens, plain.tokens)
            found[f"{key} embedding"] = rel_err(fused.global_embedding, plain.global_embedding)
    found["tower blocks"] = {name: len(tower.blocks) for name, tower in towers.items()}
    return found


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(__file__)


def test_fused_sum_is_pytorchs_and_its_norm_agrees_to_rounding(interpreted):
    for key, launches in interpreted.items():
        if not key.startswith("launches"):
            continue
        case = key[len("launches ") :]
        assert launches == 1, key  # the kernel ran, once a call
        assert interpreted[f"sum equal {case}"] and interpreted[f"shape {case}"], case
        # fp32: the last bits of the mean and variance; fp16: at most one rounding step apart
        limit = 1e-5 if case.startswith("float32") else 1e-2
        assert interpreted[f"max diff {case}"] <= limit, (case, interpreted[f"max diff {case}"])


def test_row_norms_come_from_the_same_pass_as_tensor_norms(interpreted):
    """GEM's temperature reads them: the L2 norm of each stored output row, to the last bits
    of fp32 or one rounding step of fp16 (the sum of squares runs in another order)."""
    cases = [key[len("norms shape ") :] for key in interpreted if key.startswith("norms shape ")]
    assert len(cases) == 10
    for case in cases:
        assert interpreted[f"norms shape {case}"] and interpreted[f"norms of the same output {case}"], case
        limit = 1e-6 if case.startswith("float32") else 2**-10
        assert interpreted[f"norms rel diff {case}"] <= limit, (case, interpreted[f"norms rel diff {case}"])


def test_towers_fuse_every_residual_add_and_norm(interpreted):
    for backend, blocks in interpreted["tower blocks"].items():
        # every block's two norms, the last block's second on the class token alone, and the
        # tower's first and last norms (timm's first is an identity: none)
        first_and_last = 1 if backend == "timm" else 2
        assert interpreted[f"tower {backend} gem launches"] == 2 * blocks + first_and_last, backend
        assert interpreted[f"tower {backend} raw launches"] == 2 * blocks + first_and_last, backend
        # GEM's temperature reads the token norms from the fused pass: one Tensor.norm fewer in
        # each of the depth - 1 = 6 GEM blocks than on PyTorch's path
        assert interpreted[f"tower {backend} gem norm passes saved"] == 6, backend
        assert interpreted[f"tower {backend} raw norm passes saved"] == 0, backend
        # a norm's rare last-bit difference in fp16, carried through the blocks
        for method in ("gem", "raw"):
            assert interpreted[f"tower {backend} {method} tokens"] < 5e-3, (backend, method)
            assert interpreted[f"tower {backend} {method} embedding"] < 5e-3, (backend, method)


@pytest.mark.parametrize("gpu", [("cuda", 90, 32), ("cuda", 80, 32)], ids=["sm_90", "sm_80"])
@pytest.mark.parametrize("width", [768, 1024, 1152])
@pytest.mark.parametrize("row_norms", [False, True], ids=["", "row norms"])
def test_kernel_compiles_with_whole_vector_loads_and_no_spills(gpu, width, row_norms):
    """For a real GPU, without one: ViT-B's, ViT-L's and SigLIP-so400m's widths read and write
    16 bytes a thread at a time (a width that is no power of 2 masks whole vectors), and
    nothing spills. The row norms add a 2-byte store a row."""
    x = torch.empty(256 * 197, width, dtype=torch.bfloat16)
    weight = torch.empty(width, dtype=torch.bfloat16)
    plan = add_norm.plan_add_layer_norm(x, torch.empty_like(x), weight, weight, 1e-6, row_norms=row_norms)
    launch = plan[-1]
    compiled = aot.compile_ahead(launch, gpu)
    assert aot.resource_usage(compiled)["spilled"] == 0
    ptx = compiled.asm["ptx"]
    assert set(re.findall(r"ld\.global\S*", ptx)) == {"ld.global.v4.b32"}, launch.meta
    stores = re.findall(r"st\.global\S*", ptx)
    assert set(stores) - {"st.global.b16"} == {"st.global.v4.b32"}, launch.meta
    assert stores.count("st.global.b16") == int(row_norms), stores  # each row's by one thread


def test_plain_layer_norms_are_recognized_and_nothing_else():
    open_clip = pytest.importorskip("open_clip")

    class ScaledNorm(nn.LayerNorm):  # a forward of its own: not the kernel's numbers
        def forward(self, x):
            return super().forward(x) * 2

    for norm in (nn.LayerNorm(8), open_clip.transformer.LayerNorm(8), open_clip.transformer.LayerNormFp32(8)):
        weight, bias, eps = add_norm.layer_norm_params(norm)
        assert weight is norm.weight and bias is norm.bias and eps == norm.eps
    for norm in (ScaledNorm(8), nn.LayerNorm((4, 8)), nn.RMSNorm(8), nn.Identity()):
        assert add_norm.layer_norm_params(norm) is None, norm


def test_switch_and_size_floor_are_restored_after_the_block():
    switch = add_norm.fused
    assert switch.enabled and switch.min_elements > 0  # the floor of a small batch on a GPU
    floor = switch.min_elements
    with switch(False):
        assert not switch.enabled and switch.min_elements == floor
        with switch(True, min_elements=0):
            assert switch.enabled and switch.min_elements == 0
        assert not switch.enabled and switch.min_elements == floor
    assert switch.enabled and switch.min_elements == floor


def test_cpu_and_autograd_keep_pytorchs_two_passes():
    norm = nn.LayerNorm(8)
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    assert not add_norm.takes_kernel(x, y, norm)  # no GPU and no interpreter here
    total, out = add_norm.add_norm(x, y, norm)
    assert torch.equal(total, x + y) and torch.equal(out, norm(x + y))
    total, out = add_norm.add_norm(x, None, norm)
    assert total is x and torch.equal(out, norm(x))


if __name__ == "__main__":
    print(json.dumps(interpreted_checks()))
