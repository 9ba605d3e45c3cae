"""Native float32 CPU kernels of ``lp_dist`` for general p and p = ∞, called through ctypes.

Why not only torch.compile: inductor evaluates one reduction per kernel, so the backward of a
non-integer p computed |q|^(p−1) twice (once per gradient), and its general-p loops carried
selects and a second normalization pass. ``native_kernels.c`` evaluates each term once and adds
it to both gradients, and runs at the machine's full vector width (AVX-512 where present). It is
plain C with no Python or torch headers: compiled with the system C compiler on first use (about 3
seconds), cached under ``$CERTIFY_CACHE`` (default ``~/.cache/certify``) by a hash of the source,
the flags, the compiler and the CPU. Calls are split into ``torch.get_num_threads()`` ranges of
rows. Where torch runs on libgomp, the library is built with OpenMP and shares torch's runtime, so
the ranges run on torch's own threads: those spin for milliseconds after every torch operation,
and run beside ours they took a third of the cores' time (p = 8.5 training steps 1.65× slower).
Elsewhere ctypes releases the GIL and the ranges run on this module's Python threads. Where no
compiler works, ``available`` says so once and the compiled (inductor) kernels serve every p as
before.

Same contract and numerics as ``certify.linf_dist.eager`` within float32 tolerances, with one
deliberate difference: the forward uses the normalized form ``m·(Σ(|d|/m)^p)^(1/p)`` at every p
(floored at FLT_MIN^(1/p) for p ≤ 10, as the unnormalized form is), which cannot overflow.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from certify.linf_dist import usage
from certify.linf_dist.eager import TINY

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")
CACHE_ENV = "CERTIFY_CACHE"
BACKWARD_MIN_EXP2 = -100.0  # floor of |q|^(p−1)'s exponent: grad_y·|q|^(p−1) stays a normal float

# p = ∞ with the index: rows up to this long run across outputs (lp_forward_inf_t). Measured at
# B = 512 on 2 cores: CI = CO = 256, 2.2 ms against 3.8; CI = 784, CO = 256, 13.3 against 12.6;
# CI = CO = 1024, 36.8 against 27.8.
INF_ACROSS_OUTPUTS_BELOW = 512

# Calls below this many element-ops (b, o, i) run on one thread: a thread hand-off costs tens of µs.
_PARALLEL_WORK = 1 << 20

_lock = threading.Lock()
_openmp = False  # the library runs its ranges on torch's own OpenMP threads
_parallelism = "not loaded"
_library: ctypes.CDLL | None = None
_state: str | None = None  # None: not tried; "ok"; or why it is unavailable
_pool: ThreadPoolExecutor | None = None


def _cpu_description() -> str:
    """What -march=native compiles for: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _torch_omp_symbol() -> int | None:
    """The address of the omp_get_max_threads torch itself calls (looked up from libtorch_cpu's
    handle, which searches its own dependencies), or None without one (no OpenMP, another
    platform's library names)."""
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return ctypes.cast(ctypes.CDLL(str(library)).omp_get_max_threads, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def torch_openmp() -> str | None:
    """The path of the libgomp torch runs its intra-op threads on, or None: Intel's OpenMP (some
    builds), none, or no /proc to tell. Found as the mapped file holding torch's
    omp_get_max_threads, so another package's copy of libgomp is not mistaken for it."""
    address = _torch_omp_symbol()
    if address is None:
        return None
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        fields = line.split()
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < end and len(fields) >= 6:
            return fields[5] if Path(fields[5]).name.startswith("libgomp") else None
    return None


def build_flags() -> tuple[str, ...]:
    """The compiler flags: with OpenMP where torch runs on libgomp."""
    return (*FLAGS, "-fopenmp") if torch_openmp() is not None else FLAGS


def library_path(flags: tuple[str, ...] | None = None) -> Path:
    """Where the shared library for this source, the flags (default ``build_flags()``), compiler
    and CPU is (or will be) cached."""
    flags = build_flags() if flags is None else flags
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = "?"
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(flags), compiler, version,
                                    _cpu_description()]).encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "certify")
    return root / "native" / f"lp_dist_{key}.so"


def _fallback_path(path: Path) -> Path:
    """The same file name in the temporary directory, for a home without a writable cache."""
    return Path(tempfile.gettempdir()) / f"certify-native-{os.getuid() if hasattr(os, 'getuid') else 0}" / path.name


