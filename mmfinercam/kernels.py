"""A fused GPU kernel for GEM's self-self attention (Triton), for inference on CUDA.

The same function as :func:`mmfinercam.gem.self_self_attention`, computed in two launches
instead of about a dozen passes over the three q/k/v streams:

* one **round** per self-self iteration: every (stream, image, head, block of query rows)
  writes ``n(softmax(t · n(u) n(u)ᵀ) n(u))`` for its rows, ``n`` the L2 normalization (the
  first round normalizes q, k and v as it reads them; later ones read unit rows);
* the **final** round reads the last round's streams as queries and keys and the original
  values, and writes the mean of the three streams' outputs, already laid out as
  B×N×heads×head_dim so that merging the heads is free.

Why it can skip the running maximum of flash attention: queries and keys are the same
L2-normalized rows, so every row's largest logit is its own, ``t · |n(u_i)|²`` (Cauchy-Schwarz).
The softmax is taken against that known maximum, in one pass over the keys.

Half precision only in :func:`mmfinercam.gem.self_self_attention`'s dispatch: fp32 keeps the
exact SDPA path (the kernel's fp32 mode exists for testing against it under Triton's
interpreter, ``TRITON_INTERPRET=1``). No backward pass: training uses the PyTorch path.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(x: Tensor) -> bool:
    """Whether the fused kernel can run on ``x``'s device (a CUDA GPU, or Triton's interpreter)."""
    return triton is not None and (x.is_cuda or (INTERPRETED and x.device.type == "cpu"))


if triton is not None:

    @triton.jit
    def _unit_rows(u):
        """Rows scaled to unit L2 norm, as ``F.normalize`` does (fp32)."""
        return u / tl.maximum(tl.sqrt(tl.sum(u * u, 1)), 1e-12)[:, None]

    @triton.jit
    def _load_rows(ptr, rows, dims, n_tokens, head_dim, stride_n, stride_d, NORMALIZE: tl.constexpr):
        """Rows ``rows`` of one stream in fp32, normalized if asked (zero where out of range)."""
        mask = (rows[:, None] < n_tokens) & (dims[None, :] < head_dim)
        u = tl.load(ptr + rows[:, None] * stride_n + dims[None, :] * stride_d, mask=mask, other=0.0)
        u = u.to(tl.float32)
        if NORMALIZE:
            u = _unit_rows(u)
        return u

    @triton.jit
    def _self_self_round(
        x_ptr,  # 3×B×H×N×d streams: queries and keys (unit rows, or normalized on load)
        v_ptr,  # B×H×N×d values of the final round
        out_ptr,  # 3×B×H×N×d (a round) or B×N×H×d (the final mean)
        temp_ptr,  # B per-image inverse temperatures, when PER_IMAGE
        temp,  # one inverse temperature for all, otherwise
        n_tokens,
        n_heads,
        head_dim,
        sx_s, sx_b, sx_h, sx_n, sx_d,
        sv_b, sv_h, sv_n, sv_d,
        so_s, so_b, so_h, so_n, so_d,
        PER_IMAGE: tl.constexpr,
        NORMALIZE_INPUT: tl.constexpr,  # the first launch reads raw q, k, v; later ones unit rows
        FINAL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // n_heads, pid_bh % n_heads
        if PER_IMAGE:
            temp = tl.load(temp_ptr + b).to(tl.float32)
        scale = temp * 1.4426950408889634  # softmax in base 2
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        dtype = x_ptr.dtype.element_ty
        # a round runs one stream a program; the final round sums all three in one program
        first = 0 if FINAL else tl.program_id(2)
        last = 3 if FINAL else first + 1
        total = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for s in range(first, last):
            base = x_ptr + s * sx_s + b * sx_b + h * sx_h
            q = _load_rows(base, rows, dims, n_tokens, head_dim, sx_n, sx_d, NORMALIZE_INPUT)
            q_scaled = (q * scale).to(dtype)
            # each row's own logit is its largest: queries and keys are the same unit rows
            row_max = tl.sum(q_scaled.to(tl.float32) * q.to(dtype).to(tl.float32), 1)
            acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
            denom = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for start in range(0, n_tokens, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                k = _load_rows(base, cols, dims, n_tokens, head_dim, sx_n, sx_d, NORMALIZE_INPUT)
                k = k.to(dtype)
                if IEEE:
                    logits = tl.dot(q_scaled, tl.trans(k), input_precision="ieee")
                else:
                    logits = tl.dot(q_scaled, tl.trans(k))
                p = tl.where(cols[None, :] < n_tokens, tl.exp2(logits - row_max[:, None]), 0.0)
                denom += tl.sum(p, 1)
                if FINAL:
                    vmask = (cols[:, None] < n_tokens) & (dims[None, :] < head_dim)
                    vptr = v_ptr + b * sv_b + h * sv_h + cols[:, None] * sv_n + dims[None, :] * sv_d
                    values = tl.load(vptr, mask=vmask, other=0.0)
                else:
                    values = k
                if IEEE:
                    acc += tl.dot(p.to(dtype), values, input_precision="ieee")
                else:
                    acc += tl.dot(p.to(dtype), values)
            out = acc / denom[:, None]
            if FINAL:
                total += out.to(dtype).to(tl.float32)  # each stream's output rounds as SDPA's does
            else:  # the next launch reads these rows as unit rows
                total = _unit_rows(out)
        if FINAL:
            total = total / 3.0
            obase = out_ptr + b * so_b + h * so_h
        else:
            obase = out_ptr + first * so_s + b * so_b + h * so_h
        omask = (rows[:, None] < n_tokens) & (dims[None, :] < head_dim)
        tl.store(obase + rows[:, None] * so_n + dims[None, :] * so_d, total.to(dtype), mask=omask)


def _streams(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q, k, v as one 3×B×H×N×d tensor: a view when they lie evenly spaced in one buffer (as a
    fused qkv projection leaves them), else a copy."""
    same = q.shape == k.shape == v.shape and q.stride() == k.stride() == v.stride()
    if same and q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
        gap = k.storage_offset() - q.storage_offset()
        if gap > 0 and v.storage_offset() - k.storage_offset() == gap:
            return q.as_strided((3, *q.shape), (gap, *q.stride()), q.storage_offset())
    return torch.stack([q, k, v])


