"""Samples per second of sequential certification against cohen, and what it saves per image.

On the shipped Fashion-MNIST LeNet (σ = 0.25) and real test images, in one process:

  (a) ``cohen``: ``Smooth.certify`` at N = --cohen-n, --batch 1000: the baseline samples/s.
  (b) ``sequential``: the ``sequential`` method's stream (images share forward batches) at the same
      batch, on rounds kept small (--n 4096, first round 512, so every round is ≤ 2048 samples):
      its forward samples per second, selection included.
  (c) ``sequential, one image at a time``: ``SequentialSmooth.certify`` per image, same settings:
      what (b) gains by batching across images.
  (d) the default sequential method at N = 100,000 against cohen at N = 100,000 on --wall-images
      images: mean forward passes per image and the wall-time ratio.

(a)-(c) alternate over --repeats repetitions and report medians, so load drift on a shared machine
hits them alike; the ratios are what to read. Usage (2 CPU cores, about 3-4 minutes):
  python benchmarks/sequential_throughput.py [--images 16] [--repeats 3] [--wall-images 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from certify.allocator import tune_malloc
from certify.checkpoint import load_checkpoint
from certify.data import load_dataset
from certify.methods import RunContext, Sequential, example_generator
from certify.smoothing import SequentialSmooth, Smooth

MODEL = Path(__file__).resolve().parents[1] / "models/fashion-mnist-lenet-sigma0.25.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cohen-n", type=int, default=10_000)
    parser.add_argument("--wall-images", type=int, default=6)
    args = parser.parse_args()
    tune_malloc()
    torch.manual_seed(0)
    ckpt = load_checkpoint(MODEL)
    model = ckpt.build_model(torch.device("cpu")).eval()
    data = load_dataset("fashion-mnist", "test")
    images = [data[i * 20][0] for i in range(args.images)]
    ctx = RunContext(batch_size=1000, seed=0)
    n0, small_n = 100, 4096

    def cohen() -> float:
        smooth = Smooth(model, 10, 0.25)
        start = time.perf_counter()
        for i, x in enumerate(images):
            smooth.certify(x, n0, args.cohen_n, 0.001, 1000, example_generator(ctx, i))
        return len(images) * (n0 + args.cohen_n) / (time.perf_counter() - start)

    def sequential_batched() -> float:
        smooth = SequentialSmooth(model, 10, 0.25, first_round=512)
        start = time.perf_counter()
        results = list(smooth.certify_stream(
            ((x, example_generator(ctx, i)) for i, x in enumerate(images)), n0, small_n, 0.001,
            1000))
        samples = sum(n0 + r.samples for r in results)
        return samples / (time.perf_counter() - start)

    def sequential_alone() -> float:
        smooth = SequentialSmooth(model, 10, 0.25, first_round=512)
        start, samples = time.perf_counter(), 0
        for i, x in enumerate(images):
            smooth.certify(x, n0, small_n, 0.001, 1000, example_generator(ctx, i))
            samples += n0 + smooth.last_num_samples
        return samples / (time.perf_counter() - start)

    runs = {"cohen": cohen, "sequential": sequential_batched, "sequential, one image at a time":
            sequential_alone}
    for run in runs.values():
        run()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            rates[name].append(run())
    base = statistics.median(rates["cohen"])
    print(f"samples/s on {torch.get_num_threads()} threads, {args.images} images, batch 1000, "
          f"median of {args.repeats}:")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:34s} {median:9.0f} samples/s   ratio to cohen {median / base:.2f}")

    wall = images[: args.wall_images]
    smooth = Smooth(model, 10, 0.25)
    start = time.perf_counter()
    for i, x in enumerate(wall):
        smooth.certify(x, n0, 100_000, 0.001, 1000, example_generator(ctx, i * 20))
    cohen_seconds = time.perf_counter() - start
    method = Sequential(ckpt, model, Sequential.resolve({}), ctx)
    start = time.perf_counter()
    rows = list(method.certify_stream((i * 20, x) for i, x in enumerate(wall)))
    seq_seconds = time.perf_counter() - start
    passes = n0 + sum(r.extra["samples"] for r in rows) / len(rows)
    print(f"N = 100,000 on {len(wall)} images: cohen {cohen_seconds:.1f} s, sequential "
          f"{seq_seconds:.1f} s (wall ratio {cohen_seconds / seq_seconds:.1f}×); forward passes per "
          f"image {n0 + 100_000:,} vs {passes:,.0f} ({(n0 + 100_000) / passes:.1f}× fewer)")


if __name__ == "__main__":
    main()
