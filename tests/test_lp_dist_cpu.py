"""The compiled CPU backend of lp_dist (certify.linf_dist.cpu_kernels) against the plain-PyTorch
reference: values, gradients, the test vectors of docs/linf_dist.md#numerics, large-p stability, no
recompilation when p or the batch size change, no B×CO×CI allocation, and the eager fallback.

Compiling the variants dominates the runtime (a few seconds each per dtype, once per process;
inductor's on-disk cache makes later runs faster). Shapes stay ≥ 2 in every dimension: a size of 1
would compile extra specialized kernels.
"""

from __future__ import annotations

import math
import resource
import warnings
from pathlib import Path

import pytest
import torch

from certify.linf_dist import cpu_kernels, eager, native, usage
from certify.linf_dist.ops import lp_dist
from certify.linf_dist.reference import lp_dist_reference

INF = math.inf
P_VALUES = [1.0, 2.0, 8.0, 3.7, 8.5, 50.0, 1000.0, INF]

pytestmark = pytest.mark.slow  # every test here compiles kernels (torch.compile, inductor)
needs_compiler = pytest.mark.skipif(not cpu_kernels.available(torch.zeros(1)),
                                    reason="torch.compile (inductor) does not work on this machine")


def compiled(x, w, p):
    return lp_dist(x, w, p, backend="compiled")


def reference_with_grads(x, w, p, grad_y):
    """Reference value and gradients, computed in float64 whatever the input dtype."""
    xr = x.detach().double().requires_grad_()
    wr = w.detach().double().requires_grad_()
    y = lp_dist_reference(xr, wr, p)
    y.backward(grad_y.double())
    return y.detach(), xr.grad, wr.grad


def ours_with_grads(x, w, p, grad_y):
    xo = x.detach().clone().requires_grad_()
    wo = w.detach().clone().requires_grad_()
    y = compiled(xo, wo, p)
    y.backward(grad_y)
    return y.detach(), xo.grad, wo.grad