def _build(target: Path, flags: tuple[str, ...]) -> None:
    """Compile into a temporary file beside ``target``, then rename: concurrent processes (torchrun
    ranks) each build or find a complete library, never a half-written one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([_compiler(), *flags, "-o", tmp, str(SOURCE), "-lm"],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError((result.stderr.strip().splitlines() or ["no output"])[0])
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(flags: tuple[str, ...]) -> ctypes.CDLL:
    path = library_path(flags)
    failed = path.with_suffix(".failed")  # a build that failed once is not retried by every process
    if failed.exists():
        raise RuntimeError(failed.read_text().strip() or "an earlier build failed")
    if not path.exists():
        try:
            _build(path, flags)
        except OSError:  # no writable cache (a read-only home on a cluster node, say)
            path = _fallback_path(path)
            if not path.exists():
                _build(path, flags)
        except RuntimeError as error:
            if "-fopenmp" in flags:  # the plain build is still tried, and its failure reported
                with contextlib.suppress(OSError):
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    failed.write_text(str(error))
            raise
    return ctypes.CDLL(str(path))


def _load() -> ctypes.CDLL:
    """The library, built with OpenMP where torch runs on libgomp and loaded only if it then shares
    torch's runtime (its DT_NEEDED libgomp.so.1 resolves to torch's copy when that has the same
    soname); otherwise, or if that build fails, the plain build, on Python threads."""
    global _openmp, _parallelism
    lib, _openmp = None, False
    _parallelism = "Python threads (torch does not run on libgomp)"
    if build_flags() != FLAGS:
        try:
            candidate = _open(build_flags())
            candidate.lp_openmp_symbol.restype = ctypes.c_void_p
            if candidate.lp_openmp_symbol() == _torch_omp_symbol():
                lib, _openmp, _parallelism = candidate, True, "OpenMP (torch's threads)"
            else:
                _parallelism = "Python threads (the OpenMP build did not resolve to torch's libgomp)"
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _parallelism = f"Python threads (the OpenMP build failed: {error})"
    if lib is None:
        lib = _open(FLAGS)
        lib.lp_openmp_symbol.restype = ctypes.c_void_p
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    ranges: list[Any] = [ptr, ptr, i64, i64]  # lo, hi, first, count
    lib.lp_row_multiple.restype = ctypes.c_int
    lib.lp_forward.argtypes = [ptr, ptr, ptr, i64, i64, f32, *ranges]
    lib.lp_lanes.restype = ctypes.c_int
    lib.lp_forward_inf.argtypes = [ptr, ptr, ptr, ptr, i64, i64, *ranges]
    lib.lp_forward_inf_t.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, *ranges]
    lib.lp_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, i64, i64, f32, f32, *ranges]
    lib.lp_backward_inf_x.argtypes = [ptr, ptr, ptr, i64, i64, *ranges]
    lib.lp_backward_inf_w.argtypes = [ptr, ptr, ptr, i64, i64, i64, *ranges]
    lib.lp_power_degree.argtypes = [f32, i64]
    lib.lp_power_degree.restype = ctypes.c_int
    lib.lp_power.argtypes = [ptr, ptr, i64, f32, i64]
    lib.lp_set_power_tables.argtypes = [ctypes.c_int]
    lib.lp_all_finite.argtypes = [ptr, *ranges]
    lib.lp_all_finite.restype = ctypes.c_int
    return lib


def parallelism() -> str:
    """How the kernels run their ranges: on torch's OpenMP threads, or on Python threads and why
    (or why there are no native kernels)."""
    return _parallelism if _get() is not None else f"unavailable ({_state})"


def _get() -> ctypes.CDLL | None:
    """The loaded library, building it on first use; None (after one warning) if that fails."""
    global _library, _state
    if _state is None:
        with _lock:
            if _state is None:
                if os.environ.get("CERTIFY_NATIVE", "1") == "0":
                    _state = "disabled by CERTIFY_NATIVE=0"
                else:
                    try:
                        _library, _state = _load(), "ok"
                    except Exception as error:  # no compiler, no write access, foreign platform
                        _state = f"{type(error).__name__}: {error}"
                        warnings.warn(f"lp_dist: cannot build the native CPU kernels ({_state}); "
                                      f"the compiled kernels serve every p", RuntimeWarning,
                                      stacklevel=3)
    return _library


_disabled = 0  # > 0 inside ``disabled()``


def available(x: Tensor) -> bool:
    """True for float32 CPU tensors once the library is built (tried once; never raises)."""
    return not _disabled and x.device.type == "cpu" and x.dtype == torch.float32 and _get() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the block without the native kernels (the compiled ones take over): the "before" rows
    of the benchmarks, in the same process as the "after" ones."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


@contextlib.contextmanager
def log_exp_powers() -> Iterator[None]:
    """Run the block with the log2/exp2 route for every power (no tables): the kernels as they
    were before the table route, for the benchmarks' same-process comparison. Not thread-safe."""
    lib = _get()
    if lib is not None:
        lib.lp_set_power_tables(0)
    try:
        yield
    finally:
        if lib is not None:
            lib.lp_set_power_tables(1)


