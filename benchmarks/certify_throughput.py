"""Throughput of ``Smooth.certify`` against the reference certify loop and the bare forward pass.

Three things are timed on one (randomly initialised, seeded) model, in one process:

  (a) ``reference``: the certify loop of the original randomized-smoothing code (Cohen, Rosenfeld &
      Kolter 2019), re-implemented here: per batch ``x.repeat``, fresh ``randn_like`` noise,
      ``model(batch + noise).argmax(1)``, a copy to the host and a Python loop counting the votes.
      Always fp32.
  (b) ``smooth[p]``: ``certify.smoothing.core.Smooth(model, 10, sigma, precision=p).certify(...)``,
      once per precision ``p`` in ``--precision``.
  (c) ``forward[p]``: the model's forward + argmax over ready-made noisy batches, the same number of
      samples (n0 + n) in batches of the same size, with no noise drawn and no votes counted: the
      limit (b) can reach. fp32, plus autocast to every other precision asked for.

``--variants`` adds further ``Smooth`` methods, each a different way of running the same weights,
built by the library's ``certify.smoothing.inference.fast_classifier`` (what ``certify run
--channels-last --compile MODE`` runs):

  ``smooth[bf16+channels_last]``  the model in channels_last memory format, each noisy batch
      converted to it, under bf16 autocast.
  ``smooth[bf16+channels_last+cudnn_benchmark]``  the same with ``torch.backends.cudnn.benchmark``
      on during its calls (cuDNN times its algorithms for each new shape and keeps the fastest).
  ``smooth[compile:P]``, ``smooth[compile+channels_last:P]``  the model (in channels_last for the
      second) under ``torch.compile(mode=--compile-mode, dynamic=False)`` at precision P
      (--compile-precision), fed full batches only (``Smooth(static_batch=True)``, as ``certify
      run --compile``). Compilation happens in the warm-up, which calls it three times (CUDA graphs
      are recorded on a shape's second call); its time is reported separately ("compile_s" in the
      JSON) and never enters the timed repetitions.
  ``sequential[bf16+channels_last]``, ``sequential+compile[bf16+channels_last]``  the sequential
      method (``SequentialSmooth``, at most --n estimation samples, one image at a time) on the
      channels_last model at bf16, without and with torch.compile: what ``certify run --method
      sequential --precision bf16 --channels-last [--compile MODE]`` runs. Its samples/s counts the
      samples it drew (n0 + its mean estimation samples); its time per example is the headline.
      On random weights it stops at once (one class everywhere), so time it on --checkpoint.

``--checkpoint`` times a trained model on real test images (every 100th of its dataset's test
split, at its σ) instead of random weights and random images.

Each repetition certifies every example once with every method, example by example (a(x0) b(x0)
c(x0) a(x1) ...), after one warm-up call of each; a method is reported by its median time over the
repetitions, so load drifting on a shared machine hits all of them alike. Ratios are throughput
ratios (>1: the first is faster): b/a is the speed-up over the reference, b/c the fraction of the
bare forward's speed that ``Smooth`` keeps. Each ratio is printed of the medians and, in brackets,
as the median of the per-call paired ratios, which is steadier on a noisy machine.

Usage:
  GPU (the issue's measurement; the defaults are meant for it):
    python benchmarks/certify_throughput.py --arch cifar_resnet110 --json results/certify_throughput_gpu.json
  GPU with the variants (CUDA graphs through torch.compile's reduce-overhead mode):
    python benchmarks/certify_throughput.py --arch cifar_resnet110 --examples 2 --repeats 2 \
        --variants bf16+channels_last,compile --compile-mode reduce-overhead
  CPU (2 cores, LeNet 28×28, about 1.5–3 minutes depending on load):
    python benchmarks/certify_throughput.py --n 20000 --examples 2 --repeats 3 --precision fp32
  The defaults (n = 100000, fp32 and bf16) take far longer on a small CPU: LeNet runs at ~2500–10000
  samples/s there, and bf16 autocast on a CPU without native bf16 (no AVX512-BF16/AMX) is ~6× slower
  than fp32, so leave bf16 out on such CPUs.

CPU timings depend on the allocator as much as on the code: at batch 1000 LeNet's first activation
(~46 MB) is over glibc's default 32 MiB mmap threshold, so every forward maps and faults in fresh
pages. The ``certify`` command raises those thresholds at start-up (certify/allocator.py), and so
does this script unless ``--no-malloc-tuning`` is given; all three methods run under the same
setting, so the ratios stay fair either way.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from certify.allocator import tune_malloc
from certify.checkpoint import load_checkpoint
from certify.data import load_dataset
from certify.nets import build_model
from certify.smoothing import SequentialSmooth
from certify.smoothing.core import PRECISIONS, Smooth
from certify.smoothing.inference import fast_classifier

NUM_CLASSES = 10
ARCHS = {
    "lenet": {"input_shape": (1, 28, 28), "mean": (0.0,), "std": (1.0,)},
    "cifar_resnet110": {"input_shape": (3, 32, 32), "mean": (0.4914, 0.4822, 0.4465),
                        "std": (0.2023, 0.1994, 0.2010)},
}
ABSTAIN = -1
VARIANTS = ("bf16+channels_last", "bf16+channels_last+cudnn_benchmark", "compile", "compile+channels_last",
            "sequential", "sequential+compile")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


# ---------------------------------------------------------------- (a) the reference certify loop

def _reference_counts(model, x, num, batch_size, sigma, num_classes=NUM_CLASSES):
    """Votes of ``model`` on ``num`` noisy copies of x, counted the way the reference counts them."""
    with torch.no_grad():
        counts = np.zeros(num_classes, dtype=int)
        for _ in range(math.ceil(num / batch_size)):
            this_batch_size = min(batch_size, num)
            num -= this_batch_size
            batch = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch, device=x.device) * sigma
            predictions = model(batch + noise).argmax(1)
            per_batch = np.zeros(num_classes, dtype=int)
            for idx in predictions.cpu().numpy():  # one host copy and a Python loop per batch
                per_batch[idx] += 1
            counts += per_batch
        return counts


def reference_certify(model, x, n0, n, alpha, batch_size, sigma, num_classes=NUM_CLASSES):
    """(class, radius) or (ABSTAIN, 0.0), as the reference ``Smooth.certify``.

    statsmodels is imported at the top of this file, as in the reference, so its import is not timed.
    """
    model.eval()
    c_hat = _reference_counts(model, x, n0, batch_size, sigma, num_classes).argmax().item()
    n_a = _reference_counts(model, x, n, batch_size, sigma, num_classes)[c_hat].item()
    p_lower = proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return c_hat, float(sigma * norm.ppf(p_lower))


# ---------------------------------------------------------------- (c) the bare forward pass

def bare_forward(model, noisy, n0, n, batch_size, dtype):
    """Forward + argmax over ``noisy`` (a ready batch) for n0 then n samples; nothing else."""
    autocast = (torch.autocast(device_type=noisy.device.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for num in (n0, n):
            for start in range(0, num, batch_size):
                model(noisy[: min(batch_size, num - start)]).argmax(1)


# ---------------------------------------------------------------- the --variants

def variant_model(model: torch.nn.Module, variant: str, mode: str) -> torch.nn.Module:
    """A copy of ``model`` run the way ``variant`` says, through the library's fast_classifier (what
    ``certify run --channels-last --compile MODE`` runs); the sequential variants run channels_last."""
    return fast_classifier(copy.deepcopy(model),
                           channels_last="channels_last" in variant or variant.startswith("sequential"),
                           compile_mode=mode if "compile" in variant else "off")


def compile_mode(requested: str, device: torch.device) -> str:
    """``auto``: CUDA graphs (reduce-overhead) on CUDA, inductor's default elsewhere."""
    if requested != "auto":
        return requested
    return "reduce-overhead" if device.type == "cuda" else "default"