def _block_sizes(n_tokens: int, head_dim: int, blocks: tuple[int, int, int, int] | None = None) -> dict:
    """Launch shape: ``blocks`` = (query rows, keys, warps, stages), or the tuned default."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if blocks is None:
        # 64 query rows by 32 keys: the fastest of ten shapes on an H200 at 197 tokens (RESULTS §3)
        rows = 64 if n_tokens > 32 else max(16, triton.next_power_of_2(n_tokens))
        keys = 32 if n_tokens > 16 else 16
        blocks = (rows, keys, 4 if block_d <= 64 else 8, 2)
    rows, keys, warps, stages = blocks
    return dict(BLOCK_M=rows, BLOCK_N=keys, BLOCK_D=block_d, num_warps=warps, num_stages=stages)


def self_self_attention_fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inv_temp: Tensor | float,
    iterations: int = 1,
    *,
    blocks: tuple[int, int, int, int] | None = None,
) -> Tensor:
    """GEM's self-self attention of one block (q, k, v: B×heads×N×head_dim) in fused kernels.

    ``inv_temp`` is one number or one per image (B×1×1×1 or B). ``blocks`` overrides the launch
    shape (query rows, keys, warps, stages), for tuning. Returns B×heads×N×head_dim, a view of
    a B×N×heads×head_dim buffer.
    """
    if triton is None:
        raise RuntimeError("the fused self-self attention needs triton (pip install triton)")
    b, heads, n, d = v.shape
    per_image = isinstance(inv_temp, Tensor)
    temps = inv_temp.reshape(-1).float().expand(b).contiguous() if per_image else None
    x = _streams(q, k, v)
    sizes = _block_sizes(n, d, blocks)
    grid_rows = triton.cdiv(n, sizes["BLOCK_M"])
    common = dict(PER_IMAGE=per_image, IEEE=v.dtype == torch.float32, **sizes)
    temp_args = (temps if per_image else x, 0.0 if per_image else float(inv_temp))
    for i in range(iterations):
        out = torch.empty((3, b, heads, n, d), dtype=v.dtype, device=v.device)
        _self_self_round[(grid_rows, b * heads, 3)](
            x, v, out, *temp_args, n, heads, d, *x.stride(), *v.stride(), *out.stride(),
            NORMALIZE_INPUT=i == 0, FINAL=False, **common,
        )  # fmt: skip
        x = out
    out = torch.empty((b, n, heads, d), dtype=v.dtype, device=v.device).permute(0, 2, 1, 3)
    _self_self_round[(grid_rows, b * heads, 1)](
        x, v, out, *temp_args, n, heads, d, *x.stride(), *v.stride(), 0, *out.stride(),
        NORMALIZE_INPUT=iterations == 0, FINAL=True, **common,
    )  # fmt: skip
    return out


@torch.library.custom_op("mmfinercam::self_self_attention", mutates_args=())
def _self_self_attention_op(
    q: Tensor, k: Tensor, v: Tensor, temps: Tensor | None, temp: float, iterations: int
) -> Tensor:
    return self_self_attention_fused(q, k, v, temp if temps is None else temps, iterations)


@_self_self_attention_op.register_fake
def _(q, k, v, temps, temp, iterations):
    b, heads, n, d = v.shape
    return v.new_empty((b, n, heads, d)).permute(0, 2, 1, 3)


def self_self_attention(
    q: Tensor, k: Tensor, v: Tensor, inv_temp: Tensor | float, iterations: int = 1
) -> Tensor:
    """:func:`self_self_attention_fused`, as one opaque operator when traced by ``torch.compile``
    (which compiles what is around it and calls the kernels as they are)."""
    if not torch.compiler.is_compiling():
        return self_self_attention_fused(q, k, v, inv_temp, iterations)
    temps, temp = (inv_temp, 0.0) if isinstance(inv_temp, Tensor) else (None, float(inv_temp))
    return _self_self_attention_op(q, k, v, temps, temp, iterations)