def close(actual, expected, rtol, scale_atol):
    """|actual − expected| ≤ rtol·|expected| + scale_atol·max|expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    bound = rtol * expected.abs() + scale_atol * expected.abs().max().clamp_min(1e-30)
    return bool(((actual - expected).abs() <= bound).all()), (actual - expected).abs().max().item()


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("p", P_VALUES, ids=[str(p) for p in P_VALUES])
def test_values_and_gradients_match_reference(p, dtype):
    gen = torch.Generator().manual_seed(int(p) if p < INF else 7)
    for b, ci, co in [(7, 13, 5), (3, 37, 11)]:  # ragged: vector tails, padding of the splits
        x = torch.randn(b, ci, generator=gen, dtype=torch.float64).to(dtype)
        w = torch.randn(co, ci, generator=gen, dtype=torch.float64).to(dtype)
        grad_y = torch.randn(b, co, generator=gen, dtype=torch.float64).to(dtype)
        y, gx, gw = ours_with_grads(x, w, p, grad_y)
        y_ref, gx_ref, gw_ref = reference_with_grads(x, w, p, grad_y)
        assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
        if dtype == torch.float64:
            value_tol, grad_tol = (1e-12, 1e-12), (1e-10, 1e-10)
        else:
            # float32: the saved y is rounded, and |q|^(p−1) amplifies that by p − 1.
            value_tol, grad_tol = (2e-6, 1e-6), (1e-5, 2e-6 + 3e-7 * (p if p < INF else 0))
        for name, got, want, tol in [("y", y, y_ref, value_tol), ("grad_x", gx, gx_ref, grad_tol),
                                     ("grad_w", gw, gw_ref, grad_tol)]:
            ok, err = close(got, want, *tol)
            assert ok, f"{name} at p={p}, {dtype}, shape {(b, ci, co)}: max error {err:.3g}"


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_spec_vectors(dtype):
    # x = (1, 2), w = 0 (docs/linf_dist.md#numerics). Two identical rows and a second weight row keep every
    # size ≥ 2; grad_y selects y[:, 0].
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=dtype)
    w = torch.tensor([[0.0, 0.0], [5.0, 5.0]], dtype=dtype)
    grad_y = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    expected = {2.0: (math.sqrt(5.0), (0.4472136, 0.8944272)),
                8.0: (257.0 ** 0.125, (1 / 257.0 ** 0.875, 2.0 ** 7 / 257.0 ** 0.875)),
                INF: (2.0, (0.0, 1.0))}
    for p, (value, grad) in expected.items():
        y, gx, _ = ours_with_grads(x, w, p, grad_y)
        assert torch.allclose(y[:, 0], torch.tensor([value, value], dtype=dtype), rtol=1e-6), p
        assert torch.allclose(gx, torch.tensor([grad, grad], dtype=dtype), rtol=1e-6, atol=1e-7), p
    assert abs(257.0 ** 0.125 - 2.0010) < 5e-5  # the value docs/linf_dist.md#numerics quotes


@needs_compiler
def test_inf_ties_take_the_first_index():
    x = torch.tensor([[2.0, -2.0], [-2.0, 2.0]])
    w = torch.zeros(3, 2)
    y, index = cpu_kernels.forward_inf(x, w, True)
    assert torch.equal(y, torch.full((2, 3), 2.0))
    assert index.dtype == torch.int64
    assert torch.equal(index, torch.tensor([[0, 0, 0], [-1, -1, -1]]))  # i = 0, sign folded in
    xg = x.clone().requires_grad_()
    compiled(xg, w, INF).sum().backward()
    assert torch.equal(xg.grad, torch.tensor([[3.0, 0.0], [-3.0, 0.0]]))


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_large_p_is_finite_and_scale_equivariant(dtype):
    gen = torch.Generator().manual_seed(3)
    x = (1e3 + 50 * torch.randn(6, 40, generator=gen, dtype=torch.float64)).to(dtype)
    w = (50 * torch.randn(4, 40, generator=gen, dtype=torch.float64)).to(dtype)
    y = cpu_kernels.forward(x, w, 1000.0)
    assert torch.isfinite(y).all() and (y > 900).all()
    assert torch.allclose(y.double(), lp_dist_reference(x.double(), w.double(), 1000.0), rtol=1e-6)
    for c in (1e-3, 7.0, 1e3):
        scaled = cpu_kernels.forward(c * x, c * w, 1000.0)
        assert torch.allclose(scaled, c * y, rtol=1e-6 if dtype == torch.float32 else 1e-13), c


@needs_compiler
@pytest.mark.parametrize("p", [2.0, 3.7, 8.0, 50.0, INF], ids=str)
def test_gradcheck_through_ops(p):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: compiled(a, b, p), (x, w), eps=1e-6, atol=1e-7)


def _call_everything(b: int, ci: int, co: int, ps: list[float], dtype=torch.float32) -> None:
    x = torch.randn(b, ci, dtype=dtype, requires_grad=True)
    w = torch.randn(co, ci, dtype=dtype, requires_grad=True)
    for p in ps:
        compiled(x, w, p).sum().backward()
        with torch.no_grad():
            compiled(x, w, p)


@needs_compiler
def test_changing_p_and_batch_size_does_not_recompile():
    from torch._dynamo.utils import counters

    _call_everything(16, 24, 12, [8.0, 9.0, 20.0, INF])  # warm-up: every float32 variant
    before = counters["stats"]["unique_graphs"]
    schedule = [8.0 * 125.0 ** r for r in (0.0, 0.01, 0.02, 0.3, 0.6, 0.99)] + [INF]
    for b in (5, 64, 16, 33):
        _call_everything(b, 24, 12, schedule)
    _call_everything(9, 40, 30, [8.0, 13.0, INF])  # another layer's CI and CO
    assert counters["stats"]["unique_graphs"] == before


@needs_compiler
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_no_b_co_ci_tensor_is_allocated():
    b, ci, co = 256, 1024, 1024  # B×CO×CI float32 would be 1 GiB
    x = torch.randn(b, ci, requires_grad=True)
    w = torch.randn(co, ci, requires_grad=True)
    _call_everything(8, 16, 12, [8.0, 20.0, INF])  # compile outside the measurement

    def current_rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024

    start = current_rss_kib()
    for p in (8.0, 20.0, INF):
        compiled(x, w, p).sum().backward()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    assert grown < 256 * 1024, f"peak memory grew by {grown / 1024:.0f} MiB"


def test_eager_fallback_when_compilation_is_unavailable(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(cpu_kernels, "_probe_ok", None)
    monkeypatch.setattr(cpu_kernels, "_warned", set())
    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.randn(4, 6)
    with pytest.warns(RuntimeWarning, match="eager"):
        assert cpu_kernels.available(x) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert cpu_kernels.available(x) is False

    calls = []
    real_forward = eager.forward
    monkeypatch.setattr(eager, "forward", lambda *a: calls.append("eager") or real_forward(*a))
    w = torch.randn(5, 6)
    assert torch.allclose(compiled(x, w, 8.0), lp_dist_reference(x, w, 8.0), rtol=1e-5)
    assert calls == ["eager"]


@needs_compiler
def test_a_failing_variant_falls_back_to_eager(monkeypatch):
    variant = cpu_kernels._VARIANTS["forward_general"]

    def broken(*args):
        raise RuntimeError("inductor failure")

    monkeypatch.setattr(variant, "compiled", broken)
    monkeypatch.setattr(variant, "ready", set())
    monkeypatch.setattr(variant, "failed", False)
    monkeypatch.setattr(cpu_kernels, "_warned", set())
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)  # float32: native
    usage.counts(reset=True)
    with pytest.warns(RuntimeWarning, match="forward_general"):
        y = cpu_kernels.forward(x, w, 3.0)
    assert torch.allclose(y, lp_dist_reference(x, w, 3.0), rtol=1e-5)
    assert variant.failed
    assert usage.counts() == {"eager": 1}  # recorded as what ran, not as compiled


def test_available_is_false_off_the_cpu():
    assert not cpu_kernels.available(torch.zeros(2, device="meta"))
    assert not cpu_kernels.available(torch.zeros(2, dtype=torch.float16))


# ---- which backend ran (the lp_dist_backend training metric) and the supported torch range ----

def _pyproject_torch_requirement() -> str:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    (line,) = [d for d in tomllib.loads(pyproject.read_text())["project"]["dependencies"]
               if d.replace(" ", "").startswith("torch>") or d.replace(" ", "").startswith("torch<")]
    return line.replace(" ", "")


def test_the_supported_torch_runs_every_kernel_compiled(monkeypatch):
    """Fails, rather than skips, when the compiled CPU path would silently run eager on a torch
    that pyproject.toml declares supported: every variant (p = 8, general p, p = ∞ with and
    without the argmax, both backwards, float32 and float64) must be counted as compiled."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    requirement = _pyproject_torch_requirement()
    assert requirement == "torch" + cpu_kernels.TESTED_TORCH  # one declared range, in two places
    assert Version(torch.__version__.split("+")[0]) in SpecifierSet(cpu_kernels.TESTED_TORCH), (
        f"torch {torch.__version__} is outside the tested range {requirement}")
    assert cpu_kernels.missing_internals() == []
    monkeypatch.delenv("CERTIFY_LP_DIST_BACKEND", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "falling back to eager" warning either
        assert cpu_kernels.available(torch.zeros(1))
        usage.counts(reset=True)
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(6, 10, dtype=dtype, requires_grad=True)
            w = torch.randn(7, 10, dtype=dtype, requires_grad=True)
            for p in (8.0, 20.0, 3.5, INF):
                lp_dist(x, w, p).sum().backward()  # backend "auto": compiled on a CPU tensor
                with torch.no_grad():
                    lp_dist(x, w, p)
    # per dtype: 4 forwards with grad, 4 without, 3 finite-p backwards (float64's p = ∞ backward is
    # ops' scatter); float32 at p ≠ 8 runs native (6 calls at p = 20 and 3.5, 3 at ∞: two forwards
    # and the backward's scatter), where a C compiler works
    assert native.available(torch.zeros(1)), native.unavailable_reason()
    assert usage.counts() == {"compiled": 11 + 3, "native": 9}


def test_without_a_c_compiler_the_compiled_kernels_serve_every_p(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("CERTIFY_CACHE", str(tmp_path / "cache"))
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(5, 6)
    with pytest.warns(RuntimeWarning, match="cannot build the native CPU kernels") as caught:
        assert not native.available(x)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    usage.counts(reset=True)
    y = lp_dist(x, w, 8.5)
    y.sum().backward()
    assert torch.allclose(y, lp_dist_reference(x, w, 8.5), rtol=1e-5)
    assert usage.counts() == {"compiled": 2}
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_the_native_library_is_built_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CERTIFY_CACHE", str(tmp_path))
    assert native.available(torch.zeros(1))
    (built,) = (tmp_path / "native").glob("*.so")
    assert built == native.library_path()
    assert list((tmp_path / "native").iterdir()) == [built]  # no temporary file left behind
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(native, "_build", lambda *_: pytest.fail("rebuilt a cached library"))
    assert native.available(torch.zeros(1))


def test_missing_torch_internals_are_named_in_one_line(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_probe_ok", None)
    monkeypatch.setattr(cpu_kernels, "_warned", set())
    monkeypatch.setattr(cpu_kernels, "missing_internals",
                        lambda: ["torch._dynamo.config.recompile_limit"])
    with pytest.warns(RuntimeWarning) as caught:
        assert cpu_kernels.available(torch.zeros(2)) is False
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message
    assert "lacks torch._dynamo.config.recompile_limit" in message
    assert f"torch{cpu_kernels.TESTED_TORCH}" in message and "eager" in message


def test_missing_internals_detects_an_absent_attribute(monkeypatch):
    from torch._dynamo import config as dynamo

    assert "torch._dynamo.config.recompile_limit" not in cpu_kernels.missing_internals()
    monkeypatch.delattr(dynamo, "recompile_limit")
    assert "torch._dynamo.config.recompile_limit" in cpu_kernels.missing_internals()


def test_usage_counts_an_eager_fallback():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    usage.counts(reset=True)
    lp_dist(x, w, 8.0, backend="eager")
    lp_dist(x, w, INF, backend="eager")
    assert usage.counts(reset=True) == {"eager": 2}
    assert usage.counts() == {}
    assert usage.summary({"compiled": 9, "eager": 2}) == "compiled+eager"
    assert usage.summary({"eager": 3}) == "eager" and usage.summary({}) == "none"


@pytest.mark.parametrize("ci", [40, 600], ids=["across-outputs", "across-inputs"])
def test_native_inf_index_is_the_first_maximum_on_both_kernels(ci):
    """Both native p = ∞ kernels (short rows run across outputs, long rows across inputs) give the
    eager values and the first maximal index, here with many ties (small integer coordinates) and
    sizes that are not multiples of the vector width."""
    if not native.available(torch.zeros(1)):
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(ci)
    x = torch.randint(-3, 4, (21, ci), generator=gen).float()
    w = torch.randint(-3, 4, (19, ci), generator=gen).float()
    y, index = native.forward_inf(x, w, True)
    y_ref, index_ref = eager.forward_inf(x, w, True)
    assert torch.equal(y, y_ref) and torch.equal(index, index_ref)
    assert (index < 0).any() and (index >= 0).any()  # both signs occur
    assert torch.equal(native.forward_inf(x, w, False)[0], y_ref)


@pytest.mark.parametrize("p", [7.3, 8.5, 20.0, 33.3, 59.0, 64.0, 100.0, 1000.0])
def test_native_matches_the_reference_on_long_rows(p):
    """Rows of 1024, where the approximations are sized by CI: from p = 60 the native kernels skip
    vectors whose terms are all below 2^-(24 + log2 CI) of the largest (most of them on Gaussian
    rows), and up to p ≈ 100 they raise z below 2^-(E−1) to it in the table route. The values and
    gradients must still be the float64 reference's to float32 accuracy."""
    if not native.available(torch.zeros(1)):
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(int(p))
    x = torch.randn(6, 1024, generator=gen, dtype=torch.float64)
    w = torch.randn(9, 1024, generator=gen, dtype=torch.float64)
    grad_y = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    y = native.forward(x.float(), w.float(), p)
    gx, gw = native.backward(x.float(), w.float(), y, grad_y.float(), p)
    y_ref, gx_ref, gw_ref = reference_with_grads(x, w, p, grad_y)
    for name, got, want, tol in [("y", y, y_ref, (2e-6, 1e-6)),
                                 ("grad_x", gx, gx_ref, (1e-5, 2e-6 + 3e-7 * p)),
                                 ("grad_w", gw, gw_ref, (1e-5, 2e-6 + 3e-7 * p))]:
        ok, err = close(got, want, *tol)
        assert ok, f"{name} at p={p}: max error {err:.3g}"


def test_an_unwritable_cache_builds_in_the_temporary_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CERTIFY_CACHE", "/proc/no-cache-here")  # cannot be created
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    assert native.available(torch.zeros(1)), native.unavailable_reason()
    assert len(list(tmp_path.rglob("lp_dist_*.so"))) == 1


@pytest.mark.parametrize("ci", [64, 1024, 4096, 65536])
def test_native_powers_by_table_match_float64(ci):
    """z^c by the kernels' route for p < 60 (table and polynomial with AVX-512, else log2/exp2), for
    c every 0.37 from 6 to 60: by table, relative error within 6e-7 (measured: at most 4.4e-7)
    wherever z^c is above the negligible bound 2^-(28 + 2 log2 CI), and at most that bound below it
    (z under 2^-(E−1) is raised to it); by log2/exp2, within 1e-6 plus float32's rounding of the
    exponent. A wrong piece or exponent in the table would be off by factors; a fit of a lower
    degree, pieces evaluated from their centre (Horner cancels), or a looser fit fail somewhere
    in the sweep."""
    if not native.available(torch.zeros(1)):
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    lanes = native._get().lp_lanes()
    gen = torch.Generator().manual_seed(ci)
    z = torch.cat([torch.rand(20000, generator=gen) ** 4,  # dense near 0 and over the pieces
                   torch.tensor([0.0, 1e-30, 2.0 ** -7, 0.5, 1.0 - 2.0 ** -24, 1.0, 1.0 + 2.0 ** -23])])
    bound = 2.0 ** -(28 + 2 * math.ceil(math.log2(ci)))
    table_route = 0
    for step in range(146):
        c = 6.0 + 0.37 * step
        degree = native.power_degree(c, ci)
        assert degree == 0 or 5 <= degree <= 13
        # AVX-512: the table route serves c up to 44 at least, from where 7c ≥ 28 + 2 log2 CI
        if lanes == 16 and 7 * c >= 28 + 2 * math.ceil(math.log2(ci)) and c <= 44.0:
            assert degree > 0, c
        table_route += degree > 0
        c32 = torch.tensor(c, dtype=torch.float32).item()  # the exponent the kernel receives
        got, want = native.power(z, c, ci).double(), z.double() ** c32
        large = want > bound
        if degree:
            tolerance = torch.full_like(want, 6e-7)
        else:  # float32 rounding of c·log2 z
            tolerance = 1e-6 + 8e-8 * c32 * z.double().log2().abs().clamp_min(1.0)
        excess = ((got - want).abs() / want / tolerance)[large].max().item()
        assert excess <= 1.0, (c, degree, excess)
        assert got[~large].max().item() <= bound, (c, degree)
    assert table_route > 100 or lanes != 16
    assert native.power_degree(3.7, ci) == 0  # too small a c for the table's exponent range


@needs_compiler
@pytest.mark.parametrize("p", [2.0, 8.0, 8.5, 20.0, 100.0, INF])
def test_nan_and_inf_inputs_give_the_eager_results(p):
    """A NaN or ±inf coordinate gives what eager gives, forward and backward: NaN or inf where it
    reaches, finite values elsewhere. (The native kernels work on the floats' bits and, like the
    compiled ones, would turn a NaN into a finite number; such calls go to eager.)"""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 70, generator=gen)
    w = torch.randn(4, 70, generator=gen)
    x[1, 3], x[2, 9], w[3, 0] = math.nan, math.inf, -math.inf
    grad_y = torch.randn(5, 4, generator=gen)
    results = {}
    for backend in ("compiled", "eager"):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = lp_dist(xg, wg, p, backend=backend)
        y.backward(grad_y)
        results[backend] = (y.detach(), xg.grad, wg.grad)
    y = results["eager"][0]
    assert y[1].isnan().all() and torch.isfinite(y[[0, 3, 4]][:, :3]).all()  # the test is live
    for got, want in zip(results["compiled"], results["eager"]):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_native_kernels_share_torchs_openmp_threads_where_torch_uses_libgomp(monkeypatch):
    """Where torch runs on libgomp, the library resolves to torch's own copy and runs its ranges
    on torch's threads (they would otherwise spin for milliseconds after each torch operation, on
    the cores the kernels need: p = 8.5 training steps took 1.65× as long): no Python thread is
    used. Fails on a silent fallback to the thread path."""
    if not native.available(torch.zeros(1)):
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    if native.torch_openmp() is None:
        pytest.skip("torch does not run on libgomp here")
    assert native.parallelism() == "OpenMP (torch's threads)", native.parallelism()
    assert native._get().lp_openmp_symbol() == native._torch_omp_symbol()

    class NoPool:
        def submit(self, *_):
            pytest.fail("a range ran on a Python thread")

    monkeypatch.setattr(native, "_pool", NoPool())
    monkeypatch.setattr(native.torch, "get_num_threads", lambda: 3)  # several ranges
    x = torch.randn(64, 300, requires_grad=True)
    w = torch.randn(130, 300, requires_grad=True)
    for p in (8.5, INF):
        lp_dist(x, w, p).sum().backward()
    assert native.all_finite(x.detach(), w.detach())


def test_openmp_and_thread_paths_give_identical_results(monkeypatch):
    """Both ways of running the ranges compute the same ranges with the same kernels: bitwise equal
    values and gradients. Four ranges, more than torch's threads on any runner here, so OpenMP
    threads each run several and the backward's partial sums must be indexed by range."""
    if not native.available(torch.zeros(1)):
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    if not native._openmp:
        pytest.skip(f"only one path here: {native.parallelism()}")
    monkeypatch.setattr(native.torch, "get_num_threads", lambda: 4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 300, generator=gen)
    w = torch.randn(130, 300, generator=gen)
    grad_y = torch.randn(64, 130, generator=gen)
    assert len(native._ranges(x.shape[0], float(x.numel()) * w.shape[0])) == 4
    for p in (8.5, 100.0, INF):
        results = []
        for openmp in (True, False):
            monkeypatch.setattr(native, "_openmp", openmp)
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = lp_dist(xg, wg, p)
            y.backward(grad_y)
            results.append((y.detach(), xg.grad, wg.grad))
        for a, b in zip(*results):
            assert torch.equal(a, b), p


@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "threads"])
def test_native_finiteness_scan_finds_every_nan_and_inf(openmp, monkeypatch):
    """The scan that sends non-finite calls to eager, split into 3 ranges (OpenMP or Python threads),
    with vector tails, on non-contiguous views: one bad value anywhere must be found."""
    if not native.available(torch.zeros(1)):
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    if openmp and not native._openmp:
        pytest.skip(f"no OpenMP path here: {native.parallelism()}")
    monkeypatch.setattr(native, "_openmp", openmp)
    monkeypatch.setattr(native.torch, "get_num_threads", lambda: 3)
    x = torch.randn(300, 333)  # 99,900 values: three ranges, a tail of 12
    assert len(native._ranges(x.numel(), float(x.numel()) * 64, 1 << 12)) == 3
    assert native.all_finite(x, x.t(), x[:, ::3], torch.zeros(0))
    for where in [0, 4095, 4096, 50_000, x.numel() - 1]:
        for bad in (math.nan, math.inf, -math.inf):
            y = x.clone()
            y.view(-1)[where] = bad
            assert not native.all_finite(y), (where, bad)
            assert not native.all_finite(x, y.t())
    assert native.all_finite(torch.tensor([3.4e38, -3.4e38, 1e-45]))  # huge and denormal are finite