# ---------------------------------------------------------------- harness

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({name}, {torch.backends.cpu.get_cpu_capability()})"


def _environment():
    """Settings outside torch that move CPU timings a lot (threads, the allocator)."""
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLIBC_TUNABLES",
                                       "LD_PRELOAD") if os.environ.get(k)}


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="lenet")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples per example")
    p.add_argument("--n0", type=int, default=100, help="selection samples per example")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="time a trained checkpoint on its dataset's test images (every 100th) at its "
                        "sigma, instead of --arch with random weights and images")
    p.add_argument("--data-dir", default=None, help="the checkpoint's dataset folder")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level (default: the checkpoint's, else 0.25)")
    p.add_argument("--examples", type=int, default=3, help="inputs certified per repetition")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="fp32,bf16",
                   help=f"comma list for (b) and (c), from {sorted(PRECISIONS)}")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default mmap/trim thresholds (the certify CLI raises them)")
    p.add_argument("--variants", default="",
                   help=f"comma list of extra Smooth methods, from {list(VARIANTS)} (default: none)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="auto",
                   help="torch.compile mode of the compile variant; auto: reduce-overhead (CUDA "
                        "graphs) on CUDA, default elsewhere")
    p.add_argument("--compile-precision", default="bf16",
                   help=f"precision of the compile variant, from {sorted(PRECISIONS)} (default bf16)")
    args = p.parse_args(argv)
    args.variant_list = [s.strip() for s in args.variants.split(",") if s.strip()]
    for variant in args.variant_list:
        if variant not in VARIANTS:
            p.error(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    if args.compile_precision not in PRECISIONS:
        p.error(f"unknown --compile-precision {args.compile_precision!r}; choose from {sorted(PRECISIONS)}")
    args.precisions = [s.strip() for s in args.precision.split(",") if s.strip()]
    for prec in args.precisions:
        if prec not in PRECISIONS:
            p.error(f"unknown precision {prec!r}; choose from {sorted(PRECISIONS)}")
    if not args.precisions:
        p.error("--precision is empty")
    for name in ("n", "n0", "batch", "examples", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv=None):
    args = _parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    gen = torch.Generator().manual_seed(args.seed)
    if args.checkpoint is not None:  # a trained model on its own test images (every 100th)
        ckpt = load_checkpoint(args.checkpoint)
        model = ckpt.build_model(device).eval()
        shape, num_classes, what = tuple(ckpt.input_shape), ckpt.num_classes, f"{args.checkpoint.name} ({ckpt.arch})"
        sigma = args.sigma if args.sigma is not None else float(ckpt.certification["sigma"])
        test = load_dataset(ckpt.dataset, "test", data_dir=args.data_dir)
        xs = [test[100 * i][0].to(device) for i in range(args.examples)]
    else:  # random weights and random images: speed only
        spec = ARCHS[args.arch]
        num_classes, what = NUM_CLASSES, args.arch
        model = build_model(args.arch, num_classes=num_classes, **spec).to(device).eval()
        shape = spec["input_shape"]
        sigma = args.sigma if args.sigma is not None else 0.25
        xs = [torch.rand(shape, generator=gen).to(device) for _ in range(args.examples)]
    for param in model.parameters():
        param.requires_grad_(False)
    # (c)'s ready-made noisy batches, one per example, built outside the timed region
    noisy = [(x + sigma * torch.randn((args.batch, *shape), generator=gen).to(device))
             for x in xs]
    samples_per_example = args.n0 + args.n

    print(f"torch {torch.__version__} | {_device_name(device)} | threads {torch.get_num_threads()} | "
          f"model {what} {'x'.join(map(str, shape))} | n0 {args.n0} n {args.n} batch {args.batch} | "
          f"sigma {sigma} alpha {args.alpha} | examples {args.examples} repeats {args.repeats} | "
          f"malloc tuning {'on' if malloc_tuned else 'off'}",
          flush=True)
    if _environment():
        print("env: " + " ".join(f"{k}={v}" for k, v in _environment().items()), flush=True)
    if (device.type == "cpu" and "bf16" in args.precisions
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        print("note: this CPU has no native bf16; bf16 autocast will be much slower than fp32",
              flush=True)

    # Every method: a callable (x index, n0, n, seed) -> result or None.
    methods = {"reference": lambda i, n0, n, seed: (
        torch.manual_seed(seed),
        reference_certify(model, xs[i], n0, n, args.alpha, args.batch, sigma, num_classes))[1]}
    # The variants: (method name, module handed to Smooth, its precision); forward[precision] is
    # what each is compared with (b/c), so that forward method is added if --precision lacks it.
    variants: list[tuple[str, torch.nn.Module, str]] = []
    mode = compile_mode(args.compile_mode, device)
    sequential_samples: dict[str, list[int]] = {}
    for variant in args.variant_list:
        if variant.startswith("sequential"):
            continue  # below: they run SequentialSmooth, not Smooth
        if variant.startswith("compile"):
            variants.append((f"smooth[{variant}:{args.compile_precision}]",
                             variant_model(model, variant, mode), args.compile_precision))
        else:
            variants.append((f"smooth[{variant}]", variant_model(model, variant, mode), "bf16"))
    plain = [(f"smooth[{prec}]", model, prec) for prec in args.precisions]
    for name, module, prec in plain + variants:
        # a compiled model gets full batches only, as certify run --compile gives it
        smooth = Smooth(module, num_classes, sigma, precision=prec,
                        static_batch=name.startswith("smooth[compile"))
        benchmark_cudnn = "cudnn_benchmark" in name

        def run_smooth(i, n0, n, seed, smooth=smooth, benchmark_cudnn=benchmark_cudnn):
            g = torch.Generator(device=device).manual_seed(seed)
            # cudnn.benchmark is global: on for this method's calls only
            before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, benchmark_cudnn
            try:
                return smooth.certify(xs[i], n0, n, args.alpha, args.batch, generator=g)
            finally:
                torch.backends.cudnn.benchmark = before
        methods[name] = run_smooth
    for variant in (v for v in args.variant_list if v.startswith("sequential")):
        name = f"{variant}[bf16+channels_last]"
        seq = SequentialSmooth(variant_model(model, variant, mode), num_classes, sigma, precision="bf16",
                               static_batch="compile" in variant)
        sequential_samples[name] = []

        def run_sequential(i, n0, n, seed, seq=seq, name=name):
            g = torch.Generator(device=device).manual_seed(seed)
            result = seq.certify(xs[i], n0, n, args.alpha, args.batch, generator=g)
            sequential_samples[name].append(seq.last_num_samples)
            return result
        methods[name] = run_sequential
    variant_precision = {name: prec for name, _, prec in variants}
    variant_precision |= {name: "bf16" for name in sequential_samples}
    forward_precisions = ["fp32"] + [p for p in args.precisions if p != "fp32"]
    forward_precisions += [p for p in dict.fromkeys(variant_precision.values()) if p not in forward_precisions]
    for prec in forward_precisions:
        methods[f"forward[{prec}]"] = (
            lambda i, n0, n, seed, dtype=PRECISIONS[prec]:
            bare_forward(model, noisy[i], n0, n, args.batch, dtype))

    # Warm-up: one call of each, large enough to meet every batch shape of the timed calls
    # (n0's batch, full batches, the remainder), lazy imports, allocator and kernel selection.
    # A compiled method compiles in its first call and (CUDA graphs) records on a shape's second, so
    # it is warmed up three times; its first call's time is its compile time, reported apart.
    warm_n = min(args.n, args.batch + args.n % args.batch)
    width = max(16, *(len(name) for name in methods))  # 16 unless a variant's name is longer
    warmup_s, compile_s = {}, {}
    for name, fn in methods.items():
        calls = 3 if "compile" in name else 1
        t0 = time.perf_counter()
        for call in range(calls):
            fn(0, args.n0, warm_n, args.seed)
            _sync(device)
            if call == 0 and calls > 1:
                compile_s[name] = time.perf_counter() - t0
        warmup_s[name] = time.perf_counter() - t0
        if name in sequential_samples:
            sequential_samples[name].clear()  # the timed calls' samples only
        extra = f"  (compile: first call {compile_s[name]:.2f} s)" if name in compile_s else ""
        print(f"warm-up {name:<{width}} {warmup_s[name]:7.2f} s{extra}", flush=True)

    # times[name][rep][i]: one certify (or forward sweep) of example i. The order is example-major,
    # a(x0) b(x0) c(x0) a(x1) ..., so the calls compared with each other run seconds apart.
    times = {name: [] for name in methods}
    results = {name: [] for name in methods if not name.startswith("forward")}
    for rep in range(args.repeats):
        for name in methods:
            times[name].append([])
            if name in results:
                results[name].append([])
        for i in range(args.examples):
            for name, fn in methods.items():
                _sync(device)
                t0 = time.perf_counter()
                out = fn(i, args.n0, args.n, args.seed + 1 + 1000 * rep + i)
                _sync(device)
                times[name][rep].append(time.perf_counter() - t0)
                if name in results:
                    results[name][rep].append([int(out[0]), float(out[1])])
        print(f"rep {rep + 1}/{args.repeats}: "
              + "  ".join(f"{name} {sum(ts[rep]):.2f}s" for name, ts in times.items()), flush=True)

    summary = {}
    print(f"\n{'method':<{width}} {'median s':>9} {'s/example':>10} {'samples/s':>11}")
    for name, ts in times.items():
        med = statistics.median(sum(per_rep) for per_rep in ts)
        # a sequential method draws n0 + its own estimation samples (mean over the timed calls)
        drawn = (args.n0 + statistics.mean(sequential_samples[name]) if name in sequential_samples
                 else samples_per_example)
        summary[name] = {"times_s": ts, "median_s": med, "s_per_example": med / args.examples,
                         "samples_per_s": drawn * args.examples / med, "samples_per_example": drawn}
        print(f"{name:<{width}} {med:9.3f} {med / args.examples:10.4f} {summary[name]['samples_per_s']:11.0f}")

    def ratio(fast, slow):
        """Throughput of ``fast`` over ``slow``: of the medians, and the median of the paired
        per-call ratios (each example of each repetition; robust to drifting load)."""
        of_medians = summary[slow]["median_s"] / summary[fast]["median_s"]
        paired = statistics.median(s / f for rs, rf in zip(times[slow], times[fast], strict=True)
                                   for s, f in zip(rs, rf, strict=True))
        return {"of_medians": of_medians, "paired_median": paired}

    ratios = {}
    print()
    for prec in args.precisions:
        b, c = f"smooth[{prec}]", f"forward[{prec}]"
        ratios[f"b/a[{prec}]"] = ratio(b, "reference")
        ratios[f"b/c[{prec}]"] = ratio(b, c)
        print(f"{prec}: b/a = {ratios[f'b/a[{prec}]']['of_medians']:.3f} "
              f"(paired {ratios[f'b/a[{prec}]']['paired_median']:.3f})   "
              f"b/c = {ratios[f'b/c[{prec}]']['of_medians']:.3f} "
              f"(paired {ratios[f'b/c[{prec}]']['paired_median']:.3f})")
    for name, prec in variant_precision.items():
        # e.g. bf16+channels_last, compile:bf16, sequential[bf16+channels_last]
        label = name[len("smooth["):-1] if name.startswith("smooth[") else name
        ratios[f"b/a[{label}]"] = ratio(name, "reference")
        ratios[f"b/c[{label}]"] = ratio(name, f"forward[{prec}]")
        print(f"{label}: b/a = {ratios[f'b/a[{label}]']['of_medians']:.3f} "
              f"(paired {ratios[f'b/a[{label}]']['paired_median']:.3f})   "
              f"b/c vs forward[{prec}] = {ratios[f'b/c[{label}]']['of_medians']:.3f} "
              f"(paired {ratios[f'b/c[{label}]']['paired_median']:.3f})")

    # Agreement: different random streams, so the radii differ by sampling error; the classes
    # (and abstentions) should match unless pA is close to 1/2.
    print("\nagreement (last repetition; class, radius):")
    last = {name: res[-1] for name, res in results.items()}
    for i in range(args.examples):
        cells = [f"{name} ({c}, {r:.4f})" for name, res in last.items() for c, r in [res[i]]]
        same = len({res[i][0] for res in last.values()}) == 1
        print(f"  example {i}: " + "  ".join(cells) + ("" if same else "   <-- classes differ"))
    all_same = all(len({res[k][i][0] for res in results.values()}) == 1
                   for k in range(args.repeats) for i in range(args.examples))
    print(f"same class for every example and repetition: {'yes' if all_same else 'NO'}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "torch": torch.__version__, "python": sys.version.split()[0], "device": _device_name(device),
            "threads": torch.get_num_threads(), "env": _environment(),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "samples_per_example": samples_per_example, "methods": summary, "ratios": ratios,
            "results": results, "same_class_everywhere": all_same, "warmup_s": warmup_s}
        if variant_precision:
            payload["variants"] = {name: {"precision": prec} for name, prec in variant_precision.items()}
        if compile_s:
            payload["compile"] = {"mode": mode, "compile_s": compile_s}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
