"""Choose the sequential method's parameters by exact computation on a real model's p_A values.

Input: results of ``certify run --method cohen`` (TSV + sidecar). Each certified row's radius gives
back its vote count n_A exactly (the Clopper-Pearson bound is increasing in n_A), so p̂ = n_A / N is
that image's p_A to within ±0.001 at N = 100,000. Each image's outcome under a rule is then computed
exactly by the dynamic programme of ``certify.smoothing.stopping`` (no Monte Carlo): the expected
estimation samples, and the probability of being certified at each requested radius. Cohen's
expected certified accuracy at the same N is the binomial tail of the same p̂, so both columns come
from the same images and the same "truth", and the baseline is Cohen in the same computation.

It compares, for the requested radii (the summary table's for that σ):
  - the futility level (α/K, 0.01, 0.05, 0.1, 0.2), what it tests against (the radius's threshold
    Φ(r/σ), or the vote share that certifies r after N samples), the first round (256, 512, 1024)
    and how α is split over the rounds (evenly, or 1/2 or 3/4 of it on the last round);
  - the union bound over rounds (what ships) against an anytime-valid confidence sequence (the
    beta-binomial mixture of Robbins, Jeffreys prior, valid after every sample), with the same rule.

Usage:
  python benchmarks/sequential_design.py results/fmnist-sequential/cohen-s0.25.tsv \\
      results/fmnist-sequential/cohen-s0.5.tsv [--markdown out.md]
Abstentions in the Cohen run have an unknown n_A below the abstention threshold; they are modelled
as p_A = 0.45 (a class the selection step picked but cannot certify).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.special import betaln
from scipy.stats import binom, norm

from certify.results import read_results, read_sidecar
from certify.smoothing.stopping import StoppingRule, cp_lower, default_radii, stopping_distribution

ABSTAINED_P = 0.45


def vote_counts(radius: np.ndarray, sigma: float, n: int, alpha: float) -> np.ndarray:
    """n_A whose Cohen bound gives each radius (the smallest count reaching it)."""
    counts = np.arange(n + 1)
    bounds = cp_lower(counts, n, alpha)
    radii = sigma * norm.ppf(np.clip(bounds, 1e-300, 1.0))
    # radii are rounded to 6 significant digits in the TSV: take the count whose radius is nearest
    return np.array([int(np.argmin(np.abs(radii - r))) for r in radius])


def load_truth(path: Path) -> dict:
    side = read_sidecar(path)
    res = read_results(path, allow_partial_last=True)  # a cohen run may still be going
    sigma, n, alpha = float(side["sigma"]), int(side["n"]), float(side["alpha"])
    certified = res.predict >= 0
    p = np.full(len(res), ABSTAINED_P)
    p[certified] = vote_counts(res.radius[certified], sigma, n, alpha) / n
    return {"name": path.name, "sigma": sigma, "n": n, "n0": int(side["n0"]), "alpha": alpha, "p": p,
            "correct": res.correct.astype(bool)}


class MixtureCS(StoppingRule):
    """The same rule with a confidence sequence instead of the union bound: the lower end of
    {p : M_n(p) < 1/α}, M_n the beta(1/2, 1/2)-mixture likelihood ratio, valid at every n."""

    def p_lower(self, stage, counts):
        n = self.sizes[stage]
        c = np.asarray(counts, dtype=np.float64)
        log_mix = betaln(c + 0.5, n - c + 0.5) - betaln(0.5, 0.5)
        target = np.log(1.0 / self.alpha)
        lo, hi = np.zeros_like(c), np.maximum(c / n, 1e-12)
        for _ in range(60):  # bisection on p in [0, p̂]: M_n(p) decreases as p rises to p̂
            mid = (lo + hi) / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                log_lik = c * np.log(mid) + (n - c) * np.log1p(-mid)
            rejected = log_mix - log_lik >= target
            lo, hi = np.where(rejected, mid, lo), np.where(rejected, hi, mid)
        return np.where(c > 0, hi, 0.0)


def evaluate(truth: dict, rule: StoppingRule) -> dict:
    """Expected samples and certified accuracy at the rule's radii (exact, per image, averaged)."""
    samples, acc = [], np.zeros(len(rule.radii) + 1)
    for p, correct in zip(truth["p"], truth["correct"], strict=True):
        law = stopping_distribution(rule, float(p))
        samples.append(sum(mass.sum() * size for (mass, _), size in zip(law, rule.sizes, strict=True)))
        if correct:
            for mass, lower in law:
                acc += [mass[lower >= t].sum() for t in rule.thresholds]
    return {"samples": float(np.mean(samples)), "acc": acc / len(truth["p"])}


