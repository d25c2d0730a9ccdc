"""On a CUDA device: the same answers as on the CPU, in every precision, compiled or not.

Marked ``gpu``: deselected where no GPU is (see conftest), run with ``pytest -m gpu`` on one.
The CPU is the reference; fp32 is compared with TF32 off, half precisions by how closely their
maps follow the fp32 maps (what a user reads off a heatmap: where it peaks, how it ranks).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from conftest import gpu_test_device

import mmfinercam as mf
from mmfinercam.batch import BatchJob, BatchRunner, PromptSet, iter_results, load_map, read_collection
from mmfinercam.explain import gem
from mmfinercam.kernels import attention as kernels
from mmfinercam.kernels import fused_norm as add_norm
from mmfinercam.kernels import quick_gelu
from mmfinercam.testbed import held_out
from mmfinercam.testing import build_tiny_open_clip, deterministic_image, open_clip_to_transformers

pytestmark = pytest.mark.gpu

TARGET, CONTRAST = "a bird with a red wing", ["a bird with a blue wing", "a bird with a yellow wing"]


@pytest.fixture(scope="module")
def device():
    return gpu_test_device()


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    """fp32 on the GPU compared with the CPU: TF32 matrix products would round to 1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def birds():
    return [s.image for s in held_out(8, start=9100)]


@pytest.fixture(scope="module")
def testbed_cpu():
    return mf.load("testbed", device="cpu")


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps (B)."""
    a = a.flatten(1).double() - a.flatten(1).double().mean(1, keepdim=True)
    b = b.flatten(1).double() - b.flatten(1).double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_testbed_fp32_on_the_gpu_equals_the_cpu(device, birds, testbed_cpu):
    gpu = mf.load("testbed", device=device)
    assert gpu.device.type == device.type
    ref = testbed_cpu.finer_cam(birds, TARGET, CONTRAST)
    out = gpu.finer_cam(birds, TARGET, CONTRAST)
    assert out.heatmaps.device.type == "cpu"  # results come back to the host, once
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.weights, ref.weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.heatmaps, ref.heatmaps, atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_maps_follow_fp32(device, birds, testbed_cpu, dtype):
    """bf16/fp16 towers: every map correlates ≥ 0.99 with fp32 and peaks in the same place."""
    half = mf.load("testbed", device=device, dtype=dtype)
    ref = testbed_cpu.finer_cam(birds, TARGET, CONTRAST)
    out = half.finer_cam(birds, TARGET, CONTRAST)
    assert out.scores.dtype == torch.float32  # tokens come out in fp32 whatever the tower ran in
    assert torch.isfinite(out.scores).all()
    assert _correlation(out.scores, ref.scores).min() >= 0.99
    peaks_agree = out.scores.flatten(1).argmax(1) == ref.scores.flatten(1).argmax(1)
    assert peaks_agree.float().mean() >= 0.75
    torch.testing.assert_close(out.weights, ref.weights, atol=2e-2, rtol=0)


def test_vit_b16_bf16_global_embedding_is_open_clips(device):
    """A full-size ViT-B/16 in bf16 on the GPU: our tower's pooled embedding is encode_image's,
    and 1000 concepts cost one pass with finite maps."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).to(device, torch.bfloat16).eval()
    loc = mf.Localizer.from_open_clip(model, open_clip.get_tokenizer("ViT-B-16"), name="ViT-B-16")
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16)
    with torch.inference_mode():
        ref = model.encode_image(x).float()
    ours = loc.image_tokens(x, method="raw").global_embedding
    assert (ours - ref).norm() / ref.norm() < 2e-2
    # a GEM pass runs the last block for the class token alone: the same pooled embedding
    pooled = loc.image_tokens(x).global_embedding
    assert loc.backend.vision.pooled_tokens == 1 and (pooled - ref).norm() / ref.norm() < 2e-2
    prompts = [f"trait number {i}" for i in range(1000)]
    maps = loc.similarity_maps(x, prompts)
    assert maps.shape == (4, 1000, 14, 14) and maps.device.type == device.type
    assert torch.isfinite(maps).all()