@pytest.mark.parametrize("p", [8.5, INF])
def test_empty_batches_and_layers(p):
    """No rows or no outputs: empty results and zero gradients, not an error."""
    for b, co in [(0, 5), (3, 0)]:
        x = torch.randn(b, 70, requires_grad=True)
        w = torch.randn(co, 70, requires_grad=True)
        y = lp_dist(x, w, p)
        y.sum().backward()
        assert y.shape == (b, co)
        assert not x.grad.any() and not w.grad.any()


def _fresh_native(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CERTIFY_CACHE", str(tmp_path))


def test_a_failed_openmp_build_falls_back_to_threads_once(monkeypatch, tmp_path):
    """The -fopenmp build failing (a compiler without OpenMP) leaves the plain build on Python
    threads, says why, and is not retried by the next process (a marker beside the cache key)."""
    if native.torch_openmp() is None:
        pytest.skip("torch does not run on libgomp here")
    _fresh_native(monkeypatch, tmp_path)
    real_build, attempts = native._build, []

    def build(target, flags):
        attempts.append("-fopenmp" in flags)
        if "-fopenmp" in flags:
            raise RuntimeError("cc: error: unsupported option '-fopenmp'")
        real_build(target, flags)

    monkeypatch.setattr(native, "_build", build)
    assert native.available(torch.zeros(1)), native.unavailable_reason()
    assert not native._openmp
    assert native.parallelism() == ("Python threads (the OpenMP build failed: "
                                    "cc: error: unsupported option '-fopenmp')")
    assert attempts == [True, False]
    x, w = torch.randn(6, 70), torch.randn(5, 70)
    torch.testing.assert_close(lp_dist(x, w, 8.5), eager.forward(x, w, 8.5), rtol=2e-6, atol=0)
    monkeypatch.setattr(native, "_state", None)  # as a new process would
    assert native.available(torch.zeros(1)) and not native._openmp
    assert attempts == [True, False]  # neither build ran again


def test_an_openmp_build_on_another_runtime_is_not_used(monkeypatch):
    """If the -fopenmp build resolves to a libgomp other than torch's (a copy with another soname),
    its threads would compete with torch's: the plain build serves instead, and says why."""
    path = native.torch_openmp()
    if path is None:
        pytest.skip("torch does not run on libgomp here")
    monkeypatch.setattr(native, "_state", None)  # reloads both builds from the cache
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "torch_openmp", lambda: path)
    monkeypatch.setattr(native, "_torch_omp_symbol", lambda: 4096)  # not what the build resolved
    assert native.available(torch.zeros(1)), native.unavailable_reason()
    assert not native._openmp
    assert native.parallelism() == "Python threads (the OpenMP build did not resolve to torch's libgomp)"
    assert not native._get().lp_openmp_symbol()  # the plain build is the one loaded
