"""The Triton backend of lp_dist against the plain-PyTorch reference (docs/linf_dist.md#numerics).

Without CUDA the kernels run on CPU tensors under Triton's interpreter, so these tests check the kernel
logic (tiles, ragged edges, numerics, tie rules) on any machine. With CUDA they run the compiled kernels,
and the tests marked gpu add large shapes, a side stream and 64-bit offsets.
"""

import importlib
import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from certify.linf_dist import eager, ops  # noqa: E402
from certify.linf_dist.reference import lp_dist_reference  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
P_VALUES = [1.0, 2.0, 8.0, 3.7, 8.5, 50.0, 1000.0, math.inf]  # integer paths, general p ≤ 10, normalized, ∞
SHAPES = {"ragged": (5, 37, 19), "multi_tile": (36, 40, 70)}  # (B, CI, CO); the second spans several tiles
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _import_kernels():
    """The kernels module; without CUDA, with every @jit function it uses decorated for the interpreter.

    triton 3.8 reads the flag through ``triton.knobs.runtime.interpret`` (which falls back to
    $TRITON_INTERPRET) whenever ``@triton.jit`` decorates a function, and again while launching (its lazy
    gluon import checks it), so without CUDA it is switched on for the rest of this process. The
    decorated functions include triton.language's own helpers (tl.sum, tl.max, tl.min, tl.zeros are @jit
    functions of triton.language.standard), decorated when triton is first imported. If another test
    module imported triton first with the flag off (torch.compile and torch._inductor import it), those
    helpers are compiled-mode and an interpreted kernel calling them fails, so they are decorated again
    here, as is our module if it was imported already; ``reload`` updates the module objects others hold.
    """
    name = "certify.linf_dist.triton_kernels"
    if CUDA:  # the real kernels; never the interpreter on a GPU machine
        return importlib.import_module(name)
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        knobs.runtime.interpret = True  # sets $TRITON_INTERPRET too, and wins over an earlier assignment
    else:
        os.environ["TRITON_INTERPRET"] = "1"  # older triton: only the environment variable
    tl = importlib.import_module("triton.language")
    if type(tl.sum).__name__ != "InterpretedFunction":
        importlib.reload(tl.standard)
        importlib.reload(tl.random)
        importlib.reload(tl)  # rebinds tl.sum & co. to the re-decorated functions
    module = importlib.import_module(name)
    if not module.INTERPRETED:
        module = importlib.reload(module)
    return module


tk = _import_kernels()
pytestmark = [pytest.mark.skipif(not tk.available(torch.zeros(1, device=DEVICE)),
                                 reason="Triton kernels unavailable on this device"),
              pytest.mark.slow]  # the interpreter (CPU) or kernel compilation (GPU)


def _data(B: int, CI: int, CO: int, dtype: torch.dtype = torch.float64, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x, w, gy = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((B, CI), (CO, CI), (B, CO)))
    return (x * scale).to(DEVICE, dtype), (w * scale).to(DEVICE, dtype), gy.to(DEVICE, dtype)


def _reference(x, w, p, gy):
    """Output and gradients of the reference, in float64 on the CPU."""
    x, w = (t.detach().cpu().double().requires_grad_() for t in (x, w))
    y = lp_dist_reference(x, w, p)
    gx, gw = torch.autograd.grad(y, (x, w), gy.cpu().double())
    return y.detach(), gx, gw


