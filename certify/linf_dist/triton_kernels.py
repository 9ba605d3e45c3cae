"""Triton backend of ``lp_dist``: the CUDA path, which also runs on CPU tensors under TRITON_INTERPRET=1.

The op is a B×CO×CI reduction of |x − w|^p with no matrix-product form, so plain PyTorch must build the
B×CO×CI tensor. These kernels tile it like a matrix product and keep each tile in registers. They follow
the numerics of ``certify.linf_dist.eager`` (the backend contract): squaring fast paths for small integer
p, the max-normalized form for p > 10, a sign-encoded first argmax at p = ∞, and one fused backward for
grad_x and grad_w. They also avoid the reference CUDA extension's pitfalls (docs/linf_dist.md#backends):
kernels run on PyTorch's current stream, offsets are 64-bit, fp64 works, and no device query runs per call.
"""

import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor

from certify.linf_dist import eager, usage
from certify.linf_dist.eager import FLT_MIN, NORMALIZE_ABOVE_P, TINY

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - missing or broken install: the module imports, available() says False
    triton = None

# Fixed tiles (no autotuning, so the interpreter runs one config). (BLOCK_B, BLOCK_CO, BLOCK_CI) by dtype;
# each 3-D register tile holds 8192 fp32 or 4096 fp64 elements spread over NUM_WARPS warps.
_FORWARD_BLOCKS = {torch.float32: (32, 32, 8), torch.float64: (32, 32, 4)}
_BACKWARD_BLOCKS = {torch.float32: (4, 64, 32), torch.float64: (2, 64, 32)}
_NUM_WARPS = 4
# The outer-product forward (p ≤ 10): (BLOCK_B, BLOCK_CO), 32 fp32 accumulators per thread at 4 warps.
_OUTER_BLOCKS = {torch.float32: (64, 64), torch.float64: (32, 64)}
FORWARD_LAYOUTS = ("tile", "outer")
_forward_layout = "tile"
_outer_tiles: tuple[int, int, int] | None = None  # (BLOCK_B, BLOCK_CO, warps) forced by forward_layout
_PROGRAMS_PER_SM = 4  # backward: split B until about this many programs run per SM