def cohen_accuracy(truth: dict, thresholds: np.ndarray) -> np.ndarray:
    n, alpha = truth["n"], truth["alpha"]
    # the smallest count whose bound reaches each threshold, then the binomial tail above it
    bounds = cp_lower(np.arange(n + 1), n, alpha)
    needed = [int(np.searchsorted(bounds, t, side="left")) for t in thresholds]
    acc = np.zeros(len(thresholds))
    for p, correct in zip(truth["p"], truth["correct"], strict=True):
        if correct:
            acc += [binom.sf(k - 1, n, p) for k in needed]
    return acc / len(truth["p"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cohen_tsv", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--quick", action="store_true",
                        help="only the shipped rule and its main alternatives (a few minutes for 500 "
                             "images on one core, instead of about twenty)")
    args = parser.parse_args()
    lines = []
    for path in args.cohen_tsv:
        truth = load_truth(path)
        sigma, n, alpha, n0 = truth["sigma"], truth["n"], truth["alpha"], truth["n0"]
        radii = default_radii(sigma, n, alpha)
        base = StoppingRule(sigma, alpha, n, radii)
        cohen = cohen_accuracy(truth, base.thresholds)
        head = " | ".join(f"Δ r={r:g}" for r in (0.0, *radii))
        lines += [f"\n### {truth['name']}: σ = {sigma}, N = {n}, α = {alpha}, "
                  f"{len(truth['p'])} images",
                  f"\ncohen: {n:,} estimation samples per image; expected certified accuracy "
                  + ", ".join(f"{a:.3f}" for a in cohen),
                  f"\n| bound | futility | first round | mean samples | ratio to cohen | {head} "
                  f"| max |Δ| |",
                  "|---|---:|---:|---:|---:|" + "---:|" * (len(radii) + 2)]
        # (bound, futility level, first round, share of α on the last round, futility target)
        configs = [("union", None, 512, None, "threshold"), ("union", 0.05, 512, None, "threshold"),
                   ("union", 0.1, 512, None, "at_n"), ("union", 0.1, 512, 0.5, "at_n")]
        configs += [("union", f, 512, 0.75, "at_n") for f in (0.01, 0.05, 0.1, 0.2)]
        configs += [("union", 0.1, 256, 0.75, "at_n"), ("union", 0.1, 1024, 0.75, "at_n"),
                    ("mixture CS", 0.1, 512, None, "at_n")]
        if args.quick:  # the shipped rule, futility 0.05, the even split, the confidence sequence
            configs = [configs[0], configs[2], configs[5], configs[6], configs[-1]]
        for bound, futility, first, share, target in configs:
            cls = MixtureCS if bound != "union" else StoppingRule
            level = futility if futility is not None else alpha / len(base.sizes)
            rule = cls(sigma, alpha, n, radii, futility=level, first_round=first, final_share=share,
                       futility_target=target)
            out = evaluate(truth, rule)
            delta = 100 * (out["acc"] - cohen)
            shown = "α/K" if futility is None else f"{futility:g}"
            split = ("α/K each" if share is None else f"{share:g} of α last") if cls is StoppingRule \
                else "valid at every n"
            lines.append(f"| {bound}, {split} | {shown} vs {target} | {first} | "
                         f"{out['samples']:,.0f} | {(n + n0) / (out['samples'] + n0):.1f}× | "
                         + " | ".join(f"{d:+.2f}" for d in delta)
                         + f" | {np.abs(delta).max():.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
        lines += ["", "The default rule with fewer requested radii (the largest dropped in turn):", "",
                  "| radii | mean samples | ratio to cohen | Δ at each requested radius | max |Δ| |",
                  "|---|---:|---:|---|---:|"]
        for m in range(len(radii) - 1, 1 if not args.quick else max(1, len(radii) - 3), -1):
            fewer = radii[:m]
            rule = StoppingRule(sigma, alpha, n, fewer)
            out = evaluate(truth, rule)
            delta = 100 * (out["acc"] - cohen_accuracy(truth, rule.thresholds))
            lines.append(f"| {', '.join(f'{r:g}' for r in fewer)} | {out['samples']:,.0f} | "
                         f"{(n + n0) / (out['samples'] + n0):.1f}× | "
                         + ", ".join(f"{d:+.2f}" for d in delta) + f" | {np.abs(delta).max():.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + ("\n\nmean samples: expected estimation samples per image; ratio: "
                                "forward passes per image (N0 included), cohen's over the rule's; "
                                "Δ: expected certified accuracy minus cohen's, in points.\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
