"""The cohen-vs-sequential table of this folder, from its TSVs (rerun after more rows land).

Both methods are compared on the images both have certified (cohen's runs may be partial: they
resume). Columns: certified accuracy at each radius the sequential run asked for, ACR, abstention
rate, mean forward passes per image (N0 + estimation samples), and seconds per image from the
rows' time column (each run's own machine conditions: see the README for the same-process ratio).

Usage: python results/fmnist-sequential/make_table.py > results/fmnist-sequential/table.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from certify.results import Results, read_results, read_sidecar

HERE = Path(__file__).resolve().parent


def subset(res: Results, keep: np.ndarray) -> Results:
    mask = np.isin(res.idx, keep)
    return Results(idx=res.idx[mask], label=res.label[mask], predict=res.predict[mask],
                   radius=res.radius[mask], correct=res.correct[mask], time=res.time[mask],
                   columns={k: v[mask] for k, v in res.columns.items()})


def row(name: str, res: Results, radii: list[float], passes: float) -> str:
    acc = res.certified_accuracy([0.0, *radii])
    return (f"| {name} | {len(res)} | " + " | ".join(f"{a:.3f}" for a in acc)
            + f" | {res.acr():.3f} | {res.abstain_rate():.1%} | {passes:,.0f} | "
            f"{res.seconds_per_example():.2f} |")


def main() -> None:
    for sigma in ("0.25", "0.5"):
        cohen_path, seq_path = HERE / f"cohen-s{sigma}.tsv", HERE / f"sequential-s{sigma}.tsv"
        if not (cohen_path.exists() and seq_path.exists()):
            continue
        cohen = read_results(cohen_path, allow_partial_last=True)
        seq = read_results(seq_path, allow_partial_last=True)
        side_c, side_s = read_sidecar(cohen_path), read_sidecar(seq_path)
        radii = side_s["radii"]
        common = np.intersect1d(cohen.idx, seq.idx)
        c, s = subset(cohen, common), subset(seq, common)
        n0 = side_s["n0"]
        head = " | ".join(f"r={r:g}" for r in [0.0, *radii])
        print(f"\n### σ = {sigma} (`{side_s['checkpoint']}`), N = {side_s['n']:,}, "
              f"α = {side_s['alpha']}\n")
        print(f"| method | images | {head} | ACR | abstain | forward passes / image | s / image |")
        print("|---|---:|" + "---:|" * (len(radii) + 1) + "---:|---:|---:|---:|")
        print(row("cohen", c, radii, side_c["n0"] + side_c["n"]))
        print(row("sequential, same images", s, radii, n0 + s.columns["samples"].mean()))
        if len(seq) > len(s):
            print(row("sequential, all its images", seq, radii, n0 + seq.columns["samples"].mean()))
        diff = 100 * (s.certified_accuracy([0.0, *radii]) - c.certified_accuracy([0.0, *radii]))
        ratio = (side_c["n0"] + side_c["n"]) / (n0 + s.columns["samples"].mean())
        print(f"\nOn the {len(common)} shared images: sequential minus cohen, in points: "
              + ", ".join(f"{d:+.1f} at r={r:g}" for d, r in zip(diff, [0.0, *radii], strict=True))
              + f"; {ratio:.1f}× fewer forward passes.")


if __name__ == "__main__":
    main()