def test_compiled_tower_on_the_gpu_equals_eager(device, birds):
    loc = mf.load("testbed", device=device)
    prepared, _ = loc.prepare(birds)
    x = torch.stack([p.pixels for p in prepared])
    eager = loc.similarity_maps(x, [TARGET, *CONTRAST])
    backend = "inductor" if device.type == "cuda" else "eager"
    loc.compile(backend=backend, fullgraph=True)
    compiled = loc.similarity_maps(x, [TARGET, *CONTRAST])
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [197, 785])
def test_fused_self_self_attention_is_as_close_to_float64_as_pytorch(device, dtype, tokens):
    """The Triton kernel against GEM's PyTorch path, both against float64, on fresh inputs."""
    qkv = torch.randn(4, tokens, 3, 12, 64, device=device).mul(3).to(dtype).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    temp = torch.rand(4, 1, 1, 1, device=device) * 8 + 1
    ref = gem.self_self_attention(q.double(), k.double(), v.double(), temp.double())
    with gem.fused_attention(False):
        pytorch = gem.self_self_attention(q, k, v, temp)
    out = torch.full_like(v, float("nan"))  # poisoned: every element must be written
    out.copy_(kernels.self_self_attention_fused(q, k, v, temp))
    assert torch.isfinite(out).all()
    err = ((out.double() - ref).norm() / ref.norm()).item()
    err_pytorch = ((pytorch.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-2 and err <= 2 * err_pytorch + 1e-4, (err, err_pytorch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fused_add_norm_is_pytorchs_two_passes(device, dtype):
    """ViT-B/16's residual stream at batch 64: the fused sum is PyTorch's bit for bit, its norm
    differs from ``F.layer_norm``'s in the last bit of a rare element (fp32: last bits)."""
    x = torch.randn(64, 197, 768, device=device).mul(3).to(dtype)
    y = torch.randn_like(x)
    norm = torch.nn.LayerNorm(768, eps=1e-6).to(device, dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    with torch.inference_mode():
        assert add_norm.takes_kernel(x, y, norm)
        total, out, norms = add_norm.add_norm_row_norms(x, y, norm)
        ref = norm(x + y)
        ref_norms = out.norm(dim=-1)
    assert torch.equal(total, x + y)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(out, ref)  # within one rounding step
        assert (out != ref).float().mean().item() < 1e-3
    # GEM's temperature reads the row norms of the stored output: Tensor.norm's to its rounding
    assert norms.dtype == dtype and norms.shape == x.shape[:-1]
    if dtype == torch.float32:  # sums of 768 squares in another order
        torch.testing.assert_close(norms, ref_norms, atol=0, rtol=1e-5)
    else:
        torch.testing.assert_close(norms, ref_norms)  # within one rounding step


def test_fused_add_norm_waits_for_a_batch_large_enough(device):
    """Below ``fused.min_elements`` the host's launches bound the call, and PyTorch's cost less:
    a ViT-B/16 at batch 4 keeps the two passes, at batch 64 takes the kernel; the floor can be
    lifted for timing, and both paths give the same numbers."""
    norm = torch.nn.LayerNorm(768).to(device, torch.bfloat16)
    small = torch.randn(4, 197, 768, device=device, dtype=torch.bfloat16)
    large = torch.randn(64, 197, 768, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert not add_norm.takes_kernel(small, small, norm)
        assert add_norm.takes_kernel(large, large, norm)
        plain = add_norm.add_norm(small, small, norm)
        with add_norm.fused(True, min_elements=0):
            assert add_norm.takes_kernel(small, small, norm)
            fused = add_norm.add_norm(small, small, norm)
    assert torch.equal(fused[0], plain[0])
    torch.testing.assert_close(fused[1], plain[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fused_quick_gelu_is_the_modules_three_passes(device, dtype):
    """ViT-B/16's MLP activations at batch 64: each step rounded as PyTorch rounds it, and the
    sigmoid with CUDA's expf, as PyTorch's: the same numbers (a rare last bit allowed)."""
    x = torch.randn(64, 197, 3072, device=device).mul(3).to(dtype)
    act = open_clip.transformer.QuickGELU()
    with torch.inference_mode():
        assert quick_gelu.takes_kernel(x, act)
        out, ref = quick_gelu.activation(x, act), act(x)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    else:
        torch.testing.assert_close(out, ref)
        assert (out != ref).float().mean().item() < 1e-3


_SAME_PTX_AS_THE_JIT = """
import torch
from mmfinercam.kernels import aot
from mmfinercam.kernels import attention as kernels

device = torch.device("cuda")
major, minor = torch.cuda.get_device_capability(device)
fused = torch.randn(2, 197, 3, 12, 64, device=device).to(torch.bfloat16).permute(2, 0, 3, 1, 4)
separate = [torch.randn(2, 4, 50, 72, device=device).half() for _ in range(3)]
checked = 0
for (q, k, v), temp in [(fused, torch.ones(2, 1, 1, 1, device=device)), (separate, 5.0)]:
    _, launches = kernels.plan_self_self_attention(q, k, v, temp)
    for launch in launches:
        jit = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)
        ahead = aot.compile_ahead(launch, ("cuda", major * 10 + minor, 32))
        assert ahead.asm["ptx"] == jit.asm["ptx"], launch.meta
        checked += 1
print("same PTX", checked)
"""


def test_compile_ahead_builds_what_the_jit_builds_on_this_gpu(device):
    """``aot.compile_ahead``, the CPU suite's view of the kernels, builds for this GPU the
    same PTX as Triton's JIT for every launch of a call: fused q, k, v at head size 64 and
    separate ones at 72.

    In a fresh process: the JIT keeps what it compiled for earlier tests, and the PTX version
    follows the ``ptxas`` in use when compiling, which torch's inductor changes (it sets
    ``TRITON_PTXAS_PATH`` to the CUDA toolkit's when it first compiles, in
    ``test_compiled_tower_on_the_gpu_equals_eager``): a kernel compiled before that and one
    compiled after differ in their ``.version`` line alone.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _SAME_PTX_AS_THE_JIT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same PTX 8" in proc.stdout, proc.stdout  # 3 launches fused, 5 separate


def test_results_come_to_the_host_whole_after_one_wait(device):
    from mmfinercam._device import to_host

    tensors = [torch.randn(64, 197, 512, device=device), torch.arange(1000, device=device), torch.ones(3)]
    host = to_host(*tensors)
    assert all(h.device.type == "cpu" for h in host)
    for h, t in zip(host, tensors):
        assert torch.equal(h, t.cpu())


def test_compiled_bf16_tower_keeps_the_kernel_and_its_maps(device, birds):
    """bf16 compiled by inductor around the kernel: the maps of eager bf16, peak for peak."""
    loc = mf.load("testbed", device=device, dtype="bf16")
    prepared, _ = loc.prepare(birds)
    x = torch.stack([p.pixels for p in prepared]).to(torch.bfloat16)
    eager = loc.similarity_maps(x, [TARGET, *CONTRAST])
    loc.compile(backend="inductor", fullgraph=True)
    compiled = loc.similarity_maps(x, [TARGET, *CONTRAST])
    assert _correlation(compiled.flatten(0, 1), eager.flatten(0, 1)).min() >= 0.99


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_gradient_finer_cam_on_the_gpu_equals_the_cpu(device, birds, testbed_cpu, method):
    gpu = mf.load("testbed", device=device)
    ref = testbed_cpu.finer_cam(birds[:4], TARGET, CONTRAST, method=method)
    out = gpu.finer_cam(birds[:4], TARGET, CONTRAST, method=method)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out.weights, ref.weights, atol=1e-5, rtol=1e-4)


def test_transformers_clip_on_the_gpu_equals_the_cpu(device):
    tok = open_clip.get_tokenizer("ViT-B-16")
    cpu = mf.Localizer.from_transformers(open_clip_to_transformers(build_tiny_open_clip()), tok)
    gpu = mf.Localizer.from_transformers(copy.deepcopy(cpu.backend.model).to(device), tok)
    assert gpu.device.type == device.type
    x = deterministic_image((224, 320), seed=3)
    prompts = ["a photo of a bird.", "a red wing"]
    torch.testing.assert_close(
        gpu.similarity_maps(x, prompts).cpu(), cpu.similarity_maps(x, prompts), atol=1e-4, rtol=1e-4
    )


def test_batch_run_on_the_gpu_equals_the_cpu(device, tmp_path, birds, testbed_cpu):
    """Pinned-memory DataLoader workers feeding the GPU give the CPU run's rows and maps."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(birds):
        image.save(folder / f"bird{i}.png")
    sets = [PromptSet("red-wing", TARGET, tuple(CONTRAST))]

    def run(out, loc):
        job = BatchJob(out=str(tmp_path / out), prompt_sets=sets, model="testbed", chunk_size=4)
        BatchRunner(job, read_collection(folder), localizer=loc).run(workers=2, progress=False)
        return list(iter_results(tmp_path / out))

    on_cpu = run("cpu", testbed_cpu)
    on_gpu = run("gpu", mf.load("testbed", device=device))
    assert [r["key"] for r in on_gpu] == [r["key"] for r in on_cpu]
    for a, b in zip(on_gpu, on_cpu):
        assert a["status"] == b["status"] == "ok"
        np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-5)
        np.testing.assert_allclose(load_map(tmp_path / "gpu", a), load_map(tmp_path / "cpu", b), atol=2e-3)
