"""Print this directory's Markdown table from the runs' eval JSON and training logs."""

import json
from pathlib import Path

HERE = Path(__file__).parent
RUNS = [("ce", "CE"), ("label-smoothing", "CE + label smoothing 0.1"), ("logitclip", "LogitClip τ = 1.5"),
        ("alpha3", "α-loss, α = 3"), ("cals", "CALS (m = 10)"),
        ("ce-memorize", "CE, 2000 images × 40 epochs"), ("ce-clean", "CE, clean labels"),
        ("label-smoothing-clean", "label smoothing 0.1, clean labels"), ("cals-clean", "CALS, clean labels")]

print("| run | clean test acc | ECE | classwise ECE | top-2 error (size) | average-2 error (size) "
      "| train acc (noisy labels) | flipped labels memorized | ζ (last epoch) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label in RUNS:
    if not (HERE / f"{name}.eval.json").exists():
        continue
    e = json.loads((HERE / f"{name}.eval.json").read_text())
    last = [json.loads(line) for line in (HERE / f"{name}.jsonl").read_text().splitlines()][-1]
    memo = last.get("flipped_fit_noisy")
    print(f"| {label} | {e['accuracy']:.4f} | {e['ece']:.4f} | {e['classwise_ece']:.4f} "
          f"| {e['top_k']['set_error']:.4f} ({e['top_k']['set_size']:.2f}) "
          f"| {e['average_k']['set_error']:.4f} ({e['average_k']['set_size']:.3f}) "
          f"| {last['train_noisy_acc']:.4f} | {'n/a' if memo is None else f'{memo:.4f}'} "
          f"| {last.get('zeta', float('nan')):.3f} |")
