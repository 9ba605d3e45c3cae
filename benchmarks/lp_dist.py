"""Throughput of the ℓp-distance op (certify.linf_dist.ops.lp_dist) against its baselines.

One run prints, for p = 8, a non-integer p ≤ 10, a large p and p = ∞, the forward and the
forward+backward throughput in G element-ops/s (one element-op = one (b, o, i) triple, so a call
costs B·CO·CI element-ops) of:

  ours       lp_dist with the default backend (on the CPU: the native kernels for float32 at
             p ≠ 8, the compiled ones otherwise; Triton on a GPU)
  inductor   on the CPU, lp_dist with the native kernels disabled: the compiled (torch.compile)
             kernels at every p, as before the native ones existed
  log-exp    on the CPU, the native kernels with every power by log2 then exp2: as before the
             table route for p < 60 (AVX-512 only; elsewhere the same as ours)
  threads    on the CPU, the native kernels with their ranges on Python threads, not on torch's
             OpenMP threads (where torch runs on libgomp; elsewhere the same as ours)
  eager      lp_dist(backend="eager"), the chunked PyTorch backend
  cdist      torch.cdist(x, w, p)
  reference  the naive broadcast reference (materializes B×CO×CI; skipped when too big)
  triton     lp_dist(backend="triton"), on CUDA only, when certify.linf_dist.triton_kernels exists
  triton-outer  the same with the outer-product forward kernel for p ≤ 10 (triton_kernels.
             forward_layout("outer"); the backward and the other p are the triton row's)

"forward" runs under torch.no_grad() (p = ∞ then skips the argmax); "fwd+bwd" runs the forward
with gradients and backward(grad_y). The first call of each measurement (compilation, caches) is
timed separately and reported as "first"; the throughput is the median of --repeats further calls.
"vs cdist" divides a row's throughput by torch.cdist's at the same p.

On CUDA the script also prints the fraction of the card's FP32 peak (--peak-tflops) reached, using
these FLOP counts per element-op (minimal algorithmic counts, special functions counted as 1):
  p = 8        forward 5 (sub, 3 squarings, add);  backward 9 (sub, ·r, 4 mul for q^7, ·g, 2 add)
  general p    forward 6 (sub, ·1/m, log2, ·p, exp2, add);  backward 9 (sub, ·r, log2, ·(p−1),
               exp2, ·sign, ·g, 2 add)
  p = ∞        forward 2 (sub, max; |·| is a bit operation);  backward 0 (a scatter per output)

Examples:
  python benchmarks/lp_dist.py --repeats 3 --baseline-rows 64    # CPU, B=512, CI=CO=1024
  python benchmarks/lp_dist.py --device cuda --json out.json     # GPU, B=512, CI=CO=5120
  python benchmarks/lp_dist.py --baseline-rows 64                # slow baselines on 64 rows only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certify.linf_dist import native  # noqa: E402
from certify.linf_dist.ops import lp_dist  # noqa: E402
from certify.linf_dist.reference import lp_dist_reference  # noqa: E402

FLOPS_PER_ELEMENT = {  # (forward, backward) per element-op, see the module docstring
    "p8": (5, 9),
    "general": (6, 9),
    "inf": (2, 0),
}


def flops_per_element(p: float, mode: str) -> int:
    path = "inf" if math.isinf(p) else ("p8" if p == 8.0 else "general")
    forward, backward = FLOPS_PER_ELEMENT[path]
    return forward if mode == "forward" else forward + backward


def _tiles(text: str) -> tuple[int, int, int]:
    """'64x64x4' -> (64, 64, 4)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected BxCxW such as 64x64x4, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=512, help="B, rows of x (default 512)")
    parser.add_argument("--in-features", type=int, default=None,
                        help="CI (default 1024 on the CPU, 5120 on a GPU)")
    parser.add_argument("--out-features", type=int, default=None,
                        help="CO (default 1024 on the CPU, 5120 on a GPU)")
    parser.add_argument("--p", type=float, nargs="+", default=[8.0, 8.5, 100.0, 1000.0, math.inf],
                        help="p values (default 8 8.5 100 1000 inf)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--impls", nargs="+",
                        default=["ours", "inductor", "log-exp", "eager", "cdist", "reference", "triton",
                                 "triton-outer"],
                        help="implementations to run (default: all that apply)")
    parser.add_argument("--outer-tiles", type=_tiles, nargs="*", default=[],
                        help="with triton-outer on CUDA, also rows with these (BLOCK_B)x(BLOCK_CO)x(warps) "
                             "tiles of the outer-product forward, e.g. 32x32x4 64x64x8")
    parser.add_argument("--no-reference", action="store_true", help="skip the naive reference")
    parser.add_argument("--reference-max-gib", type=float, default=4.0,
                        help="skip the reference when its B×CO×CI tensors would exceed this "
                             "(estimated as 6 of them for fwd+bwd; default 4 GiB)")
    parser.add_argument("--baseline-rows", type=int, default=None,
                        help="run eager, cdist and the reference on the first N rows only "
                             "(their throughput barely depends on B; saves minutes on a CPU)")
    parser.add_argument("--slow-cap", type=float, default=20.0,
                        help="when a first call takes longer than this many seconds, time one "
                             "more call instead of --repeats (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time (default). cpu: this process's CPU time, summed "
                             "over threads; with --threads 1 on a shared machine it leaves out the "
                             "time other processes held the core (CPU devices only)")
    parser.add_argument("--peak-tflops", type=float, default=67.0,
                        help="FP32 peak of the GPU for the peak fraction (default 67: H100/H200 "
                             "SXM, non-tensor FP32)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device, clock: Callable[[], float]) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def measure(fn: Callable[[], None], device: torch.device, repeats: int, slow_cap: float,
            clock: Callable[[], float]) -> dict[str, float]:
    first = time_call(fn, device, clock)
    count = 1 if first > slow_cap else repeats
    times = [time_call(fn, device, clock) for _ in range(count)]
    return {"first_s": first, "median_s": statistics.median(times), "samples": count}