@contextlib.contextmanager
def separate_threads() -> Iterator[None]:
    """Run the block with the ranges on this module's Python threads even where the library
    shares torch's OpenMP runtime (the benchmarks' same-process comparison). Not thread-safe."""
    global _openmp
    saved, _openmp = _openmp, False
    try:
        yield
    finally:
        _openmp = saved


def unavailable_reason() -> str | None:
    """Why the native kernels are not used (None when they are, or have not been tried)."""
    return None if _state in (None, "ok") else _state


# ---------------------------------------------------------------------------------------------

def _padded(t: Tensor, multiple: int) -> Tensor:
    """Rows zero-padded to the kernels' row multiple (d = 0 adds nothing to any result)."""
    pad = -t.shape[1] % multiple
    return (F.pad(t, (0, pad)) if pad else t).contiguous()


def _address(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _ranges(n: int, work: float, multiple: int = 4) -> list[tuple[int, int]]:
    """Split 0..n into one contiguous range per thread (boundaries on ``multiple``, the kernels'
    row block), or a single range for small calls (an empty one for n = 0)."""
    if n == 0:
        return [(0, 0)]
    threads = torch.get_num_threads() if work >= _PARALLEL_WORK else 1
    parts = max(1, min(threads, n // multiple))
    step = -(-n // parts)
    step = -(-step // multiple) * multiple
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist; a new pool starts on demand."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run_ranges(kernel: Callable[..., Any], args: tuple[Any, ...], ranges: list[tuple[int, int]]) -> Any:
    """``kernel(*args, lo, hi, first, count)`` over the ranges: one call where the library shares
    torch's OpenMP runtime (its threads then run them), else one call per range on this module's
    threads. Returns the results of the calls."""
    global _pool
    n = len(ranges)
    lo = (ctypes.c_int64 * n)(*(r[0] for r in ranges))
    hi = (ctypes.c_int64 * n)(*(r[1] for r in ranges))
    if n == 1 or _openmp:
        return [kernel(*args, lo, hi, 0, n)]
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                           thread_name_prefix="lp_dist")
    return [f.result() for f in [_pool.submit(kernel, *args, lo, hi, k, 1) for k in range(n)]]


def all_finite(*tensors: Tensor) -> bool:
    """Whether no value is NaN or ±inf, scanned by the library: a torch reduction here would leave
    OpenMP's threads spinning through the kernel that follows (p = ∞'s forward took 28 ms instead
    of 20 after a torch.sum on 2 cores)."""
    lib = _get()
    assert lib is not None
    for t in tensors:
        if t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        flat = flat if flat.is_contiguous() else flat.contiguous()
        ranges = _ranges(flat.numel(), float(flat.numel()) * 64, 1 << 12)  # ~64× cheaper per float
        if not all(_run_ranges(lib.lp_all_finite, (_address(flat),), ranges)):
            return False
    return True


def forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    """y[b, o] = ‖x[b] − w[o]‖_p for finite p ≥ 1."""
    lib = _get()
    assert lib is not None
    multiple = lib.lp_row_multiple()
    xp, wp = _padded(x, multiple), _padded(w, multiple)
    y = x.new_empty(x.shape[0], w.shape[0])
    ranges = _ranges(x.shape[0], float(x.numel()) * w.shape[0])
    _run_ranges(lib.lp_forward, (_address(xp), _address(wp), _address(y), w.shape[0], xp.shape[1], p),
                ranges)
    usage.record("native")
    return y


def forward_inf(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    """y = max_i |x_i − w_i| and, if asked, the signed first argmax (``i`` or ``−(i + 1)``)."""
    lib = _get()
    assert lib is not None
    multiple = lib.lp_row_multiple()
    xp, wp = _padded(x, multiple), _padded(w, multiple)
    y = x.new_empty(x.shape[0], w.shape[0])
    index = torch.empty(y.shape, dtype=torch.int64) if with_index else None
    where = _address(index) if index is not None else ctypes.c_void_p(0)
    ranges = _ranges(x.shape[0], float(x.numel()) * w.shape[0] / 8)  # ~8× cheaper per element
    co = w.shape[0]
    if with_index and x.shape[1] <= INF_ACROSS_OUTPUTS_BELOW:
        wt = F.pad(wp, (0, 0, 0, -co % lib.lp_lanes())).t().contiguous()  # (CI, CO padded)
        _run_ranges(lib.lp_forward_inf_t, (_address(xp), _address(wt), _address(wp), _address(y),
                                           where, co, wt.shape[1], xp.shape[1]), ranges)
    else:
        _run_ranges(lib.lp_forward_inf, (_address(xp), _address(wp), _address(y), where, co,
                                         xp.shape[1]), ranges)
    usage.record("native")
    return y, index


def backward(x: Tensor, w: Tensor, y: Tensor, grad_y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """grad_x = Σ_o t, grad_w = −Σ_b t, t = grad_y·sign(q)|q|^(p−1), q = (x − w)/max(y, 1e-10),
    each t computed once. Threads own ranges of outputs o: grad_w's rows are theirs alone, and
    each adds its grad_x terms into its own buffer, summed at the end."""
    lib = _get()
    assert lib is not None
    multiple = lib.lp_row_multiple()
    xp, wp = _padded(x, multiple), _padded(w, multiple)
    r = (1.0 / y.clamp_min(TINY)).contiguous()  # as eager computes it
    g = grad_y.contiguous()
    ranges = _ranges(w.shape[0], float(x.numel()) * w.shape[0])
    partial = torch.zeros(len(ranges), *xp.shape)
    grad_w = torch.zeros_like(wp)
    _run_ranges(lib.lp_backward, (_address(xp), _address(wp), _address(r), _address(g),
                                  _address(partial), partial[0].numel(), _address(grad_w),
                                  x.shape[0], w.shape[0], xp.shape[1], p - 1.0, BACKWARD_MIN_EXP2),
                ranges)
    usage.record("native")
    ci = x.shape[1]
    return partial.sum(0)[:, :ci].contiguous(), grad_w[:, :ci].contiguous()


def power_degree(c: float, ci: int) -> int:
    """The degree of the polynomial the kernels use for z^c at rows of ``ci`` (c = p in the
    forward, p − 1 in the backward); 0 where they take the log2/exp2 route."""
    lib = _get()
    assert lib is not None
    return int(lib.lp_power_degree(c, ci))


def power(z: Tensor, c: float, ci: int) -> Tensor:
    """z^c for float32 z in [0, 1], by the route the kernels take at rows of ``ci`` (for tests)."""
    lib = _get()
    assert lib is not None
    flat = z.detach().reshape(-1).contiguous()
    padded = F.pad(flat, (0, -flat.numel() % lib.lp_lanes()))
    out = torch.empty_like(padded)
    lib.lp_power(_address(padded), _address(out), padded.numel(), c, ci)
    return out[:flat.numel()].reshape(z.shape)


def backward_inf(index: Tensor, grad_y: Tensor, x_shape: torch.Size,
                 w_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """p = ∞: each output's gradient to its first maximal coordinate, signed as the index says
    (what ``ops`` otherwise does with torch.where and two scatter_add calls, more slowly)."""
    lib = _get()
    assert lib is not None
    index, g = index.contiguous(), grad_y.contiguous()
    grad_x, grad_w = g.new_zeros(x_shape), g.new_zeros(w_shape)
    (b, co), ci = index.shape, x_shape[1]
    work = 8.0 * b * co  # a scattered update costs ~8 element-ops of the forward
    _run_ranges(lib.lp_backward_inf_x, (_address(index), _address(g), _address(grad_x), co, ci),
                _ranges(b, work, 1))
    _run_ranges(lib.lp_backward_inf_w, (_address(index), _address(g), _address(grad_w), b, co, ci),
                _ranges(co, work, 1))
    usage.record("native")
    return grad_x, grad_w
