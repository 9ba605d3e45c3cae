"""When sequential certification stops sampling an input, and the bound it reports there.

The estimation samples come in rounds whose cumulative sizes n_1 < n_2 < ... < n_K = N double from
``first_round``. After round k the Clopper-Pearson lower bound on p_A is taken at level α_k, with
α_1 + ... + α_K = α, so by the union bound all K bounds hold together with probability ≥ 1 − α: the
bound at the round where the rule stops is valid at level α, whatever made it stop. By default the
last round gets 3/4 of α and the others share the rest. (We measured the union bound against an
anytime-valid beta-mixture confidence sequence, which allows a check after every sample: with only
K ≈ 9 checks the union bound is tighter. See ``benchmarks/sequential_design.py``.)

The rule stops as soon as more samples cannot change what was asked, the certified accuracy at the
requested radii r_1 < ... < r_m (radius 0, i.e. not abstaining, is always the first target):

- the largest requested radius is certified;
- even if every remaining sample voted for the class, the bound at N could not reach the next radius;
- futility: the upper confidence bound at level ``futility`` is below the vote share that would
  certify the next radius after all N samples. Since the union bound holds at every round at once,
  no stopping decision can make the reported bound invalid: this level trades samples against
  certified accuracy, not validity;
- the last round (N samples) is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["StoppingRule", "cp_lower", "cp_upper", "default_radii", "overcertification_probability",
           "round_sizes", "stopping_distribution"]


def round_sizes(n: int, first_round: int = 512) -> tuple[int, ...]:
    """Cumulative sample counts after each round: first_round·2^k while 1.5 times that fits in n, then n."""
    sizes = []
    size = first_round
    while 1.5 * size <= n:
        sizes.append(size)
        size *= 2
    return (*sizes, n)


def cp_lower(counts: np.ndarray | int, n: int, level: float) -> np.ndarray:
    """One-sided (1 − level) Clopper-Pearson lower bound on p from ``counts`` successes in n trials."""
    from scipy.stats import beta  # scipy.stats takes ~1 s to import: only when certifying

    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(level, c, n - c + 1)
    return np.where(c > 0, bound, 0.0)


def cp_upper(counts: np.ndarray | int, n: int, level: float) -> np.ndarray:
    """One-sided (1 − level) Clopper-Pearson upper bound on p from ``counts`` successes in n trials."""
    from scipy.stats import beta

    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(1.0 - level, c + 1, n - c)
    return np.where(c < n, bound, 1.0)


def default_radii(sigma: float, n: int, level: float) -> tuple[float, ...]:
    """The summary table's ℓ2 radii that n samples can certify at this level: the table's multiples
    of 0.25 (or of its larger step) up to σ·Φ⁻¹(level^(1/n)), the radius of an input whose n votes
    all go to one class."""
    from scipy.stats import norm

    from certify.summary import l2_step

    largest = sigma * float(norm.ppf(level ** (1.0 / n)))
    step = l2_step(largest)
    return tuple(round(k * step, 10) for k in range(1, int(largest / step + 1e-9) + 1))


@dataclass(frozen=True)
class Decision:
    """What the rule says after a round: stop or not, and the (level-α) lower bound on p_A there."""

    stop: bool
    p_lower: float


class StoppingRule:
    """The stop/continue decision of sequential certification for one (σ, α, N, radii) setting.

    Decisions are computed by vectorized numpy over vote counts, so the same code serves the
    certifier (one count at a time) and the exact validity check (every count of a round).
    """

    def __init__(self, sigma: float, alpha: float, n: int, radii: Sequence[float] | None = None,
                 futility: float = 0.1, first_round: int = 512, final_share: float | None = 0.75,
                 futility_target: str = "at_n"):
        """``final_share``: the share of α spent on the last round (the rest split evenly over the
        others; None: α/K for each of the K rounds). Most inputs that reach the last round sit near
        a radius's threshold, where the level matters most; those that stop early have margin.
        ``futility_target``: what the futility test compares p_A with: "threshold" Φ(r/σ), or
        "at_n" the vote share that would certify r after all N samples (larger, so it gives up
        sooner). ``radii`` None: the summary table's radii that the last round can certify
        (``default_radii`` at its level)."""
        from scipy.stats import norm

        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not 0.0 < futility < 1.0:
            raise ValueError(f"futility must be in (0, 1), got {futility}")
        if not (isinstance(first_round, int) and first_round >= 1):
            raise ValueError(f"first_round must be a positive integer, got {first_round!r}")
        if radii is not None and any(not (r > 0 and math.isfinite(r)) for r in radii):
            raise ValueError(f"radii must be positive and finite, got {tuple(radii)}")
        self.sigma, self.alpha, self.n, self.futility = float(sigma), float(alpha), int(n), futility
        self.sizes = round_sizes(self.n, first_round)
        k = len(self.sizes)
        share = 1.0 / k if final_share is None or k == 1 else final_share
        if not 0.0 < share <= 1.0 or (k > 1 and share == 1.0):
            raise ValueError(f"final_share must be in (0, 1), got {final_share}")
        # the union bound: the levels of the K rounds add up to α
        self.levels = (*[self.alpha * (1 - share) / (k - 1)] * (k - 1), self.alpha * share) \
            if k > 1 else (self.alpha,)
        if radii is None:
            radii = default_radii(self.sigma, self.n, self.levels[-1])
        self.radii = tuple(sorted(set(float(r) for r in radii)))
        # p_A thresholds of the targets: 1/2 (not abstaining), then Φ(r/σ) for each requested radius
        self.thresholds = np.concatenate([[0.5], norm.cdf(np.asarray(self.radii) / self.sigma)])
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.futility_target = futility_target
        if futility_target == "threshold":
            self.futility_thresholds = self.thresholds
        elif futility_target == "at_n":
            _, final = self.decision_table(self.rounds - 1)
            needed = np.searchsorted(final, self.thresholds, side="left")
            self.futility_thresholds = np.maximum(needed / self.n, self.thresholds)
        else:
            raise ValueError(f"futility_target must be 'threshold' or 'at_n', got {futility_target!r}")

    @property
    def rounds(self) -> int:
        return len(self.sizes)

    def p_lower(self, stage: int, counts: np.ndarray | int) -> np.ndarray:
        """The bound reported after round ``stage`` (0-based), at that round's share of α: valid at
        level α jointly over all rounds."""
        return cp_lower(counts, self.sizes[stage], self.levels[stage])

    def decision_table(self, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """``decide_all`` for every count 0..n_k of round ``stage``, computed once per rule."""
        if stage not in self._tables:
            self._tables[stage] = self.decide_all(stage, np.arange(self.sizes[stage] + 1))
        return self._tables[stage]

    def decide_all(self, stage: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stop, p_lower) for each vote count of the predicted class after round ``stage``."""
        counts = np.asarray(counts)
        n_k = self.sizes[stage]
        lower = self.p_lower(stage, counts)
        if stage == self.rounds - 1:
            return np.ones(counts.shape, dtype=bool), lower
        # index of the next target not yet certified (len(thresholds): all are)
        reached = np.searchsorted(self.thresholds, lower, side="right")
        done = reached == len(self.thresholds)
        nxt = np.minimum(reached, len(self.thresholds) - 1)
        best_case = self.p_lower(self.rounds - 1, counts + (self.n - n_k))
        hopeless = best_case < self.thresholds[nxt]
        futile = cp_upper(counts, n_k, self.futility) < self.futility_thresholds[nxt]
        return done | hopeless | futile, lower

    def decide(self, stage: int, count: int) -> Decision:
        stop, lower = self.decide_all(stage, np.asarray([count]))
        return Decision(bool(stop[0]), float(lower[0]))

    def radius(self, p_lower: float) -> float:
        """The certified radius σ·Φ⁻¹(p_lower), or 0.0 below 1/2 (an abstention)."""
        from scipy.stats import norm

        return float(self.sigma * norm.ppf(p_lower)) if p_lower >= 0.5 else 0.0


def stopping_distribution(rule: StoppingRule, p: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact law of where the rule stops when each vote goes to the class with probability p.

    Dynamic programming over the vote count: after round k the count of the inputs still sampling is
    convolved with the round's Binomial(n_k − n_{k−1}, p). Returns, per round, (probability of
    stopping there with each count 0..n_k, the p_lower reported at each count).
    """
    from scipy.signal import fftconvolve
    from scipy.stats import binom

    alive = np.ones(1)
    previous = 0
    law = []
    for stage, size in enumerate(rule.sizes):
        step = binom.pmf(np.arange(size - previous + 1), size - previous, p)
        alive = np.clip(fftconvolve(alive, step), 0.0, None)[: size + 1]
        stop, lower = rule.decision_table(stage)
        law.append((np.where(stop, alive, 0.0), lower))
        alive = np.where(stop, 0.0, alive)
        previous = size
    return law


def overcertification_probability(rule: StoppingRule, p: float) -> float:
    """P(the rule certifies a bound above the true p): a wrong class or a too-large radius. ≤ α if valid."""
    return float(sum(mass[(lower > p) & (lower >= 0.5)].sum()
                     for mass, lower in stopping_distribution(rule, p)))
