"""Random crops per image in the DataLoader against the same crops per batch (augment_on).

For each image shape, in one process, the time per 60,000 images of
  (a) loader: ``__getitem__`` with the per-image ``RandomCropFlip`` + default collate (workers 0),
      then the copy to ``--device``: what ``--augment-on loader`` feeds the trainer;
  (b) batch: ``__getitem__`` without a transform + default collate, the copy, then
      ``RandomCropFlip.batch`` on the device: what ``--augment-on batch`` does;
and a/b, plus (c) the batch form alone on batches already on the device. Shapes: 1×28×28 with
edge padding 1 (the v2 ℓ∞ Fashion-MNIST crops) and 3×32×32 with zero padding 4 and a flip.

CPU usage (one thread, about a minute):
    OMP_NUM_THREADS=1 python benchmarks/augment_batch.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from certify.data.augment import RandomCropFlip
from certify.data.memory import InMemoryImageDataset

CASES = (((1, 28, 28), RandomCropFlip(padding=1, flip=False, edge=True)),
         ((3, 32, 32), RandomCropFlip(padding=4, flip=True, edge=False)))
PER = 60_000  # images the times are scaled to


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch(dataset: InMemoryImageDataset, batch: int, device: torch.device,
           after: Callable[[torch.Tensor], torch.Tensor] | None) -> float:
    """Seconds for one shuffled pass of the trainer's DataLoader, each batch copied to ``device``
    and passed through ``after`` (if any)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    _sync(device)
    start = time.perf_counter()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        if after is not None:
            x = after(x)
    _sync(device)
    return time.perf_counter() - start


def _batch_form_only(shape: tuple[int, ...], aug: RandomCropFlip, count: int, batch: int,
                     device: torch.device) -> float:
    x = torch.rand(batch, *shape, device=device)
    aug.batch(x)  # warm-up (CUDA kernels, allocator)
    steps = max(1, count // batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        aug.batch(x)
    _sync(device)
    return (time.perf_counter() - start) * count / (steps * batch)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=PER, help="images per timed pass")
    p.add_argument("--batch", type=int, default=512, help="the v2 ℓ∞ recipes' batch")
    p.add_argument("--repeats", type=int, default=2, help="passes per form; the fastest counts")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | {device} | "
          f"batch {args.batch} | seconds per {PER:,} images (best of {args.repeats})", flush=True)
    scale = PER / args.count
    for shape, aug in CASES:
        torch.manual_seed(0)
        images = torch.randint(0, 256, (args.count, *shape), dtype=torch.uint8)
        labels = torch.randint(0, 10, (args.count,))
        per_image = InMemoryImageDataset(images, labels, transform=aug)
        plain = InMemoryImageDataset(images, labels)
        _epoch(plain, args.batch, device, aug.batch)  # warm-up
        loader = min(_epoch(per_image, args.batch, device, None) for _ in range(args.repeats)) * scale
        batched = min(_epoch(plain, args.batch, device, aug.batch) for _ in range(args.repeats)) * scale
        alone = _batch_form_only(shape, aug, args.count, args.batch, device)
        name = "×".join(map(str, shape))
        print(f"{name:>8} {aug!r}: (a) loader {loader:6.2f} s  (b) batch {batched:6.2f} s  "
              f"a/b {loader / batched:5.2f}  (c) batch form alone {alone:6.3f} s", flush=True)


if __name__ == "__main__":
    main()
