"""Training throughput: a SmoothMix step against a Gaussian step, and torchrun against one process.

Part 1 (one process, interleaved repetitions): the trainer's own epoch function runs the same
batches through the Gaussian objective and through SmoothMix(m, T) on the same model. SmoothMix
costs about m·(T+2) forward+backward passes per example (T attack steps and 2 loss passes over m
noisy copies of each B/m-example chunk) against one for Gaussian; the script prints the measured
ratio next to that analytic one.

Part 2 (``--torchrun``): the same short ``certify train`` run (Gaussian, real Fashion-MNIST subset)
as one process and as ``torchrun --nproc_per_node=2`` with half the per-process batch, so the
global batch is the same; images/s from each run's JSON-lines log, and their ratio.

CPU usage (2 cores, about 2–4 minutes):
    python benchmarks/train_throughput.py --batches 4 --repeats 3 --torchrun
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from certify.allocator import tune_malloc
from certify.nets import build_model
from certify.objectives import make_objective
from certify.training.loop import TrainConfig, _train_epoch


def epoch_seconds(model, objective, batches, lr=0.01) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    config = TrainConfig()
    start = time.perf_counter()
    _train_epoch(model, objective, batches, optimizer, epoch=5, device=torch.device("cpu"),
                 config=config, desc="", progress=False)
    return time.perf_counter() - start


def part_one(args) -> dict:
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, input_shape=(1, 28, 28), mean=(0.286,), std=(0.353,))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch, 1, 28, 28, generator=gen),
                torch.randint(0, 10, (args.batch,), generator=gen)) for _ in range(args.batches)]
    objectives = {
        "gaussian": make_objective("gaussian", sigma=args.sigma),
        "smoothmix": make_objective("smoothmix", sigma=args.sigma, num_noise_vec=args.m,
                                    num_steps=args.T, step_size=1.0, mix_step=1, warmup=1),
    }
    for objective in objectives.values():  # warm-up
        epoch_seconds(model, objective, batches[:1])
    times = {name: [] for name in objectives}
    for rep in range(args.repeats):
        for name, objective in objectives.items():
            times[name].append(epoch_seconds(model, objective, batches))
        print(f"rep {rep + 1}/{args.repeats}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    images = args.batch * args.batches
    rate = {name: images / statistics.median(t) for name, t in times.items()}
    measured = rate["gaussian"] / rate["smoothmix"]
    analytic = args.m * (args.T + 2)
    print(f"\n{args.arch}, batch {args.batch}, {args.batches} batches, m={args.m} T={args.T}")
    print(f"gaussian   {rate['gaussian']:8.0f} images/s")
    print(f"smoothmix  {rate['smoothmix']:8.0f} images/s")
    print(f"cost ratio gaussian/smoothmix = {measured:.2f} (analytic m·(T+2) = {analytic})")
    return {"images_per_s": rate, "measured_ratio": measured, "analytic_ratio": analytic}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_rate(cmd: list[str], log: Path, env: dict) -> float:
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    last = json.loads(log.read_text().splitlines()[-1])
    return float(last["images_per_s"])


def part_two(args) -> dict:
    common = ["train", "--dataset", "fashion-mnist", "--arch", args.arch, "--sigma", str(args.sigma),
              "--epochs", "1", "--train-count", str(args.train_count), "--eval-count", "100",
              "--quiet"]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rates = {}
        for name in ("1 process", "torchrun 2 processes"):
            out = tmp / f"{len(rates)}.pt"
            if name == "1 process":
                cmd = [sys.executable, "-m", "certify.cli", *common, "--batch", str(args.batch),
                       "--out", str(out)]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                       "--master_port", str(_free_port()), "-m", "certify.cli", *common,
                       "--batch", str(args.batch // 2), "--out", str(out)]
            rates[name] = _train_rate(cmd, out.with_suffix(".jsonl"), env)
    ratio = rates["torchrun 2 processes"] / rates["1 process"]
    print(f"\ncertify train, {args.train_count} Fashion-MNIST images, global batch {args.batch}:")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:8.0f} images/s")
    print(f"torchrun/1 process = {ratio:.2f}")
    return {"images_per_s": rates, "ratio": ratio}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="lenet")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=4, help="batches per timed epoch (part 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--m", type=int, default=2, help="SmoothMix noise vectors")
    p.add_argument("--T", type=int, default=2, help="SmoothMix attack steps")
    p.add_argument("--torchrun", action="store_true", help="also time torchrun with 2 processes")
    p.add_argument("--train-count", type=int, default=8192, help="images in the torchrun comparison")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    tune_malloc()
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | cpu", flush=True)
    report = {"smoothmix_vs_gaussian": part_one(args)}
    if args.torchrun:
        report["torchrun"] = part_two(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
