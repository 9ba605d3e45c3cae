"""CPU backend of ``lp_dist``: torch.compile (inductor) fused reductions over the B×CO×CI space.

In float32, every p but 8 goes to the native kernels (``certify.linf_dist.native``: one evaluation
of each term for both gradients, full vector width) when they can be built; p = 8 and float64 run
here.

Same contract and numerics as ``certify.linf_dist.eager`` (see its docstring), but each call runs
compiled C++ loops that recompute ``x[b, i] − w[o, i]`` on the fly and reduce it in registers, so
the B×CO×CI tensor never exists, not even one chunk of it. Why it is built this way:

- p changes every minibatch during training, so p (and 1/p, p − 1) enter the graphs as 1-element
  tensors and one compiled variant serves every p. The variants are fixed: p = 8 by repeated
  squaring, general p (the p ≤ 10 and normalized p > 10 forms, selected by a tensor flag), p = ∞
  with and without the argmax, and the backward for p − 1 = 7 and for general p. Shapes are
  dynamic (batch, CI and CO are symbols), so a partial last batch, an evaluation batch or an
  unfolded conv layer reuse the same kernels. Each variant is compiled on a fixed synthetic
  example, so the code inductor picks (vectorization, threading) does not depend on whichever
  shape happens to come first.
- ATen's vectorized float32 ``pow`` (SLEEF) costs ~200 cycles per 8 floats, ten times the rest of
  the loop, so float32 computes ``exp2(p·log2 z)`` with a polynomial log2 written in torch ops
  (error ≲ 1e-6 relative per term, far less on y); float64 keeps ``torch.pow``.
- The p = 8 loop is short enough to be limited by the latency of its vector accumulator and by
  the cache: CI is cut into ``_SPLIT`` slices whose terms are summed before each accumulation, and
  x is processed in blocks of rows that stay in L2 while each row of w is reused from L1.
- The backward reductions run along the contiguous axis of transposed copies of the small operands
  (x, w, y, grad_y), which keeps every inner loop unit-stride.
- If this torch lacks the internals set or named here (``missing_internals``: dynamo's and fx's
  tracing settings, inductor's realize thresholds, the recompile-limit exception) or inductor
  cannot compile (no C++ compiler, unsupported platform), ``available`` warns once, in one line,
  and returns False so ``ops`` falls back to the eager backend; a variant that fails to compile
  later warns once and runs eagerly from then on. Every call records which backend computed it
  (``certify.linf_dist.usage``), so a silent fallback shows in the training log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from certify.linf_dist import eager, native, usage
from certify.linf_dist.eager import FLT_MIN, NORMALIZE_ABOVE_P, TINY

# Calls estimated below this many p = 8 element-ops run on one thread (~1 ms of work on this CPU);
# a general-p element costs about _POW_COST of them.
_PARALLEL_WORK = 1 << 23
_POW_COST = 20

_SPLIT = 2  # CI slices of the p = 8 forward (independent partial sums per accumulation)

# Inductor stores an intermediate it judges "large" or "read often" instead of recomputing it; for
# the B×CO×CI expressions here that would allocate the very tensor these kernels exist to avoid.
# dynamic_threads: always emit an OpenMP loop (the thread count is read at run time).
_INDUCTOR_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {
    "realize_opcount_threshold": 1 << 20,
    "realize_acc_reads_threshold": 1 << 20,
    "realize_reads_threshold": 1 << 20,
    "cpp.dynamic_threads": True,
}

# Minimax coefficients of log2(m) = s·P(s²), s = (m − 1)/(m + 1), on m ∈ [0.75, 1.5): relative
# error 2.5e-9. Centring the mantissa range on 1 keeps log2 z relatively accurate for z near 1,
# where (p − 1)·log2|q| in the large-p backward needs it most.
_LOG2_ODD = (2.8853900747000205, 0.9618022823030903, 0.5763892298650551, 0.43919066613588165)
# Smallest exponent passed to exp2: 2^v below it is flushed to 0. Denormal results would cost
# microcode assists; the backward keeps a margin so that grad_y·|q|^(p−1) stays normal too.
_FORWARD_MIN_EXP2 = -126.0
_BACKWARD_MIN_EXP2 = -100.0

# Synthetic example on which every variant is compiled: distinct sizes (no equality guards), none
# of them 0 or 1 (no specialization), large enough for inductor to vectorize and parallelize.
_EXAMPLE_B, _EXAMPLE_CO, _EXAMPLE_CI = 96, 80, 272


# ---------------------------------------------------------------------------------------------
# Elementwise helpers, traced into the compiled graphs.

def _log2_f32(z: Tensor) -> Tensor:
    """log2 of finite z ≥ 0 in float32: z = 2^e·m with m ∈ [0.75, 1.5), taken from the bits by
    subtracting those of 0.75 (no branch), then log2 m = s·P(s²). z = 0 gives −127. Each
    intermediate is reused as little as possible: inductor's lowering re-expands a shared
    subexpression once per use, so fan-out multiplies compile time."""
    t = z.view(torch.int32) - 0x3F400000
    m = ((t & 0x7FFFFF) + 0x3F400000).view(torch.float32)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    c0, c1, c2, c3 = _LOG2_ODD
    return (t >> 23).to(torch.float32) + s * (c0 + s2 * (c1 + s2 * (c2 + s2 * c3)))


def _pow(z: Tensor, p: Tensor, lowest: Tensor, min_exp2: float) -> Tensor:
    """z^p for z ≥ 0 and a 1-element tensor p ≥ 0; 0^p = 0 for p > 0 (at p = 0 the caller
    multiplies by sign(z) = 0).

    float32: exp2(p·log2 z) with the polynomial log2, a quarter of the cost of ATen's pow; z below
    lowest = 2^(min_exp2/p) gives 0 (the test is on z, cheap to re-expand, not on the exponent).
    float64: torch.pow, as eager (0^0 = 1 there; the sign factor zeroes it)."""
    if z.dtype == torch.float32:
        power = torch.exp2((p * _log2_f32(z)).clamp_min(min_exp2))
        return torch.where(z >= lowest, power, torch.zeros_like(power))
    return z.pow(p)


def _diff(x: Tensor, w: Tensor) -> Tensor:
    return x[:, None, :] - w[None, :, :]


# ---------------------------------------------------------------------------------------------
# Traced graph bodies (one compiled variant each).

def _g_forward_p8(x4: Tensor, w3: Tensor) -> Tensor:
    """x4 (NB, TB, S, K): x in NB blocks of TB rows, CI cut in S slices; w3 (CO, S, K).
    Returns (NB, CO, TB) = Σ d^8 with d^8 = ((d²)²)², so the loop nest is block, output, row in
    block: one row of w stays in L1 while the block of x (≤ 256 KB) streams from L2."""
    total = None
    for u in range(x4.shape[2]):
        d = x4[:, None, :, u, :] - w3[None, :, None, u, :]
        d2 = d * d
        d4 = d2 * d2
        total = d4 * d4 if total is None else total + d4 * d4
    assert total is not None  # S >= 1 slices
    return total.sum(-1).clamp_min(FLT_MIN).sqrt().sqrt().sqrt()


def _g_forward_general(x: Tensor, w: Tensor, p: Tensor, inv_p: Tensor, lowest: Tensor,
                       normalize: Tensor, floor: Tensor) -> Tensor:
    """Both finite-p forms in one graph, picked by 1-element tensors so that p crossing 10 does not
    compile a second kernel: p ≤ 10 has normalize = 0 (m = 1) and floor = FLT_MIN, y =
    max(Σ|d|^p, FLT_MIN)^(1/p); p > 10 has normalize = 1, floor = 0, y = m·(Σ(|d|/m)^p)^(1/p).
    The max pass costs a few percent of the p ≤ 10 loop, which is dominated by the power."""
    a = _diff(x, w).abs()
    m = a.amax(-1).clamp_min(TINY)
    m = torch.where(normalize, m, torch.ones_like(m))  # normalize: a bool tensor
    s = _pow(a * (1.0 / m)[:, :, None], p, lowest, _FORWARD_MIN_EXP2).sum(-1)
    return s.clamp_min(floor).pow(inv_p) * m


def _g_forward_inf(x: Tensor, w: Tensor) -> Tensor:
    return _diff(x, w).abs().amax(-1)


def _g_forward_inf_index(x: Tensor, w: Tensor, iota: Tensor) -> tuple[Tensor, Tensor]:
    """The max, then the smallest index reaching it: two plain float reductions, together ~8×
    faster here than inductor's fused argmax, which carries (value, index) pairs. iota holds
    0..CI−1 in x's dtype (exact: the caller checks CI), so the search stays in float vectors."""
    a = _diff(x, w).abs()
    m = a.amax(-1)
    ci = x.shape[1]
    first = torch.where(a == m[:, :, None], iota, ci).amin(-1).clamp_max(ci - 1).long()  # NaN: ci
    d = x.gather(1, first) - w.gather(1, first.t()).t()
    return m, torch.where(d < 0, -first - 1, first)