def _triton(x, w, p, gy):
    """Output and gradients through ops.lp_dist's autograd function with the Triton backend."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = ops.lp_dist(x, w, p, backend="triton")
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    return y.detach(), gx, gw


def _assert_close(actual, expected, rtol, atol):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.cpu().double(), e.cpu().double(), rtol=rtol, atol=atol)


def _float32_tolerance(p: float) -> float:
    """At large finite p the gradient's |q|^(p−1) multiplies fp32's relative error in q = d / y by about
    p (eager's fp32 gradients are off by 0.4% at p = 1000 too), so the tolerance grows with p."""
    return 1e-4 if p <= 10 or math.isinf(p) else min(1e-5 * p, 1e-2)


def test_backend_is_selected():
    x = torch.zeros(2, 3, device=DEVICE)
    assert ops._backend("triton", x) is tk
    assert tk.available(x) is True
    assert tk.available(torch.zeros(1, device="meta")) is False
    assert tk.available(None) is False  # never raises


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("p", P_VALUES)
def test_float64_matches_reference(p, shape):
    x, w, gy = _data(*shape)
    _assert_close(_triton(x, w, p, gy), _reference(x, w, p, gy), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p, shape", [(p, "ragged") for p in P_VALUES]
                         + [(p, "multi_tile") for p in (8.5, 1000.0, math.inf)])
def test_float32_matches_reference(p, shape):
    x, w, gy = _data(*SHAPES[shape], dtype=torch.float32)
    y, gx, gw = _triton(x, w, p, gy)
    assert y.dtype == gx.dtype == gw.dtype == torch.float32
    tol = _float32_tolerance(p)
    _assert_close((y, gx, gw), _reference(x, w, p, gy), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("p", [1.0, 2.0, 3.7, 8.0, 8.5, 50.0])
def test_outer_forward_matches_reference(p, shape, dtype):
    # the outer-product forward for p ≤ 10 (p = 50 checks that larger p keep the tile kernel)
    x, w, gy = _data(*shape, dtype=dtype)
    with tk.forward_layout("outer"):
        y = tk.forward(x, w, p)
    tol = 1e-10 if dtype == torch.float64 else _float32_tolerance(p)
    torch.testing.assert_close(y.cpu().double(), _reference(x, w, p, gy)[0], rtol=tol, atol=tol)
    # the same values as the tile kernel (not only close to the reference) where the sums agree
    torch.testing.assert_close(y, tk.forward(x, w, p), rtol=tol, atol=tol)


def test_forward_layout_is_restored_and_checked():
    with tk.forward_layout("outer", (16, 32, 2)):
        assert (tk._forward_layout, tk._outer_tiles) == ("outer", (16, 32, 2))
    assert (tk._forward_layout, tk._outer_tiles) == ("tile", None)
    with pytest.raises(ValueError, match="forward layout"):
        with tk.forward_layout("diagonal"):
            pass
    with pytest.raises(ValueError, match="powers of two"):
        with tk.forward_layout("outer", (48, 64, 4)):
            pass


@pytest.mark.parametrize("tiles", [(16, 32, 2), (8, 8, 1)])
def test_outer_forward_with_other_tiles(tiles):
    # other tile shapes and warp counts, with ragged last tiles on both axes (B = 36, CO = 70)
    x, w, gy = _data(*SHAPES["multi_tile"])
    with tk.forward_layout("outer", tiles):
        y = tk.forward(x, w, 3.7)
    torch.testing.assert_close(y.cpu(), _reference(x, w, 3.7, gy)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p, split_b", [(3.7, 1), (3.7, 3), (8.0, 5)])
def test_backward_b_split(p, split_b):
    # split 1 stores grad_w, larger splits add it atomically (5 leaves a ragged last slice); CO = 70
    # spans two CO tiles, so grad_x is added atomically too
    x, w, gy = _data(*SHAPES["multi_tile"])
    y = eager.forward(x, w, p)
    _assert_close(tk._backward(x, w, y, gy, p, split_b=split_b), eager.backward(x, w, y, gy, p),
                  rtol=1e-10, atol=1e-12)


def test_integer_power_selection():
    assert [tk._integer_power(p) for p in (1.0, 2.0, 8.0, 3.7, 8.5, 9.0, 50.0, 1000.0)] == [1, 2, 8, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p, y, grad", [(2.0, 5 ** 0.5, (0.4472136, 0.8944272)),
                                        (8.0, 257 ** 0.125, (1 / 257 ** 0.875, 2 ** 7 / 257 ** 0.875)),
                                        (math.inf, 2.0, (0.0, 1.0))])
def test_spec_vectors(dtype, p, y, grad):
    x = torch.tensor([[1.0, 2.0]], dtype=dtype, device=DEVICE)
    w = torch.zeros(1, 2, dtype=dtype, device=DEVICE)
    out, gx, gw = _triton(x, w, p, torch.ones(1, 1, dtype=dtype, device=DEVICE))
    tol = 1e-7 if dtype == torch.float64 else 2e-6
    assert out.item() == pytest.approx(y, rel=tol, abs=tol)
    assert gx.cpu().tolist()[0] == pytest.approx(grad, rel=tol, abs=tol)
    assert gw.cpu().tolist()[0] == pytest.approx([-g for g in grad], rel=tol, abs=tol)


@pytest.mark.parametrize("x, grad", [((2.0, -2.0), (1.0, 0.0)), ((-2.0, 2.0), (-1.0, 0.0))])
def test_inf_tie_goes_to_first_index(x, grad):
    x = torch.tensor([x], dtype=torch.float64, device=DEVICE)
    w = torch.zeros(1, 2, dtype=torch.float64, device=DEVICE)
    y, index = tk.forward_inf(x, w, True)
    assert y.item() == 2.0 and index.item() == (0 if grad[0] > 0 else -1)
    _, gx, gw = _triton(x, w, math.inf, torch.ones(1, 1, dtype=torch.float64, device=DEVICE))
    assert gx.cpu().tolist() == [list(grad)] and gw.cpu().tolist() == [[-g for g in grad]]


def test_inf_index_with_many_ties():
    # small integers: most rows have several maximal |d|, in different CI chunks and of both signs
    B, CI, CO = SHAPES["multi_tile"]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (B, CI), generator=g).double()
    w = torch.randint(-3, 4, (CO, CI), generator=g).double()
    d = x[:, None, :] - w[None, :, :]
    a = d.abs()
    first = torch.where(a == a.amax(-1, keepdim=True), torch.arange(CI), CI).amin(-1)
    negative = d.gather(-1, first[..., None]).squeeze(-1) < 0
    expected = torch.where(negative, -first - 1, first)
    assert (a == a.amax(-1, keepdim=True)).sum(-1).gt(1).float().mean() > 0.5  # ties really are common
    y, index = tk.forward_inf(x.to(DEVICE), w.to(DEVICE), True)
    assert torch.equal(index.cpu(), expected) and torch.equal(y.cpu(), a.amax(-1))
    y_only, none = tk.forward_inf(x.to(DEVICE), w.to(DEVICE), False)
    assert none is None and torch.equal(y_only, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_p_is_finite_at_large_distances(dtype):
    x, w, gy = _data(*SHAPES["ragged"], dtype=dtype, scale=1e3)  # |d| ≈ 1e3: a naive Σ|d|^1000 overflows
    y, gx, gw = _triton(x, w, 1000.0, gy)
    assert all(t.isfinite().all() for t in (y, gx, gw))
    tol = _float32_tolerance(1000.0) if dtype == torch.float32 else 1e-10
    _assert_close((y, gx, gw), _reference(x, w, 1000.0, gy), rtol=tol, atol=tol)
    small = tk.forward(x / 1e3, w / 1e3, 1000.0)  # scale equivariance: y(cx, cw) = c·y(x, w)
    torch.testing.assert_close(y, small * 1e3, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("p", [2.0, 3.7, 50.0, math.inf])
def test_zero_distance(p):
    # x[0] = w[0]: eager's floors decide y (FLT_MIN^(1/p) for p ≤ 10, 0 above) and the gradient is 0
    x, w, gy = _data(*SHAPES["ragged"])
    w[0] = x[0]
    if math.isinf(p):
        y, index = tk.forward_inf(x, w, True)
        assert y[0, 0].item() == 0.0 and index[0, 0].item() == 0
        return
    y = tk.forward(x, w, p)
    torch.testing.assert_close(y, eager.forward(x, w, p), rtol=1e-12, atol=0)
    gx, gw = tk.backward(x, w, y, gy, p)
    _assert_close((gx, gw), eager.backward(x, w, y, gy, p), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [3.7, math.inf])
def test_gradcheck(p):
    x, w, _ = _data(3, 5, 4, seed=2)  # random data: no ties at p = ∞
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.lp_dist(a, b, p, backend="triton"), (x, w))


# ---- compiled kernels only -------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("p", [8.0, 3.7, 50.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_large_matches_eager(p, dtype):
    x, w, gy = _data(512, 1024, 1024, dtype=dtype, seed=3)
    if p <= 10:  # the outer-product forward on the same data
        with tk.forward_layout("outer"):
            torch.testing.assert_close(tk.forward(x, w, p), ops.lp_dist(x, w, p, backend="eager"),
                                       rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)
    x.requires_grad_()
    w.requires_grad_()
    y_ref = ops.lp_dist(x, w, p, backend="eager")
    expected = (y_ref.detach(), *torch.autograd.grad(y_ref, (x, w), gy))
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    for actual, ref, scale in zip(_triton(x, w, p, gy), expected, (1, 10, 10)):  # y, then the gradients
        torch.testing.assert_close(actual, ref, rtol=scale * rtol, atol=rtol * ref.abs().max().item())


@pytest.mark.gpu
@requires_cuda
def test_gpu_side_stream():
    # inputs produced on a side stream and consumed there without a sync: right only if the kernels
    # launch on the current (side) stream, as they must
    x0, w0, gy = _data(256, 512, 512, dtype=torch.float32, seed=4)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # delay the side stream so a launch on another stream would race
        x, w = x0 * 2.0, w0 * 2.0
        y = tk.forward(x, w, 3.7)
        y_inf, _ = tk.forward_inf(x, w, True)
        gx, gw = tk.backward(x, w, y, gy, 3.7)
    side.synchronize()
    torch.testing.assert_close(y, eager.forward(x0 * 2.0, w0 * 2.0, 3.7), rtol=1e-4, atol=0)
    torch.testing.assert_close(y_inf, eager.forward_inf(x0 * 2.0, w0 * 2.0, False)[0], rtol=0, atol=0)
    gx_ref, gw_ref = eager.backward(x0 * 2.0, w0 * 2.0, y, gy, 3.7)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@requires_cuda
def test_gpu_offsets_past_int32():
    # B·CI > 2^31 elements: the rows at the end are only reachable with 64-bit offsets
    CI, CO = 1024, 32
    B = (1 << 31) // CI + 3
    if torch.cuda.mem_get_info()[0] < 3 * B * CI * 4:
        pytest.skip("not enough free GPU memory for a > 2^31-element input")
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(B, CI, device="cuda", generator=g)
    w = torch.randn(CO, CI, device="cuda", generator=g)
    gy = torch.randn(B, CO, device="cuda", generator=g)
    tail = slice(B - 4, B)
    y = tk.forward(x, w, 3.7)
    torch.testing.assert_close(y[tail], eager.forward(x[tail], w, 3.7), rtol=1e-4, atol=0)
    y_inf, index = tk.forward_inf(x, w, True)
    ref_inf, ref_index = eager.forward_inf(x[tail], w, True)
    assert torch.equal(y_inf[tail], ref_inf) and torch.equal(index[tail], ref_index)
    gx, _ = tk.backward(x, w, y, gy, 3.7)
    torch.testing.assert_close(gx[tail], eager.backward(x[tail], w, y[tail], gy[tail], 3.7)[0], rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
@requires_cuda
def test_gpu_tensors_on_another_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x, w, gy = (t.to("cuda:1") for t in _data(33, 70, 41, dtype=torch.float32, seed=6))
    with torch.cuda.device(0):
        y = tk.forward(x, w, 8.0)
        gx, gw = tk.backward(x, w, y, gy, 8.0)
    torch.testing.assert_close(y, eager.forward(x, w, 8.0), rtol=1e-4, atol=0)
    gx_ref, gw_ref = eager.backward(x, w, y, gy, 8.0)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-3, atol=1e-4)

