"""A fused GPU kernel for GEM's self-self attention (Triton), for inference on CUDA.

The same function as :func:`mmfinercam.explain.gem.self_self_attention`, computed in three
launches instead of about a dozen passes over the three q/k/v streams:

* q, k and v are first written as unit rows, ``n(u)`` (``n`` the L2 normalization), once,
  read where they lie (one strided view of a fused qkv projection, or each tensor): the
  query tiles of the next launch all read every key, and normalizing a key as it is read
  would cost each tile the same work again;
* one **round** per self-self iteration: every (stream, image, head, block of query rows)
  writes ``n(softmax(t · u uᵀ) u)`` for its unit rows ``u``;
* the **final** round reads the last round's streams as queries and keys and the original
  values, and writes the mean of the three streams' outputs, already laid out as
  B×N×heads×head_dim so that merging the heads is free.

Rows come in tiles of 64 queries by 32 keys; a ragged end gets a tile of its own, at least 16
wide (197 tokens: three 64-row tiles and a 16-row one, six 32-key blocks and a masked 16-key
one), and only that tile checks bounds.

Why it can skip the running maximum of flash attention: queries and keys are the same
L2-normalized rows, so every row's largest logit is its own, ``t · |n(u_i)|²`` (Cauchy-Schwarz).
The softmax is taken against that known maximum, in one pass over the keys.

A call is planned (:func:`plan_self_self_attention`: buffers and launches) before it runs, so
its launches can also be compiled for a GPU on a machine without one
(:mod:`mmfinercam.kernels.aot`): the tests check there that they compile for Hopper and
Ampere, keep their loads pipelined and do not spill.

Half precision only in :func:`runs_fused`'s dispatch: fp32 keeps the exact SDPA path (the
kernel's fp32 mode exists for testing against it under Triton's interpreter,
``TRITON_INTERPRET=1``). No backward pass: training uses the PyTorch path.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._launch import MAX_GRID_Y, KernelSwitch, Launch, available, cdiv, next_power_of_2, triton

if triton is not None:
    import triton.language as tl

#: the fused kernel's switch, on by default: ``with fused_attention(False):`` runs the PyTorch
#: twin (:func:`mmfinercam.explain.gem.self_self_attention`) instead
fused_attention = KernelSwitch()


def runs_fused(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether GEM's self-self attention of these streams runs in the fused kernel.

    It does in half precision on a GPU (or under Triton's interpreter), with no gradient to
    carry, while :data:`fused_attention` is on.

    Args:
        q: queries, B×heads×N×head_dim.
        k: keys, the same shape.
        v: values, the same shape.

    Returns:
        True where :func:`self_self_attention` applies.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    half = v.dtype in (torch.float16, torch.bfloat16)
    return fused_attention.enabled and half and not needs_grad and available(v)


if triton is not None:

    @triton.jit
    def _unit_rows(u):
        """Rows scaled to unit L2 norm, as ``F.normalize`` does (fp32)."""
        return u / tl.maximum(tl.sqrt(tl.sum(u * u, 1)), 1e-12)[:, None]

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _load_rows(
        ptr, rows, dims, n_tokens, head_dim, stride_n, stride_d,
        MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr,
    ):  # fmt: skip
        """Rows ``rows`` of one stream in fp32 (zero where out of range). Masks only what may be
        out of range: ragged rows, a head size that is no power of 2."""
        ptrs = ptr + rows[:, None] * stride_n + dims[None, :] * stride_d
        if MASK_ROWS or not EVEN_D:
            u = tl.load(ptrs, mask=(rows[:, None] < n_tokens) & (dims[None, :] < head_dim), other=0.0)
        else:
            u = tl.load(ptrs)
        return u.to(tl.float32)

    @triton.jit
    def _key_block(
        q_scaled, row_max, acc, base, v_base, start, dims, n_tokens, head_dim,
        sx_n, sx_d, sv_n, sv_d,
        FINAL: tl.constexpr, KEYS: tl.constexpr, MASKED: tl.constexpr,
        EVEN_D: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        """One block of ``KEYS`` keys into a query tile's running softmax numerator; returns it
        and the block's weights (the caller sums them). ``MASKED``: the last, ragged block; the
        others need no bounds checks."""
        dtype = base.dtype.element_ty
        cols = start + tl.arange(0, KEYS)
        k = _load_rows(base, cols, dims, n_tokens, head_dim, sx_n, sx_d, MASKED, EVEN_D).to(dtype)
        p = tl.exp2(_dot(q_scaled, tl.trans(k), IEEE) - row_max[:, None])
        if MASKED:
            p = tl.where(cols[None, :] < n_tokens, p, 0.0)
        if FINAL:
            values = _load_rows(v_base, cols, dims, n_tokens, head_dim, sv_n, sv_d, MASKED, EVEN_D)
            values = values.to(dtype)
        else:
            values = k
        acc += _dot(p.to(dtype), values, IEEE)
        return acc, p

    @triton.jit
    def _query_tile(
        x_ptr, v_ptr, out_ptr, scale, b, h, stream, row0, n_tokens, head_dim,
        sx_s, sx_b, sx_h, sx_n, sx_d,
        sv_b, sv_h, sv_n, sv_d,
        so_s, so_b, so_h, so_n, so_d,
        FINAL: tl.constexpr, ROWS: tl.constexpr,
        MASK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, KEY_TAIL: tl.constexpr,
        BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        """``ROWS`` query rows from ``row0``: one stream's round, or the final mean of three."""
        rows = row0 + tl.arange(0, ROWS)
        dims = tl.arange(0, BLOCK_D)
        dtype = x_ptr.dtype.element_ty
        v_base = v_ptr + b * sv_b + h * sv_h
        full_keys = n_tokens // BLOCK_N * BLOCK_N
        # a round runs one stream a program; the final round sums all three in one program
        first = 0 if FINAL else stream
        last = 3 if FINAL else stream + 1
        total = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
        for s in range(first, last):
            base = x_ptr + s * sx_s + b * sx_b + h * sx_h
            q = _load_rows(base, rows, dims, n_tokens, head_dim, sx_n, sx_d, MASK_ROWS, EVEN_D)
            q_scaled = (q * scale).to(dtype)
            # each row's own logit is its largest: queries and keys are the same unit rows
            row_max = tl.sum(q_scaled.to(tl.float32) * q.to(dtype).to(tl.float32), 1)
            acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
            denom = tl.zeros((ROWS,), dtype=tl.float32)
            # a round sums the weights where each thread holds them and across threads once,
            # after the loop: no shuffles a key block. The final round keeps a sum a block,
            # where the extra registers of the other way cost more than the shuffles
            weights = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
            for start in range(0, full_keys, BLOCK_N):
                acc, p = _key_block(
                    q_scaled, row_max, acc, base, v_base, start, dims, n_tokens, head_dim,
                    sx_n, sx_d, sv_n, sv_d, FINAL, BLOCK_N, False, EVEN_D, IEEE,
                )  # fmt: skip
                if FINAL:
                    denom += tl.sum(p, 1)
                else:
                    weights += p
            if not FINAL:
                denom += tl.sum(weights, 1)
            if KEY_TAIL > 0:
                acc, p = _key_block(
                    q_scaled, row_max, acc, base, v_base, full_keys, dims, n_tokens, head_dim,
                    sx_n, sx_d, sv_n, sv_d, FINAL, KEY_TAIL, True, EVEN_D, IEEE,
                )  # fmt: skip
                denom += tl.sum(p, 1)
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
        optrs = obase + rows[:, None] * so_n + dims[None, :] * so_d
        if MASK_ROWS or not EVEN_D:
            tl.store(optrs, total.to(dtype), mask=(rows[:, None] < n_tokens) & (dims[None, :] < head_dim))
        else:
            tl.store(optrs, total.to(dtype))

    @triton.jit
    def _unit_streams(
        x_ptr, out_ptr, n_tokens, n_heads, batch,
        sx_s, sx_b, sx_h, sx_n, sx_d, so_n,
        ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """q, k, v (a strided 3×B×H×N×d view) as unit rows, written ``so_n`` apart: once, instead of
        every query tile of the first round normalizing every key again. A program takes
        ``ROWS`` tokens of one (stream, image, head): where a row lies needs no division a row."""
        row_blocks = tl.cdiv(n_tokens, ROWS)
        pid = tl.program_id(0)
        plane, block = pid // row_blocks, pid % row_blocks  # plane: (stream, image, head)
        h, b, s = plane % n_heads, plane // n_heads % batch, plane // n_heads // batch
        base = x_ptr + s.to(tl.int64) * sx_s + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
        n = block * ROWS + tl.arange(0, ROWS)
        dims = tl.arange(0, BLOCK_D)
        mask = (n[:, None] < n_tokens) & (dims[None, :] < HEAD_DIM)
        u = tl.load(base + n[:, None] * sx_n + dims[None, :] * sx_d, mask=mask, other=0.0)
        u = _unit_rows(u.to(tl.float32)).to(out_ptr.dtype.element_ty)
        dst = out_ptr + plane.to(tl.int64) * n_tokens * so_n
        tl.store(dst + n[:, None] * so_n + dims[None, :], u, mask=mask)

    @triton.jit
    def _self_self_round(
        x_ptr,  # 3×B×H×N×d streams of unit rows: queries and keys
        v_ptr,  # B×H×N×d values of the final round
        out_ptr,  # 3×B×H×N×d (a round) or B×N×H×d (the final mean)
        temp_ptr,  # B per-image inverse temperatures, when PER_IMAGE
        temp,  # one inverse temperature for all, otherwise
        n_tokens,
        n_heads,
        sx_s, sx_b, sx_h, sx_n, sx_d,
        sv_b, sv_h, sv_n, sv_d,
        so_s, so_b, so_h, so_n, so_d,
        PER_IMAGE: tl.constexpr,
        FINAL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        ROW_TAIL: tl.constexpr,  # rows of the last, smaller query tile (0: all tiles BLOCK_M)
        MASK_ROWS: tl.constexpr,  # whether BLOCK_M tiles can run past the last token
        BLOCK_N: tl.constexpr,
        KEY_TAIL: tl.constexpr,  # keys of the last, masked key block (0: none)
        HEAD_DIM: tl.constexpr,  # known when compiled: masks of a head size such as 72 then
        BLOCK_D: tl.constexpr,  # come in whole vectors, and the loads can be pipelined
        EVEN_D: tl.constexpr,
        IEEE: tl.constexpr,
    ):  # fmt: skip
        head_dim = HEAD_DIM
        pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // n_heads, pid_bh % n_heads
        stream = 0 if FINAL else tl.program_id(2)
        if PER_IMAGE:
            temp = tl.load(temp_ptr + b).to(tl.float32)
        scale = temp * 1.4426950408889634  # softmax in base 2
        full_rows = n_tokens // BLOCK_M
        # with no tail (a compile-time fact) this is no branch at all; else the last program
        # takes the ragged end of the rows in a tile of its own size, not a mostly empty one
        if ROW_TAIL == 0 or pid_m < full_rows:
            _query_tile(
                x_ptr, v_ptr, out_ptr, scale, b, h, stream, pid_m * BLOCK_M, n_tokens, head_dim,
                sx_s, sx_b, sx_h, sx_n, sx_d, sv_b, sv_h, sv_n, sv_d, so_s, so_b, so_h, so_n, so_d,
                FINAL, BLOCK_M, MASK_ROWS, BLOCK_N, KEY_TAIL, BLOCK_D, EVEN_D, IEEE,
            )  # fmt: skip
        else:
            _query_tile(
                x_ptr, v_ptr, out_ptr, scale, b, h, stream, full_rows * BLOCK_M, n_tokens, head_dim,
                sx_s, sx_b, sx_h, sx_n, sx_d, sv_b, sv_h, sv_n, sv_d, so_s, so_b, so_h, so_n, so_d,
                FINAL, ROW_TAIL, True, BLOCK_N, KEY_TAIL, BLOCK_D, EVEN_D, IEEE,
            )  # fmt: skip


def _streams(q: Tensor, k: Tensor, v: Tensor) -> list[Tensor]:
    """q, k, v as views of S×B×H×N×d, never copies: one 3-stream view when they lie evenly
    spaced in one buffer (as a fused qkv projection leaves them), else one view each (separate
    projections)."""
    same = q.shape == k.shape == v.shape and q.stride() == k.stride() == v.stride()
    if same and q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
        gap = k.storage_offset() - q.storage_offset()
        if gap > 0 and v.storage_offset() - k.storage_offset() == gap:
            return [q.as_strided((3, *q.shape), (gap, *q.stride()), q.storage_offset())]
    return [q[None], k[None], v[None]]


@functools.lru_cache(maxsize=256)
def _block_sizes(n_tokens: int, head_dim: int, blocks: tuple[int, int, int, int] | None = None) -> dict:
    """Launch shape: ``blocks`` = (query rows, keys, warps, stages), or the tuned default; and
    the ragged ends. 197 tokens in 64-row tiles: three full tiles and a 16-row one for the last
    5 rows; in 32-key blocks: six unmasked blocks and a masked 16-key one."""
    block_d = max(16, next_power_of_2(head_dim))
    if blocks is None:
        # 64 query rows by 32 keys, 4 warps, 4 stages: the tuned shape for ViT tokens on Hopper
        # (benchmarks/ss_kernel_gpu.py compares the shapes)
        rows = 64 if n_tokens > 32 else max(16, next_power_of_2(n_tokens))
        keys = 32 if n_tokens > 16 else 16
        blocks = (rows, keys, 4 if block_d <= 64 else 8, 4)
    rows, keys, warps, stages = blocks
    row_tail = _tail(n_tokens % rows)
    key_tail = _tail(n_tokens % keys)
    return dict(
        BLOCK_M=rows,
        ROW_TAIL=row_tail if row_tail < rows else 0,  # a tail as big as a tile: mask the tiles
        MASK_ROWS=n_tokens % rows != 0 and row_tail >= rows,
        BLOCK_N=keys,
        KEY_TAIL=key_tail,
        BLOCK_D=block_d,
        EVEN_D=block_d == head_dim,
        num_warps=warps,
        num_stages=stages,
    )


def _tail(rest: int) -> int:
    """Size of a block for ``rest`` leftover rows: a power of 2, at least 16 (a matrix
    instruction's least), 0 for none."""
    return max(16, next_power_of_2(rest)) if rest else 0


def plan_self_self_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inv_temp: Tensor | float,
    iterations: int = 1,
    *,
    blocks: tuple[int, int, int, int] | None = None,
) -> tuple[Tensor, list[Launch]]:
    """The buffers and launches of :func:`self_self_attention_fused`, not yet run.

    Kept apart so the launches can be compiled for a GPU on a machine without one
    (:mod:`mmfinercam.kernels.aot`). A batch too large for one launch (more (image, head) pairs than
    a grid's second axis holds, or a buffer past 32-bit offsets) runs in parts of the batch, each
    with buffers of its own; any usual batch is one part.

    Args:
        q: B×heads×N×head_dim queries.
        k: keys, the same shape.
        v: values, the same shape.
        inv_temp: one inverse temperature, or one an image.
        iterations: self-self rounds before the final one.
        blocks: (query rows, keys, warps, stages), overriding the tuned launch shape.

    Returns:
        The output (filled once every launch has run, in order) and the launches.

    Raises:
        RuntimeError: without Triton.
    """
    if triton is None:
        raise RuntimeError("the fused self-self attention needs triton (pip install triton)")
    b, heads, n, d = v.shape
    temps = inv_temp.reshape(-1).float().expand(b).contiguous() if isinstance(inv_temp, Tensor) else None
    sizes = _block_sizes(n, d, None if blocks is None else tuple(blocks))
    # rows of the unit-row buffers start at whole 16-element groups, so that Triton knows them
    # aligned and loads them as vectors: at a head size such as SigLIP-so400m's 72 the rounds
    # otherwise spilled registers (tests/test_kernels.py)
    row = cdiv(d, 16) * 16
    out = torch.empty((b, n, heads, d), dtype=v.dtype, device=v.device).permute(0, 2, 1, 3)
    images = max(1, min(MAX_GRID_Y // heads, (2**31 - 1) // (3 * heads * n * row)))
    temp = float(inv_temp) if temps is None else temps
    if b <= images:  # one part, the usual case: no views to take
        return out, _plan_part(q, k, v, temp, out, iterations, sizes, row)
    launches: list[Launch] = []
    for i in range(0, b, images):
        part = slice(i, i + images)
        part_temp = temp if temps is None else temps[part]
        launches += _plan_part(q[part], k[part], v[part], part_temp, out[part], iterations, sizes, row)
    return out, launches


def _plan_part(
    q: Tensor, k: Tensor, v: Tensor, temp: Tensor | float, out: Tensor, iterations: int, sizes: dict, row: int
) -> list[Launch]:
    """The launches for a batch that fits one launch: unit rows, the rounds, the final round
    into ``out`` (B×heads×N×d, a view of a B×N×heads×d buffer)."""
    b, heads, n, d = v.shape
    launches = []

    def unit_rows() -> Tensor:
        rows = torch.empty((3, b, heads, n, row), dtype=v.dtype, device=v.device)
        return rows if row == d else rows[..., :d]

    x = unit_rows()
    first = 0
    for streams in _streams(q, k, v):  # read where they lie, written once as unit rows
        programs = streams.shape[0] * b * heads * cdiv(n, 64)
        args = (streams, x[first:] if first else x, n, heads, b, *streams.stride(), row)
        meta = dict(ROWS=64, HEAD_DIM=d, BLOCK_D=sizes["BLOCK_D"], num_warps=4)
        launches.append(Launch(_unit_streams, (programs,), args, meta))
        first += streams.shape[0]
    grid_rows = cdiv(n, sizes["BLOCK_M"])  # the last may be a smaller tail tile
    per_image = isinstance(temp, Tensor)
    common = dict(PER_IMAGE=per_image, HEAD_DIM=d, IEEE=v.dtype == torch.float32, **sizes)
    temp_args = (temp, 0.0) if per_image else (x, float(temp))
    for _ in range(iterations):
        result = unit_rows()
        args = (x, v, result, *temp_args, n, heads, *x.stride(), *v.stride(), *result.stride())
        grid = (grid_rows, b * heads, 3)  # a program for each stream
        launches.append(Launch(_self_self_round, grid, args, dict(FINAL=False, **common)))
        x = result
    args = (x, v, out, *temp_args, n, heads, *x.stride(), *v.stride(), 0, *out.stride())
    launches.append(Launch(_self_self_round, (grid_rows, b * heads, 1), args, dict(FINAL=True, **common)))
    return launches


def self_self_attention_fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inv_temp: Tensor | float,
    iterations: int = 1,
    *,
    blocks: tuple[int, int, int, int] | None = None,
) -> Tensor:
    """GEM's self-self attention of one block in fused kernels.

    Args:
        q: B×heads×N×head_dim queries.
        k: keys, the same shape.
        v: values, the same shape.
        inv_temp: one inverse temperature, or one an image (B×1×1×1 or B).
        iterations: self-self rounds before the final one.
        blocks: (query rows, keys, warps, stages), overriding the tuned launch shape.

    Returns:
        B×heads×N×head_dim, a view of a B×N×heads×head_dim buffer.
    """
    out, launches = plan_self_self_attention(q, k, v, inv_temp, iterations, blocks=blocks)
    for launch in launches:
        launch()
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
    """:func:`self_self_attention_fused`, as one opaque operator when traced by ``torch.compile``.

    ``torch.compile`` then compiles what is around it and calls the kernels as they are.

    Args:
        q: B×heads×N×head_dim queries.
        k: keys, the same shape.
        v: values, the same shape.
        inv_temp: one inverse temperature, or one an image.
        iterations: self-self rounds before the final one.

    Returns:
        B×heads×N×head_dim.
    """
    if not torch.compiler.is_compiling():
        return self_self_attention_fused(q, k, v, inv_temp, iterations)
    temps, temp = (inv_temp, 0.0) if isinstance(inv_temp, Tensor) else (None, float(inv_temp))
    return _self_self_attention_op(q, k, v, temps, temp, iterations)