def _grads(x: Tensor, wt: Tensor, r: Tensor, g: Tensor, xt: Tensor, w: Tensor, rt: Tensor,
           gt: Tensor, term: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """grad_x[b, i] = Σ_o g·term(q) and grad_w[o, i] = −Σ_b g·term(q), q = (x[b, i] − w[o, i])·r[b, o].
    The small operands come in both orientations (wt = wᵀ, xt = xᵀ, rt = rᵀ, gt = gᵀ) so that
    both reductions run along a contiguous last axis."""
    qx = (x[:, :, None] - wt[None, :, :]) * r[:, None, :]  # (B, CI, CO)
    grad_x = (term(qx) * g[:, None, :]).sum(-1)
    qw = (xt[None, :, :] - w[:, :, None]) * rt[:, None, :]  # (CO, CI, B)
    grad_w = -(term(qw) * gt[:, None, :]).sum(-1)
    return grad_x, grad_w


def _seventh(q: Tensor) -> Tensor:
    q2 = q * q
    return (q * q2) * (q2 * q2)  # odd power: keeps the sign


def _g_backward_p8(x: Tensor, wt: Tensor, r: Tensor, g: Tensor,
                   xt: Tensor, w: Tensor, rt: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    return _grads(x, wt, r, g, xt, w, rt, gt, _seventh)


def _g_backward_general(x: Tensor, wt: Tensor, r: Tensor, g: Tensor, xt: Tensor, w: Tensor,
                        rt: Tensor, gt: Tensor, p_minus_1: Tensor,
                        lowest: Tensor) -> tuple[Tensor, Tensor]:
    def term(q: Tensor) -> Tensor:
        return torch.sign(q) * _pow(q.abs(), p_minus_1, lowest, _BACKWARD_MIN_EXP2)

    return _grads(x, wt, r, g, xt, w, rt, gt, term)


# ---------------------------------------------------------------------------------------------
# Argument preparation (eager, O(B·CI + CO·CI + B·CO) work) shared by real and warm-up calls.

def _scalar(value: float, like: Tensor) -> Tensor:
    """A per-call number as a 1-element tensor of x's dtype: a graph input, not a constant, so
    new values reuse the compiled code. Not 0-dim: dynamo reads 0-dim float64 CPU tensors as
    Python floats (``.item()``) and restarts its analysis to specialize them."""
    return torch.tensor([value], dtype=like.dtype)


def _lowest(p: float, min_exp2: float, like: Tensor) -> Tensor:
    """2^(min_exp2/p): the z below which z^p is flushed to 0 (0 when p = 0: nothing is flushed)."""
    return _scalar(2.0 ** (min_exp2 / p) if p > 0 else 0.0, like)


def _split_ci(t: Tensor) -> Tensor:
    """(rows, CI) → (rows, _SPLIT, K), zero-padding CI to _SPLIT·K with K ≥ 2 (a padded
    coordinate has x − w = 0 and adds nothing to Σ d^8; K = 1 would compile a specialized kernel)."""
    pad = max(-t.shape[1] % _SPLIT, 2 * _SPLIT - t.shape[1])
    if pad:
        t = F.pad(t, (0, pad))
    return t.view(t.shape[0], _SPLIT, -1)


def _row_block(b: int, ci: int) -> int:
    """Rows of x per block of the p = 8 forward: ~256 KB of x (an L2's worth), 8 to 64 rows, and
    at least two blocks of at least two rows (sizes 1 would each compile a specialized kernel)."""
    rows = max(8, min(64, 1 << max(0, (65536 // max(ci, 1)).bit_length() - 1)))
    return max(2, min(rows, -(-b // 2)))


def _blocked_rows(x3: Tensor, rows: int) -> Tensor:
    """(B, S, K) → (NB, rows, S, K), zero-padding B to a multiple of rows (extra outputs are cut)."""
    pad = -x3.shape[0] % rows
    if pad:
        x3 = F.pad(x3, (0, 0, 0, 0, 0, pad))
    return x3.view(-1, rows, *x3.shape[1:])


def _forward_args(x: Tensor, w: Tensor, p: float) -> tuple[str, tuple[Tensor, ...]]:
    if p == 8.0:
        return "forward_p8", (_blocked_rows(_split_ci(x), _row_block(*x.shape)), _split_ci(w))
    normalize = p > NORMALIZE_ABOVE_P
    return "forward_general", (x, w, _scalar(p, x), _scalar(1.0 / p, x),
                               _lowest(p, _FORWARD_MIN_EXP2, x), torch.tensor([normalize]),
                               _scalar(0.0 if normalize else FLT_MIN, x))


def _inf_index_args(x: Tensor, w: Tensor) -> tuple[Tensor, ...]:
    return (x, w, torch.arange(x.shape[1], dtype=x.dtype))


def _backward_args(x: Tensor, w: Tensor, y: Tensor, grad_y: Tensor,
                   p: float) -> tuple[str, tuple[Tensor, ...]]:
    r = 1.0 / y.clamp_min(TINY)  # (B, CO), as eager computes it
    g = grad_y.contiguous()
    args = (x, w.t().contiguous(), r, g, x.t().contiguous(), w, r.t().contiguous(),
            g.t().contiguous())
    if p == 8.0:
        return "backward_p8", args
    return "backward_general", args + (_scalar(p - 1.0, x), _lowest(p - 1.0, _BACKWARD_MIN_EXP2, x))


def _example_args(name: str, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Arguments of the synthetic example on which ``name`` is compiled."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_EXAMPLE_B, _EXAMPLE_CI, dtype=dtype, generator=gen)
    w = torch.randn(_EXAMPLE_CO, _EXAMPLE_CI, dtype=dtype, generator=gen)
    if name == "forward_inf":
        return (x, w)
    if name == "forward_inf_index":
        return _inf_index_args(x, w)
    p = 8.0 if name.endswith("p8") else 20.0
    if name.startswith("forward"):
        return _forward_args(x, w, p)[1]
    y = torch.cdist(x, w, p=p).clamp_min(1.0)
    return _backward_args(x, w, y, torch.randn(y.shape, dtype=dtype, generator=gen), p)[1]


# ---------------------------------------------------------------------------------------------
# Compilation management.

_lock = threading.RLock()
_warned: set[str] = set()
_probe_ok: bool | None = None


def _warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


@contextlib.contextmanager
def _tracing_settings() -> Iterator[None]:
    """Settings for tracing our bodies (set and restored directly: ``config.patch`` costs ~100 µs
    a call). Duck shaping would give equal sizes one symbol and guard on the equality, so a later
    call with CI ≠ CO (say) would recompile. Python floats in the bodies are constants; tracing
    them as symbols only restarts the analysis. The recompile limit leaves room for the few
    legitimate specializations (dtype, a size of 1, a reduction longer than 4096, where inductor
    switches to chunked float32 sums)."""
    from torch._dynamo import config as dynamo
    from torch.fx.experimental import _config as fx

    saved = dynamo.specialize_float, dynamo.recompile_limit, fx.use_duck_shape
    dynamo.specialize_float, fx.use_duck_shape = True, False
    dynamo.recompile_limit = max(saved[1], 32)
    try:
        yield
    finally:
        dynamo.specialize_float, dynamo.recompile_limit, fx.use_duck_shape = saved


@contextlib.contextmanager
def one_thread(when: bool = True) -> Iterator[None]:
    """One OpenMP thread for the block (when ``when``): a parallel region costs microseconds on an
    idle machine but milliseconds when another process holds a core (the barrier waits for a time
    slice), so many small operations run faster on one thread."""
    threads = torch.get_num_threads()
    if threads == 1 or not when:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _threads(work: float) -> contextlib.AbstractContextManager[None]:
    """One thread for calls below ``_PARALLEL_WORK`` element-operations."""
    return one_thread(work < _PARALLEL_WORK)


class _Variant:
    """One graph body, compiled with dynamic shapes on the synthetic example the first time it is
    needed for a dtype; remembers a compile failure."""

    def __init__(self, name: str, body: Callable[..., Any]) -> None:
        self.name = name
        self.body = body
        self.compiled: Callable[..., Any] | None = None  # created on first use, inside _run's try
        self.ready: set[torch.dtype] = set()
        self.failed = False

    def _call(self, args: tuple[Tensor, ...]) -> Any:
        if self.compiled is None:
            self.compiled = torch.compile(self.body, dynamic=True, fullgraph=True,
                                          options=_INDUCTOR_OPTIONS)
        with _tracing_settings(), torch.no_grad():
            # detach: a requires_grad flag would be guarded on, and differ between calls.
            return self.compiled(*(a.detach() for a in args))

    def __call__(self, args: tuple[Tensor, ...], work: float) -> Any:
        dtype = args[0].dtype
        if dtype not in self.ready:
            with _lock:
                if dtype not in self.ready:
                    self._call(_example_args(self.name, dtype))
                    self.ready.add(dtype)
        with _threads(work):
            return self._call(args)


_BODIES: dict[str, Callable[..., Any]] = {
    "forward_p8": _g_forward_p8,
    "forward_general": _g_forward_general,
    "forward_inf": _g_forward_inf,
    "forward_inf_index": _g_forward_inf_index,
    "backward_p8": _g_backward_p8,
    "backward_general": _g_backward_general,
}
_VARIANTS = {name: _Variant(name, body) for name, body in _BODIES.items()}


def _run(name: str, args: tuple[Tensor, ...], work: float) -> Any:
    """Run a compiled variant; None when it cannot be compiled (the caller then goes eager).
    ``work`` estimates the call's cost in p = 8 element-ops (it only picks the thread count)."""
    variant = _VARIANTS[name]
    if variant.failed:
        return None
    try:
        return variant(args, work)
    except Exception as error:  # compile errors surface as many exception types
        if type(error).__name__ == "FailOnRecompileLimitHit":
            # fullgraph=True raises instead of running the body eagerly (which would build the
            # B×CO×CI tensor): this shape goes to the chunked eager code, cached ones stay fast.
            _warn_once(name + ":limit", f"lp_dist: the CPU kernel {name!r} hit torch._dynamo's "
                                        "recompile limit; new shapes use the eager backend")
            return None
        variant.failed = True
        _warn_once(name, f"lp_dist: compiling the CPU kernel {name!r} failed "
                         f"({type(error).__name__}: {error}); using the eager backend for it")
        return None


def _work(x: Tensor, w: Tensor, cost: float) -> float:
    return float(x.shape[0]) * w.shape[0] * x.shape[1] * cost


# The torch versions this backend is tested with (pyproject.toml's torch requirement says the same;
# a test checks both): outside them the internals below may have moved.
TESTED_TORCH = ">=2.4,<2.15"
_MISSING = object()


def missing_internals() -> list[str]:
    """The torch internals this backend sets or names that this torch lacks (empty: all there)."""
    import importlib

    wanted = {"torch._dynamo.config": ("specialize_float", "recompile_limit"),
              "torch.fx.experimental._config": ("use_duck_shape",),
              "torch._inductor.config": ("realize_opcount_threshold", "realize_acc_reads_threshold",
                                         "realize_reads_threshold", "cpp.dynamic_threads"),
              "torch._dynamo.exc": ("FailOnRecompileLimitHit",)}
    missing = []
    for module_name, names in wanted.items():
        try:
            module: Any = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - any failure means the internals are not there
            missing.append(module_name)
            continue
        for name in names:
            target = module
            for part in name.split("."):
                target = getattr(target, part, _MISSING)
            if target is _MISSING:
                missing.append(f"{module_name}.{name}")
    return missing


class _NoCudaRuntimeNote(logging.Filter):
    """Drops torch's "No CUDA runtime is found" warning, which inductor's first compile prints in
    the middle of a progress bar on machines with CUDA files but no GPU (nothing is wrong)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def _probe() -> bool:
    """Compile a tiny graph once: tells whether inductor's C++ toolchain works on this machine,
    after checking that this torch has the internals the compiled kernels rely on."""
    logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNote())
    missing = missing_internals()
    if missing:
        _warn_once("internals", f"lp_dist: torch {torch.__version__} lacks {', '.join(missing)}, "
                                f"which the compiled CPU backend relies on (tested with torch"
                                f"{TESTED_TORCH}); using the eager CPU backend")
        return False
    try:
        probe = torch.compile(lambda t: (t * t).sum(-1), dynamic=False)
        with torch.no_grad():
            out = probe(torch.arange(6, dtype=torch.float32).view(2, 3))
        return bool(torch.equal(out, torch.tensor([5.0, 50.0])))
    except Exception as error:
        _warn_once("probe", f"lp_dist: torch.compile does not work on this machine "
                            f"({type(error).__name__}: {error}); using the eager CPU backend")
        return False


def available(x: Tensor) -> bool:
    """True when x is a float32/float64 CPU tensor and inductor compiles here (checked once;
    never raises)."""
    global _probe_ok
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if _probe_ok is None:
        with _lock:
            if _probe_ok is None:
                _probe_ok = _probe()
    return _probe_ok


# ---------------------------------------------------------------------------------------------
# The backend contract (see certify.linf_dist.eager).

def _native_serves(x: Tensor, p: float) -> bool:
    """float32 at any p but 8 (whose squaring loop here is faster) goes to the native kernels."""
    return p != 8.0 and native.available(x)


def _finite(*tensors: Tensor) -> bool:
    """Whether no value is NaN or ±inf: the native and compiled kernels work on the floats' bits
    and would not carry them as eager does. Where the native kernels serve, their own scan (no
    OpenMP threads left spinning); otherwise one sum each (NaN and ±inf reach it, and a sum that
    overflows only sends a finite call to eager, exact but slower)."""
    if native.available(tensors[0]):
        return native.all_finite(*tensors)
    return all(math.isfinite(float(t.sum())) for t in tensors)


def forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    """y[b, o] = ‖x[b] − w[o]‖_p for finite p ≥ 1 (unnormalized for p ≤ 10, normalized above)."""
    if not _finite(x, w):
        return eager.forward(x, w, p)
    if _native_serves(x, p):
        return native.forward(x, w, p)
    y = _run(*_forward_args(x, w, p), _work(x, w, 1 if p == 8.0 else _POW_COST))
    if y is None:
        return eager.forward(x, w, p)
    usage.record("compiled")
    if p == 8.0:  # (NB, CO, TB) → (B, CO)
        y = y.transpose(1, 2).reshape(-1, w.shape[0])[:x.shape[0]].contiguous()
    return y


def forward_inf(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    """y = max_i |x_i − w_i| and, if asked, the signed first argmax (``i`` or ``−(i + 1)``)."""
    if not _finite(x, w):
        return eager.forward_inf(x, w, with_index)
    if _native_serves(x, math.inf):
        return native.forward_inf(x, w, with_index)
    if with_index:
        exact = x.shape[1] <= (1 << 24 if x.dtype == torch.float32 else 1 << 53)  # iota is exact
        out = _run("forward_inf_index", _inf_index_args(x, w), _work(x, w, 1)) if exact else None
        if out is None:
            return eager.forward_inf(x, w, True)
        usage.record("compiled")
        return out
    y = _run("forward_inf", (x, w), _work(x, w, 1))
    if y is None:
        return eager.forward_inf(x, w, False)
    usage.record("compiled")
    return y, None


def backward_inf(index: Tensor, grad_y: Tensor, x_shape: torch.Size,
                 w_shape: torch.Size) -> tuple[Tensor, Tensor] | None:
    """p = ∞'s gradients from the saved signed index: the native scatter, or None (``ops`` then
    scatters with torch)."""
    if not native.available(grad_y):
        return None
    return native.backward_inf(index, grad_y, x_shape, w_shape)


def backward(x: Tensor, w: Tensor, y: Tensor, grad_y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """grad_x = Σ_o t, grad_w = −Σ_b t, t = grad_y·sign(q)|q|^(p−1), q = (x − w)/max(y, 1e-10)."""
    if not _finite(x, w, y):  # (a NaN in grad_y passes through every kernel's products)
        return eager.backward(x, w, y, grad_y, p)
    if _native_serves(x, p):
        return native.backward(x, w, y, grad_y, p)
    out = _run(*_backward_args(x, w, y, grad_y, p), _work(x, w, 2 if p == 8.0 else 2 * _POW_COST))
    if out is None:
        return eager.backward(x, w, y, grad_y, p)
    usage.record("compiled")
    return out
