"""Build table.md and classes.png from the seed*/ directories of this experiment.

Each seedK/ holds ``certify eval --json`` outputs (NAME.eval.json; the Gaussian models' with the
per-class certified section from --results) and the Gaussian models' certification TSVs.

    python results/fmnist-lt100-short/make_table.py
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from certify.data import dataset_info
from certify.plot import plot_per_class_certified
from certify.results import read_results

HERE = Path(__file__).resolve().parent
METHODS = [("ce", "CE (baseline)"), ("ce-ladc", "CE + LADC (post-hoc)"), ("ldam-drw", "LDAM-DRW"),
           ("ldam-drw-refinit", "LDAM-DRW, reference head init (CPU rerun)"),
           ("ldam-drw-oldinit-cpu", "LDAM-DRW, previous head init (CPU rerun)"),
           ("vs", "VS (γ 0.3, τ 1)"), ("bayias", "Bayias"), ("bayias-unimix", "Bayias + UniMix"),
           ("cdb-w", "CDB-W (dynamic τ)"), ("cdb-s", "CDB-S (dynamic τ)"),
           ("cdb-s-rerun", "CDB-S, second run of the same command"),
           ("cdb-w-floor", "CDB-W, difficulty floor 0.05"), ("cdb-s-floor", "CDB-S, difficulty floor 0.05"),
           ("absgd", "ABSGD (λ 200 → 5)"), ("absgd-drw", "ABSGD + DRW")]
CERTIFIED = [("gauss-ce", "Gaussian σ=0.25, CE"), ("gauss-ldam-drw", "Gaussian σ=0.25, LDAM-DRW"),
             ("gauss-vs", "Gaussian σ=0.25, VS"), ("gauss-bayias-unimix", "Gaussian σ=0.25, Bayias + UniMix")]
RADII = (0.0, 0.25, 0.5)
# Trained on s·logits (LDAM, s = 30): their ECE counts only from an eval that applied s (it records
# "logit_scale"); before that fix certify eval took the softmax of the raw cosines.
SCALED = {"ldam-drw", "gauss-ldam-drw"}
# The Gaussian models' base classifiers on the clean test set: the LDAM-DRW ones before and after
# the head-init fix (issue 14), against CE. Seeds without the file are left out and counted.
BASE = [("gauss-ce", "Gaussian σ=0.25, CE (GPU)"),
        ("gauss-ldam-drw", "Gaussian σ=0.25, LDAM-DRW, previous head init (GPU)"),
        ("gauss-ldam-drw-oldinit-cpu", "the same, previous head init (CPU rerun)"),
        ("gauss-ldam-drw-refinit", "the same, reference head init (CPU rerun)")]


def number(value: float | None) -> float:
    """A metric as the eval JSON has it: null (undefined, e.g. a diverged model) is nan here."""
    return math.nan if value is None else value


def ece_cell(name: str, runs: list[dict]) -> str:
    if name in SCALED:
        runs = [r for r in runs if "logit_scale" in r]
        if not runs:
            return "n/a (eval without the logit scale)"
    text = cell([number(r["ece"]) for r in runs])
    return text if name not in SCALED or len(runs) == len(SEEDS) else f"{text} ({len(runs)} of {len(SEEDS)} seeds)"


def base_table() -> list[str]:
    out = ["", "Base classifiers of the Gaussian LDAM-DRW models on the clean test set, before and after "
           "the cosine head got the reference's init (issue 14). GPU: the H200 runs above; CPU: "
           "reruns of the same training commands on the 2-core CPU. ECE at the trained logit scale "
           "s = 30 (of the GPU LDAM-DRW models only seed 0's, models/, was kept to re-evaluate).", "",
           "| model | seeds | balanced acc | per seed | few-shot acc | ECE (15 bins) |", "|---|---|---|---|---|---|"]
    for name, label in BASE:
        runs = [r for r in (load(s, name) for s in SEEDS) if r is not None]
        if not runs:
            continue
        bal = [r["balanced_accuracy"] for r in runs]
        few = [number(r["shots"]["few"]["accuracy"]) for r in runs]
        out.append(f"| {label} | {len(runs)} | {cell(bal)} | {' / '.join(f'{b:.3f}' for b in bal)} "
                   f"| {cell(few)} | {ece_cell(name, runs)} |")
    return out


def load(seed_dir: Path, name: str) -> dict | None:
    path = seed_dir / f"{name}.eval.json"
    return json.loads(path.read_text()) if path.exists() else None


def cell(values: list[float], baseline: list[float] | None = None) -> str:
    """mean (± sd over seeds); with a baseline, the mean difference and how many seeds beat it."""
    mean = statistics.fmean(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0
    text = f"{mean:.3f}" + (f" ± {sd:.3f}" if len(values) > 1 else "")
    if baseline is not None:
        diff = [v - b for v, b in zip(values, baseline)]
        wins = sum(d > 0 for d in diff)
        text += f" ({statistics.fmean(diff):+.3f}, {wins}/{len(diff)})"
    return text


def ladc_certified(seed_dir: Path) -> list[str]:
    """LADC on the certified CE model, against that model on the same test images (every 20th:
    the LADC model was certified on the CPU, the CE one on every 5th image on the GPU)."""
    import numpy as np

    from certify.evaluation import per_class_certified_accuracy
    from certify.results import Results

    path = seed_dir / "gauss-ce-ladc.tsv"
    if not path.exists():
        return []
    ladc = read_results(path)
    ce = read_results(seed_dir / "gauss-ce.tsv")
    keep = np.isin(ce.idx, ladc.idx)
    ce = Results(*(getattr(ce, f)[keep] for f in ("idx", "label", "predict", "radius", "correct", "time")))
    assert np.array_equal(ce.idx, ladc.idx)
    out = ["", f"LADC on the certified CE model ({seed_dir.name}; the same 500 test images, every 20th, "
               "N = 10,000). Few-shot = mean over classes 7–9.", "",
           "| model | cert. acc r=0 | r=0.25 | r=0.5 | few-shot r=0 | few-shot r=0.25 | ACR |",
           "|---|---|---|---|---|---|---|"]
    for label, res in (("Gaussian σ=0.25, CE", ce), ("the same + LADC (head retrained on noisy features)", ladc)):
        at = res.certified_accuracy(RADII)
        few = per_class_certified_accuracy(res, 10, RADII)[7:].mean(0)
        out.append(f"| {label} | {at[0]:.3f} | {at[1]:.3f} | {at[2]:.3f} | {few[0]:.3f} | {few[1]:.3f} "
                   f"| {res.acr():.3f} |")
    return out


SEEDS = sorted(p for p in HERE.glob("seed*") if p.is_dir())


def main() -> None:
    seeds = SEEDS
    rows = {name: [load(s, name) for s in seeds] for name, _ in METHODS + CERTIFIED}
    ce = rows["ce"]
    lines = [f"Fashion-MNIST-LT ρ = 100, LeNet, recipe fmnist-lt100-short, {len(seeds)} training "
             f"seed(s) ({', '.join(s.name for s in seeds)}); balanced test set of 10,000. Cells: mean "
             "± sd over seeds; in brackets the mean difference to CE of the same seed and in how "
             "many seeds the method beat CE. Shot groups by training images: many > 1195 "
             "(classes 0–3), medium 239–1195 (4–6), few < 239 (7–9).", "",
             "| method | balanced acc | per seed | few-shot acc | medium-shot | many-shot | ECE (15 bins) |",
             "|---|---|---|---|---|---|---|"]
    for name, label in METHODS:
        runs = rows[name]
        if any(r is None for r in runs):
            continue
        bal = [r["balanced_accuracy"] for r in runs]
        shot = {g: [number(r["shots"][g]["accuracy"]) for r in runs] for g in ("few", "medium", "many")}
        base = None if name == "ce" else ([r["balanced_accuracy"] for r in ce],
                                           [number(r["shots"]["few"]["accuracy"]) for r in ce])
        lines.append(f"| {label} | {cell(bal, base and base[0])} | {' / '.join(f'{b:.3f}' for b in bal)} "
                     f"| {cell(shot['few'], base and base[1])} "
                     f"| {cell(shot['medium'])} | {cell(shot['many'])} | "
                     f"{ece_cell(name, runs)} |")
    lines += ["", "Certified (randomized smoothing, N = 10,000, α = 0.001, every 5th test image: "
              "2,000 images, 195–207 per class). Certified accuracy at ℓ2 radius r; few-shot = mean "
              "over classes 7–9.", "",
              "| model | clean acc (base) | cert. acc r=0 | r=0.25 | r=0.5 | few-shot r=0.25 | ACR |",
              "|---|---|---|---|---|---|---|"]
    best, best_value = None, -1.0
    for name, label in CERTIFIED:
        runs = rows[name]
        if any(r is None or "certified" not in r for r in runs):
            continue
        cert = [r["certified"] for r in runs]
        at = {r: [c["overall"][c["radii"].index(r)] for c in cert] for r in RADII}
        few = [c["shots"]["few"]["accuracy"][c["radii"].index(0.25)] for c in cert]
        acr = [read_results(s / f"{name}.tsv").acr() for s in seeds]
        lines.append(f"| {label} | {cell([r['balanced_accuracy'] for r in runs])} | {cell(at[0.0])} | "
                     f"{cell(at[0.25])} | {cell(at[0.5])} | {cell(few)} | {cell(acr)} |")
        if name != "gauss-ce" and statistics.fmean(at[0.25]) > best_value:
            best, best_value = name, statistics.fmean(at[0.25])
    lines += base_table()
    lines += ladc_certified(seeds[0])
    (HERE / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    if best is not None:  # the plot: CE against the long-tailed loss best at r = 0.25 (seed 0)
        first = seeds[0]
        curves = [load(first, n)["certified"]["per_class"] for n in ("gauss-ce", best)]
        counts = load(first, "gauss-ce")["class_counts"]
        import numpy as np

        plot_per_class_certified([np.array(c) for c in curves], [dict(CERTIFIED)["gauss-ce"],
                                 dict(CERTIFIED)[best]], list(RADII), HERE / "classes.png",
                                 class_names=dataset_info("fashion-mnist").classes, class_counts=counts,
                                 title=f"Fashion-MNIST-LT ρ=100: certified accuracy per class ({first.name})")
        print(f"classes.png: gauss-ce vs {best}")


if __name__ == "__main__":
    main()
