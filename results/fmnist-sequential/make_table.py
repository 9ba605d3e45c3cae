"""The cohen-vs-sequential table of this folder, from its TSVs (rerun after more rows land).

Both methods are compared on the images both have certified (cohen's runs may be partial: they
resume). Columns: certified accuracy at each radius the sequential run asked for, ACR, abstention
rate, mean forward passes per image (N0 + estimation samples) and seconds per image. For sequential
that is the run's wall time over its images. Cohen's run was paused and resumed while others went,
which inflates some rows' time, and every image costs it the same 100,100 passes, so its seconds per
image is the median of its rows' time column. The README has the same-process wall-time ratio.

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


def row(name: str, res: Results, radii: list[float], passes: float, seconds: float) -> str:
    acc = res.certified_accuracy([0.0, *radii])
    return (f"| {name} | {len(res)} | " + " | ".join(f"{a:.3f}" for a in acc)
            + f" | {res.acr():.3f} | {res.abstain_rate():.1%} | {passes:,.0f} | {seconds:.2f} |")


def wall_per_image(side: dict, res: Results) -> float:
    """A finished run's wall time over its images (its rows' mean time while it is unfinished)."""
    return side["wall_time"] / len(res) if side.get("complete") else float(res.time.mean())


def describe(side: dict) -> str:
    """How a sequential run differs from the defaults (its radii and futility level)."""
    return f"sequential (radii up to {side['radii'][-1]:g}, futility {side['futility']:g})"


def main() -> None:
    for sigma in ("0.25", "0.5"):
        cohen_path = HERE / f"cohen-s{sigma}.tsv"
        seq_paths = sorted(HERE.glob(f"sequential-s{sigma}*.tsv"))
        if not (cohen_path.exists() and seq_paths):
            continue
        cohen = read_results(cohen_path, allow_partial_last=True)
        side_c = read_sidecar(cohen_path)
        full = side_c["n0"] + side_c["n"]
        sides = {p: read_sidecar(p) for p in seq_paths}
        radii = max((s["radii"] for s in sides.values()), key=len)
        head = " | ".join(f"r={r:g}" for r in [0.0, *radii])
        print(f"\n### σ = {sigma} (`{side_c['checkpoint']}`), N = {side_c['n']:,}, "
              f"α = {side_c['alpha']}\n")
        print(f"| method | images | {head} | ACR | abstain | forward passes / image | s / image |")
        print("|---|---:|" + "---:|" * (len(radii) + 1) + "---:|---:|---:|---:|")
        seqs = {p: read_results(p, allow_partial_last=True) for p in seq_paths}
        common = cohen.idx
        for res in seqs.values():
            common = np.intersect1d(common, res.idx)
        c = subset(cohen, common)
        print(row("cohen", c, radii, full, float(np.median(cohen.time))))
        notes = []
        for path, res in seqs.items():
            s, side = subset(res, common), sides[path]
            passes = side["n0"] + s.columns["samples"].mean()
            print(row(f"{describe(side)}, `{path.name}`", s, radii, passes, float(s.time.mean())))
            asked = [0.0, *side["radii"]]
            diff = 100 * (s.certified_accuracy(asked) - c.certified_accuracy(asked))
            notes.append(f"- `{path.name}`: {full / passes:.1f}× fewer forward passes; minus cohen "
                         f"at its radii, in points: "
                         + ", ".join(f"{d:+.1f} (r={r:g})" for d, r in zip(diff, asked, strict=True)))
        for path, res in seqs.items():
            if len(res) > len(common):
                side = sides[path]
                print(row(f"{describe(side)}, all {len(res)} images", res, radii,
                          side["n0"] + res.columns["samples"].mean(), wall_per_image(side, res)))
        print(f"\nOn the {len(common)} images that every run has certified:\n")
        print("\n".join(notes))


if __name__ == "__main__":
    main()
