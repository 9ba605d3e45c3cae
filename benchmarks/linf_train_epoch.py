"""ℓ∞-dist net training steps at p = 8, non-integer p and p = ∞, in one process, interleaved:
  native    the native CPU kernels as they run by default
  threads   the same with their ranges on Python threads rather than torch's OpenMP threads
  log-exp   the same with every power by log2 then exp2 (no tables)
  compiled  the compiled (torch.compile) kernels alone

The network is the short Fashion-MNIST recipe's (fmnist-linf-v2-short: linf_dist_net depth 5, width
256, batch 512, Adam); each step is a forward, a cross-entropy + hinge loss on the logits, a
backward and an optimizer step, on random 28×28 inputs (the cost does not depend on the values).
For each p the script times --steps steps in each setting, --repeats times in alternation, and
prints the median seconds per step, the seconds a 60,000-image epoch would take, and each setting's
time over the native one's. p = 8 uses the compiled kernels in every setting (a control: its
ratios should be ~1).

    python benchmarks/linf_train_epoch.py --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certify.linf_dist import native  # noqa: E402
from certify.linf_dist.layers import set_p  # noqa: E402
from certify.nets import build_model  # noqa: E402

EPOCH_IMAGES = 60_000


def steps_seconds(model, optimizer, batches, p: float) -> float:
    set_p(model, p)
    start = time.perf_counter()
    for x, y in batches:
        logits = model(x)
        margin = logits.gather(1, y[:, None]) - logits
        loss = F.cross_entropy(logits, y) + F.relu(0.3 - margin).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per setting")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--p", type=float, nargs="+", default=[8.0, 8.5, 20.0, 100.0, math.inf])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build_model("linf_dist_net", num_classes=10, input_shape=(1, 28, 28), mean=(0.286,),
                        std=(0.353,), depth=5, width=args.width, scalar=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(args.batch, 1, 28, 28, generator=gen),
                torch.randint(0, 10, (args.batch,), generator=gen)) for _ in range(args.steps)]
    print(f"linf_dist_net depth 5 width {args.width}, batch {args.batch}, {args.steps} steps per "
          f"measurement, median of {args.repeats}, {torch.get_num_threads()} threads, "
          f"native kernels: {native.parallelism()}")
    settings = {"native": contextlib.nullcontext, "threads": native.separate_threads,
                "log-exp": native.log_exp_powers, "compiled": native.disabled}
    rows = []
    for p in args.p:
        times: dict[str, list[float]] = {name: [] for name in settings}
        for context in settings.values():  # warm-up: compilation, library build, allocator
            with context():
                steps_seconds(model, optimizer, batches[:1], p)
        for _ in range(args.repeats):
            for name, context in settings.items():
                with context():
                    times[name].append(steps_seconds(model, optimizer, batches, p) / args.steps)
        step = {name: statistics.median(t) for name, t in times.items()}
        row = {"p": "inf" if math.isinf(p) else p, **{f"{k}_s_per_step": v for k, v in step.items()},
               **{f"{k}_over_native": v / step["native"] for k, v in step.items() if k != "native"}}
        rows.append(row)
        print(f"p = {p:g}: " + "; ".join(
            f"{name} {t:.3f} s/step ({t * EPOCH_IMAGES / args.batch:.0f} s/epoch"
            + (")" if name == "native" else f", {t / step['native']:.2f}×)")
            for name, t in step.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