if triton is not None:
    _TINY = tl.constexpr(TINY)  # eager's floors, as compile-time constants made in the kernel's dtype
    _FLT_MIN = tl.constexpr(FLT_MIN)

    @triton.jit
    def _ipow(v, N: tl.constexpr):
        # v**N for a constant 1 ≤ N ≤ 8 by repeated squaring; plain products, so odd N keep the sign
        if N == 1:
            r = v
        elif N == 2:
            r = v * v
        elif N == 3:
            r = v * v * v
        elif N == 4:
            v2 = v * v
            r = v2 * v2
        elif N == 5:
            v2 = v * v
            r = v2 * v2 * v
        elif N == 6:
            v2 = v * v
            r = v2 * v2 * v2
        elif N == 7:
            v2 = v * v
            v4 = v2 * v2
            r = v4 * v2 * v
        else:
            v2 = v * v
            v4 = v2 * v2
            r = v4 * v4
        return r

    @triton.jit
    def _abs_pow(a, p, IP: tl.constexpr):
        # a**p for a ≥ 0: squaring when p is the integer IP > 0, else exp2(p·log2 a) with 0**p = 0
        if IP > 0:
            r = _ipow(a, IP)
        else:
            nonzero = a > 0
            r = tl.where(nonzero, tl.exp2(p * tl.log2(tl.where(nonzero, a, 1.0))), 0.0)
        return r

    @triton.jit
    def _signed_pow(q, p_minus_1, K: tl.constexpr):
        # sign(q)·|q|**(p−1); K = p − 1 when that is an integer 0..7 (odd K: q**K keeps the sign), else −1
        if K < 0:
            nonzero = q != 0
            r = tl.exp2(p_minus_1 * tl.log2(tl.where(nonzero, tl.abs(q), 1.0)))
            r = tl.where(q > 0, r, tl.where(q < 0, -r, 0.0))
        elif K == 0:
            r = tl.where(q > 0, 1.0, tl.where(q < 0, -1.0, 0.0)).to(q.dtype)
        elif K % 2 == 1:
            r = _ipow(q, K)
        else:
            r = _ipow(q, K - 1) * tl.abs(q)
        return r

    @triton.jit
    def _unnormalized_root(total, power, IP: tl.constexpr):
        # the p ≤ 10 forwards' last step: y = max(Σ|d|^p, FLT_MIN)^(1/p), floored against underflow
        total = tl.maximum(total, tl.full((), _FLT_MIN, total.dtype))
        if IP == 1:
            r = total
        else:
            r = tl.exp2(tl.log2(total) / power)
        return r

    @triton.jit
    def _diff_tile(x_rows, w_rows, mask_b, mask_o, k, CI, BLOCK_CI: tl.constexpr):
        # d = x − w for the CI chunk at k as a BLOCK_B × BLOCK_CO × BLOCK_CI broadcast; ragged edges give d = 0
        cols = k + tl.arange(0, BLOCK_CI)
        mask_c = cols < CI
        xt = tl.load(x_rows + cols[None, :], mask=mask_b[:, None] & mask_c[None, :], other=0.0)
        wt = tl.load(w_rows + cols[None, :], mask=mask_o[:, None] & mask_c[None, :], other=0.0)
        return xt[:, None, :] - wt[None, :, :]

    @triton.jit
    def _lp_forward_kernel(x_ptr, w_ptr, y_ptr, B, CO, CI, p: tl.float64, IP: tl.constexpr,
                           NORMALIZE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_CO: tl.constexpr,
                           BLOCK_CI: tl.constexpr):
        # One program per BLOCK_B × BLOCK_CO tile of y (B, CO); x (B, CI), w (CO, CI) are row-major.
        dtype = x_ptr.dtype.element_ty  # accumulate in the input precision: fp32 or fp64
        power = tl.full((), p, dtype)  # p arrives as fp64 (exact for fp64 inputs); compute in dtype
        rows_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rows_o = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
        mask_b = rows_b < B
        mask_o = rows_o < CO
        x_rows = x_ptr + rows_b.to(tl.int64)[:, None] * CI  # int64 before the stride product: B·CI ≥ 2^31 is fine
        w_rows = w_ptr + rows_o.to(tl.int64)[:, None] * CI
        total = tl.zeros((BLOCK_B, BLOCK_CO), dtype)
        if NORMALIZE:
            # p > 10, two passes over CI: the exact max m, then Σ(|d|/m)^p, which cannot overflow
            m = tl.zeros((BLOCK_B, BLOCK_CO), dtype)
            for k in range(0, CI, BLOCK_CI):
                m = tl.maximum(m, tl.max(tl.abs(_diff_tile(x_rows, w_rows, mask_b, mask_o, k, CI, BLOCK_CI)), 2))
            m = tl.maximum(m, tl.full((), _TINY, dtype))  # keeps 1/m finite
            inv_m = 1.0 / m
            for k in range(0, CI, BLOCK_CI):
                r = tl.abs(_diff_tile(x_rows, w_rows, mask_b, mask_o, k, CI, BLOCK_CI)) * inv_m[:, :, None]
                total += tl.sum(_abs_pow(r, power, 0), 2)
            positive = total > 0  # all-zero rows: total = 0 and y = 0, as eager gives
            y = tl.where(positive, m * tl.exp2(tl.log2(tl.where(positive, total, 1.0)) / power), 0.0)
        else:
            # p ≤ 10, one unnormalized pass: y = max(Σ|d|^p, FLT_MIN)^(1/p)
            for k in range(0, CI, BLOCK_CI):
                total += tl.sum(_abs_pow(tl.abs(_diff_tile(x_rows, w_rows, mask_b, mask_o, k, CI, BLOCK_CI)),
                                         power, IP), 2)
            y = _unnormalized_root(total, power, IP)
        out = y_ptr + rows_b.to(tl.int64)[:, None] * CO + rows_o[None, :]
        tl.store(out, y, mask=mask_b[:, None] & mask_o[None, :])

    @triton.jit
    def _lp_forward_outer_kernel(xt_ptr, wt_ptr, y_ptr, B, CO, CI, p: tl.float64, IP: tl.constexpr,
                                 BLOCK_B: tl.constexpr, BLOCK_CO: tl.constexpr):
        # p ≤ 10 as an outer product: one program per BLOCK_B × BLOCK_CO tile of y, stepping through CI
        # one coordinate at a time; xt (CI, B) and wt (CI, CO) are transposed, so each step loads one
        # contiguous row of each and every thread updates its own accumulators (no reduction across
        # threads, unlike the 3-D tile's sum over its CI axis).
        dtype = xt_ptr.dtype.element_ty
        power = tl.full((), p, dtype)
        rows_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rows_o = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
        mask_b = rows_b < B
        mask_o = rows_o < CO
        x_col = xt_ptr + rows_b  # advanced by B (CO) per step: 64-bit pointers, no int32 product
        w_col = wt_ptr + rows_o
        total = tl.zeros((BLOCK_B, BLOCK_CO), dtype)
        for _ in range(0, CI):
            xk = tl.load(x_col, mask=mask_b, other=0.0)
            wk = tl.load(w_col, mask=mask_o, other=0.0)
            total += _abs_pow(tl.abs(xk[:, None] - wk[None, :]), power, IP)
            x_col += B
            w_col += CO
        y = _unnormalized_root(total, power, IP)
        out = y_ptr + rows_b.to(tl.int64)[:, None] * CO + rows_o[None, :]
        tl.store(out, y, mask=mask_b[:, None] & mask_o[None, :])

    @triton.jit
    def _linf_forward_kernel(x_ptr, w_ptr, y_ptr, index_ptr, B, CO, CI, WITH_INDEX: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
        # p = ∞: running max over CI chunks and, if WITH_INDEX, the first maximal coordinate with its sign.
        dtype = x_ptr.dtype.element_ty
        rows_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rows_o = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
        mask_b = rows_b < B
        mask_o = rows_o < CO
        x_rows = x_ptr + rows_b.to(tl.int64)[:, None] * CI
        w_rows = w_ptr + rows_o.to(tl.int64)[:, None] * CI
        best = tl.full((BLOCK_B, BLOCK_CO), -1.0, dtype)  # below any |d|, so the first chunk always wins
        best_key = tl.zeros((BLOCK_B, BLOCK_CO), tl.int32)
        for k in range(0, CI, BLOCK_CI):
            d = _diff_tile(x_rows, w_rows, mask_b, mask_o, k, CI, BLOCK_CI)
            a = tl.abs(d)
            chunk_max = tl.max(a, 2)
            if WITH_INDEX:
                # key = 2·i + (d_i < 0): the min key among the chunk's maxima is the first one, sign in bit 0
                cols = k + tl.arange(0, BLOCK_CI)
                key = cols[None, None, :] * 2 + (d < 0).to(tl.int32)
                chunk_key = tl.min(tl.where(a == chunk_max[:, :, None], key, 2147483647), 2)
                best_key = tl.where(chunk_max > best, chunk_key, best_key)  # strict >: earlier chunks win ties
            best = tl.maximum(best, chunk_max)
        offsets = rows_b.to(tl.int64)[:, None] * CO + rows_o[None, :]
        mask = mask_b[:, None] & mask_o[None, :]
        tl.store(y_ptr + offsets, best, mask=mask)
        if WITH_INDEX:
            i = (best_key >> 1).to(tl.int64)
            tl.store(index_ptr + offsets, tl.where((best_key & 1) != 0, -i - 1, i), mask=mask)

    @triton.jit
    def _lp_backward_kernel(x_ptr, w_ptr, y_ptr, gy_ptr, gx_ptr, gw_ptr, B, CO, CI, rows_per_split,
                            p: tl.float64, K: tl.constexpr, ATOMIC_X: tl.constexpr, ATOMIC_W: tl.constexpr,
                            BLOCK_B: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
        # Fused grad_x and grad_w: program (CO tile, CI tile, B slice) loops over its slice of B, with
        # t = grad_y·sign(q)·|q|^(p−1), q = d / y: Σ_o t goes to grad_x and −Σ_b t to grad_w.
        dtype = x_ptr.dtype.element_ty
        p_minus_1 = tl.full((), p, dtype) - 1.0
        rows_o = tl.program_id(0) * BLOCK_CO + tl.arange(0, BLOCK_CO)
        cols = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
        mask_o = rows_o < CO
        mask_c = cols < CI
        w_offsets = rows_o.to(tl.int64)[:, None] * CI + cols[None, :]
        mask_w = mask_o[:, None] & mask_c[None, :]
        wt = tl.load(w_ptr + w_offsets, mask=mask_w, other=0.0)  # this program's weights stay in registers
        acc_w = tl.zeros((BLOCK_CO, BLOCK_CI), dtype)
        b_start = tl.program_id(2) * rows_per_split
        b_stop = tl.minimum(b_start + rows_per_split, B)
        for b0 in range(b_start, b_stop, BLOCK_B):
            rows_b = b0 + tl.arange(0, BLOCK_B)
            mask_b = rows_b < b_stop
            x_offsets = rows_b.to(tl.int64)[:, None] * CI + cols[None, :]
            mask_x = mask_b[:, None] & mask_c[None, :]
            xt = tl.load(x_ptr + x_offsets, mask=mask_x, other=0.0)
            y_offsets = rows_b.to(tl.int64)[:, None] * CO + rows_o[None, :]
            mask_y = mask_b[:, None] & mask_o[None, :]
            # padded (b, o) get y = inf, so 1/y = q = t = 0 there: |q|^(p−1) cannot overflow into inf·0
            yt = tl.load(y_ptr + y_offsets, mask=mask_y, other=float("inf"))
            gt = tl.load(gy_ptr + y_offsets, mask=mask_y, other=0.0)
            inv_y = 1.0 / tl.maximum(yt, tl.full((), _TINY, dtype))  # one reciprocal per (b, o)
            q = (xt[:, None, :] - wt[None, :, :]) * inv_y[:, :, None]
            t = gt[:, :, None] * _signed_pow(q, p_minus_1, K)
            gx = tl.sum(t, 1)
            if ATOMIC_X:  # several CO tiles add into the same grad_x rows
                tl.atomic_add(gx_ptr + x_offsets, gx, mask=mask_x, sem="relaxed")
            else:
                tl.store(gx_ptr + x_offsets, gx, mask=mask_x)
            acc_w += tl.sum(t, 0)
        if ATOMIC_W:  # several B slices add into the same grad_w tile
            tl.atomic_add(gw_ptr + w_offsets, -acc_w, mask=mask_w, sem="relaxed")
        else:
            tl.store(gw_ptr + w_offsets, -acc_w, mask=mask_w)

    # Kernels decorated while TRITON_INTERPRET was on are interpreted: they then run on CPU tensors.
    INTERPRETED = type(_lp_forward_kernel).__name__ == "InterpretedFunction"
else:
    INTERPRETED = False


def available(x: Tensor) -> bool:
    """Whether these kernels can run on x: triton imports and x is a CUDA tensor, or a CPU tensor while
    the kernels were decorated for Triton's interpreter (TRITON_INTERPRET=1 when this module was imported).
    Never raises, so backend selection can always ask."""
    try:
        return triton is not None and (bool(x.is_cuda) or (INTERPRETED and x.device.type == "cpu"))
    except Exception:  # noqa: BLE001 - whatever x is, the answer is "no"
        return False


@contextmanager
def forward_layout(name: str, tiles: tuple[int, int, int] | None = None) -> Iterator[None]:
    """Run the p ≤ 10 forward with the ``"tile"`` kernel (the default) or the ``"outer"`` one inside
    this block: the benchmark measures both on a GPU before either becomes the only one. ``tiles``
    (outer only): (BLOCK_B, BLOCK_CO, warps), powers of two, instead of the defaults."""
    global _forward_layout, _outer_tiles
    if name not in FORWARD_LAYOUTS:
        raise ValueError(f"forward layout must be one of {', '.join(FORWARD_LAYOUTS)}, got {name!r}")
    if tiles is not None and not all(t > 0 and t & (t - 1) == 0 for t in tiles):
        raise ValueError(f"outer tiles must be three powers of two, got {tiles}")
    before = _forward_layout, _outer_tiles
    _forward_layout, _outer_tiles = name, tiles
    try:
        yield
    finally:
        _forward_layout, _outer_tiles = before


def forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    """``y[b, o] = ‖x[b] − w[o]‖_p`` for finite p ≥ 1, with eager's numerics (see the module docstring)."""
    x, w = x.contiguous(), w.contiguous()
    (B, CI), CO = x.shape, w.shape[0]
    if B == 0 or CO == 0 or CI == 0:
        return eager.forward(x, w, p)
    p = float(p)
    y = x.new_empty(B, CO)
    if _forward_layout == "outer" and p <= NORMALIZE_ABOVE_P:
        bb, bco, warps = _outer_tiles or (*_OUTER_BLOCKS[x.dtype], _NUM_WARPS)
        grid = (triton.cdiv(B, bb), triton.cdiv(CO, bco))
        with _device_guard(x):
            _lp_forward_outer_kernel[grid](x.t().contiguous(), w.t().contiguous(), y, B, CO, CI, p,
                                           IP=_integer_power(p), BLOCK_B=bb, BLOCK_CO=bco,
                                           num_warps=warps)
        usage.record("triton")
        return y
    bb, bco, bci = _FORWARD_BLOCKS[x.dtype]
    grid = (triton.cdiv(B, bb), triton.cdiv(CO, bco))
    with _device_guard(x):
        _lp_forward_kernel[grid](x, w, y, B, CO, CI, p, IP=_integer_power(p), NORMALIZE=p > NORMALIZE_ABOVE_P,
                                 BLOCK_B=bb, BLOCK_CO=bco, BLOCK_CI=bci, num_warps=_NUM_WARPS)
    usage.record("triton")
    return y


def forward_inf(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    """``y = max_i |x_i − w_i|`` and, if asked, the first maximal i as int64, ``−(i + 1)`` where d_i < 0;
    without the index (inference) the kernel skips the argmax bookkeeping."""
    x, w = x.contiguous(), w.contiguous()
    (B, CI), CO = x.shape, w.shape[0]
    if B == 0 or CO == 0 or CI == 0:
        return eager.forward_inf(x, w, with_index)
    if CI >= 1 << 30:  # the in-kernel key 2·i + sign is int32
        raise ValueError(f"lp_dist's Triton p = ∞ kernel supports fewer than 2^30 inputs, got {CI}")
    y = x.new_empty(B, CO)
    index = torch.empty(B, CO, dtype=torch.int64, device=x.device) if with_index else None
    bb, bco, bci = _FORWARD_BLOCKS[x.dtype]
    grid = (triton.cdiv(B, bb), triton.cdiv(CO, bco))
    with _device_guard(x):
        _linf_forward_kernel[grid](x, w, y, y if index is None else index, B, CO, CI, WITH_INDEX=with_index,
                                   BLOCK_B=bb, BLOCK_CO=bco, BLOCK_CI=bci, num_warps=_NUM_WARPS)
    usage.record("triton")
    return y, index


def backward(x: Tensor, w: Tensor, y: Tensor, grad_y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Gradients (grad_x, grad_w) of a finite-p forward, from its saved output y, in one fused kernel."""
    return _backward(x, w, y, grad_y, p)


def _backward(x: Tensor, w: Tensor, y: Tensor, grad_y: Tensor, p: float,
              split_b: int | None = None) -> tuple[Tensor, Tensor]:
    """``backward`` with the B split open to tests (it picks between stores and atomic adds)."""
    x, w, y, grad_y = x.contiguous(), w.contiguous(), y.contiguous(), grad_y.contiguous()
    (B, CI), CO = x.shape, w.shape[0]
    if B == 0 or CO == 0 or CI == 0:
        return eager.backward(x, w, y, grad_y, p)
    bb, bco, bci = _BACKWARD_BLOCKS[x.dtype]
    tiles_co, tiles_ci, blocks_b = triton.cdiv(CO, bco), triton.cdiv(CI, bci), triton.cdiv(B, bb)
    if split_b is None:  # split B only until the grid fills the GPU: each split costs one atomic grad_w tile
        split_b = triton.cdiv(_target_programs(x), tiles_co * tiles_ci)
    rows_per_split = triton.cdiv(blocks_b, max(1, min(split_b, blocks_b))) * bb  # whole BLOCK_B blocks
    split_b = triton.cdiv(B, rows_per_split)
    atomic_x, atomic_w = tiles_co > 1, split_b > 1
    grad_x = torch.zeros_like(x) if atomic_x else torch.empty_like(x)
    grad_w = torch.zeros_like(w) if atomic_w else torch.empty_like(w)
    p = float(p)
    with _device_guard(x):
        _lp_backward_kernel[(tiles_co, tiles_ci, split_b)](
            x, w, y, grad_y, grad_x, grad_w, B, CO, CI, rows_per_split, p, K=_integer_power(p) - 1,
            ATOMIC_X=atomic_x, ATOMIC_W=atomic_w, BLOCK_B=bb, BLOCK_CO=bco, BLOCK_CI=bci, num_warps=_NUM_WARPS)
    usage.record("triton")
    return grad_x, grad_w


def _integer_power(p: float) -> int:
    """p when it is an integer in 1..8 (the squaring fast paths), else 0 (general exp2/log2 path)."""
    return int(p) if float(p).is_integer() and 1 <= p <= 8 else 0


def _device_guard(x: Tensor):
    # Triton compiles for and launches on torch.cuda.current_device(), so make it x's device. The stream
    # is PyTorch's current stream on that device: triton 3.8's launcher reads it per launch through
    # torch._C._cuda_getCurrentRawStream (triton/backends/driver.py, GPUDriver), unlike the reference
    # extension's legacy default stream.
    return torch.cuda.device(x.device) if x.is_cuda else nullcontext()


def _target_programs(x: Tensor) -> int:
    if not x.is_cuda:  # the interpreter runs programs one by one: no reason to split
        return 1
    return _PROGRAMS_PER_SM * _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(device_index: int) -> int:
    """Cached per device: the reference kernels' per-call cudaGetDeviceProperties is slow
    (docs/linf_dist.md#backends)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count