def compiled_within(context: Callable[[], AbstractContextManager[None]]) -> Callable[..., torch.Tensor]:
    """The compiled CPU backend with ``context()`` around its forward and its backward."""

    def run(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
        class Within(torch.autograd.Function):  # the backward runs later, from autograd
            @staticmethod
            def forward(ctx, a, b):
                with context(), torch.enable_grad():
                    ctx.a, ctx.b = a.detach().requires_grad_(), b.detach().requires_grad_()
                    ctx.y = lp_dist(ctx.a, ctx.b, p, backend="compiled")
                return ctx.y.detach()

            @staticmethod
            def backward(ctx, grad_y):
                with context():
                    return torch.autograd.grad(ctx.y, (ctx.a, ctx.b), grad_y)

        if not torch.is_grad_enabled():
            with context():
                return lp_dist(a, b, p, backend="compiled")
        return Within.apply(a, b)

    return run


def implementations(args: argparse.Namespace, device: torch.device,
                    x: torch.Tensor) -> dict[str, Callable[..., torch.Tensor]]:
    impls: dict[str, Callable[..., torch.Tensor]] = {
        "ours": lambda a, b, p: lp_dist(a, b, p),
        "eager": lambda a, b, p: lp_dist(a, b, p, backend="eager"),
        "inductor": compiled_within(native.disabled),
        "log-exp": compiled_within(native.log_exp_powers),
        "threads": compiled_within(native.separate_threads),
        "cdist": lambda a, b, p: torch.cdist(a, b, p=p),
        "reference": lp_dist_reference,
    }
    if device.type == "cuda" and importlib.util.find_spec("certify.linf_dist.triton_kernels"):
        try:
            from certify.linf_dist import triton_kernels

            if triton_kernels.available(x):
                impls["triton"] = lambda a, b, p: lp_dist(a, b, p, backend="triton")

                def triton_outer(a: torch.Tensor, b: torch.Tensor, p: float,
                                 tiles: tuple[int, int, int] | None = None) -> torch.Tensor:
                    with triton_kernels.forward_layout("outer", tiles):
                        return lp_dist(a, b, p, backend="triton")
                impls["triton-outer"] = triton_outer
                for tiles in args.outer_tiles:  # extra rows, named by their tiles, with triton-outer
                    impls["triton-outer[{}x{}x{}]".format(*tiles)] = (
                        lambda a, b, p, tiles=tiles: triton_outer(a, b, p, tiles))
            else:
                print("triton: not available on this device, skipped")
        except Exception as error:  # an absent or broken optional backend only skips its rows
            print(f"triton: import failed ({type(error).__name__}: {error}), skipped")
    if device.type != "cpu":
        impls.pop("inductor")
        impls.pop("log-exp")
        impls.pop("threads")
    return {name: fn for name, fn in impls.items() if name.split("[")[0] in args.impls}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_width = 5120 if device.type == "cuda" else 1024
    ci = args.in_features or default_width
    co = args.out_features or default_width
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    x_full = torch.randn(args.batch, ci, generator=gen, dtype=dtype).to(device)
    w = torch.randn(co, ci, generator=gen, dtype=dtype).to(device)
    impls = implementations(args, device, x_full)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu only makes sense on the CPU")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    baseline_rows = min(args.baseline_rows or args.batch, args.batch)
    itemsize = torch.finfo(dtype).bits // 8

    print(f"device {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, {args.dtype}, "
          f"B={args.batch} CI={ci} CO={co}, median of {args.repeats}, {args.clock} clock")
    if baseline_rows < args.batch:
        print(f"eager, cdist and reference run on the first {baseline_rows} rows")
    if device.type == "cpu":
        print(f"native kernels: {native.parallelism()}")

    records = []
    for p in args.p:
        for name, op in impls.items():
            full = name.startswith(("ours", "inductor", "log-exp", "threads", "triton"))
            rows = args.batch if full else baseline_rows
            x = x_full[:rows].contiguous()
            element_ops = rows * co * ci
            if name == "reference":
                need_gib = 6 * element_ops * itemsize / 2**30
                if args.no_reference or need_gib > args.reference_max_gib:
                    print(f"p={p:g} reference: skipped (needs ~{need_gib:.1f} GiB; "
                          f"--reference-max-gib {args.reference_max_gib:g})")
                    continue
            grad_y = torch.randn(rows, co, generator=gen, dtype=dtype).to(device)
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

            def forward(op=op, x=x, p=p):
                with torch.no_grad():
                    op(x, w, p)

            def forward_backward(op=op, xg=xg, wg=wg, grad_y=grad_y, p=p):
                xg.grad = wg.grad = None
                op(xg, wg, p).backward(grad_y)

            record = {"p": p, "impl": name, "rows": rows, "element_ops": element_ops}
            for mode, fn in (("forward", forward), ("fwd+bwd", forward_backward)):
                result = measure(fn, device, args.repeats, args.slow_cap, clock)
                gops = element_ops / result["median_s"] / 1e9
                record[mode] = dict(result, gops=gops, flops_per_element=flops_per_element(p, mode))
                if device.type == "cuda":
                    record[mode]["peak_fraction"] = (gops * 1e9 * flops_per_element(p, mode)
                                                     / (args.peak_tflops * 1e12))
            records.append(record)

    for record in records:  # ratios to torch.cdist at the same p
        cdist = next((r for r in records if r["p"] == record["p"] and r["impl"] == "cdist"), None)
        for mode in ("forward", "fwd+bwd"):
            record[mode]["vs_cdist"] = (record[mode]["gops"] / cdist[mode]["gops"]) if cdist else None

    width = max(12, *(len(r["impl"]) for r in records)) if records else 12
    header = (f"{'p':>6} {'impl':<{width}} {'fwd G/s':>9} {'vs cdist':>9} {'fwd+bwd G/s':>12} "
              f"{'vs cdist':>9} {'first fwd s':>12} {'first f+b s':>12}")
    if device.type == "cuda":
        header += f" {'fwd peak':>9} {'f+b peak':>9}"
    print(header)
    for record in records:
        f, fb = record["forward"], record["fwd+bwd"]

        def ratio(value):
            return f"{value:9.1f}" if value is not None else f"{'-':>9}"

        line = (f"{record['p']:>6g} {record['impl']:<{width}} {f['gops']:9.3f} {ratio(f['vs_cdist'])} "
                f"{fb['gops']:12.3f} {ratio(fb['vs_cdist'])} {f['first_s']:12.2f} "
                f"{fb['first_s']:12.2f}")
        if device.type == "cuda":
            line += f" {f['peak_fraction']:9.1%} {fb['peak_fraction']:9.1%}"
        print(line)

    if args.json:
        config = {"device": str(device), "torch": torch.__version__, "dtype": args.dtype,
                  "batch": args.batch, "in_features": ci, "out_features": co,
                  "baseline_rows": baseline_rows, "repeats": args.repeats, "clock": args.clock,
                  "threads": torch.get_num_threads(), "peak_tflops": args.peak_tflops,
                  "flops_per_element": FLOPS_PER_ELEMENT}
        for record in records:  # JSON has no infinity
            record["p"] = "inf" if math.isinf(record["p"]) else record["p"]
        args.json.write_text(json.dumps({"config": config, "results": records}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
