"""Sequential randomized-smoothing certification: stop each input once more samples cannot help.

``SequentialSmooth`` has ``Smooth.certify``'s signature, with ``n`` as the most estimation samples an
input may take. The class is selected from n0 samples, exactly as in Cohen et al.; the estimation
samples then come in rounds, and ``StoppingRule`` (``certify/smoothing/stopping.py``) decides after
each round whether to stop and what lower bound on p_A to report, valid at level α at any stop.

Many inputs are certified together: each forward batch is filled with the pending noisy copies of
several inputs, so rounds of a few hundred samples still make full batches. Each input draws its
noise from its own generator in fixed chunks of ``DRAW_CHUNK`` samples, so its result is the same
whatever the batch size and whichever inputs shared its batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from certify.smoothing.core import PRECISIONS, autocast_context, check_alpha, check_counts, check_smoothing
from certify.smoothing.stopping import StoppingRule

# Noise is drawn per input in chunks of this many samples (not per forward batch). An input keeps at
# most one partly used chunk, so the pool holds about (inputs in flight) × DRAW_CHUNK noisy copies.
DRAW_CHUNK = 512


@dataclass(frozen=True)
class SequentialResult:
    """One input's certificate and what it cost."""

    prediction: int  # the class, or SequentialSmooth.ABSTAIN
    radius: float  # 0.0 on abstention
    samples: int  # estimation samples used (the n0 selection samples not included)
    seconds: float  # its share of the forward batches' time, by samples


@dataclass(eq=False)
class _Pending:
    """An input being certified: where it is in the schedule and its share of the work so far."""

    x: torch.Tensor
    generator: torch.Generator | None
    stage: int = -1  # -1: the selection round; k ≥ 0: estimation round k of the rule
    need: int = 0  # samples of the current round not yet placed in a batch
    in_flight: int = 0  # samples placed in the current batch
    noise: torch.Tensor | None = None  # drawn noise not yet used
    guess: int = -1  # the selected class
    votes: list[int] = field(default_factory=list)  # this round's votes (estimation: cumulative)
    seconds: float = 0.0
    result: SequentialResult | None = field(default=None)


class SequentialSmooth:
    """A smoothed classifier certified with as few samples as the requested radii allow."""

    ABSTAIN = -1

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float,
                 radii: Sequence[float] | None = None, futility: float = 0.1, first_round: int = 512,
                 precision: str = "fp32", static_batch: bool = False):
        """``radii``: the radii whose certified accuracy matters (default: multiples of 0.25 that n
        samples can certify at the last round's level). ``futility``: the level of the test that
        gives up on the next radius (it costs accuracy, never validity). ``first_round``: samples
        of the first estimation round; each later round doubles the total. ``static_batch``: every
        forward gets the full batch (rows past the filled ones are left over and their votes
        dropped), so that a compiled classifier meets one shape only."""
        check_smoothing(num_classes, sigma, precision)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.radii = None if radii is None else tuple(float(r) for r in radii)
        self.futility = futility
        self.first_round = first_round
        self.precision = precision
        self.static_batch = static_batch
        self.last_num_samples = 0
        self._rules: dict[tuple[float, int], StoppingRule] = {}
        self._buffer: torch.Tensor | None = None

    def rule(self, n: int, alpha: float) -> StoppingRule:
        """The stopping rule for this many samples at most and this α (cached: its tables are reused)."""
        key = (float(alpha), int(n))
        if key not in self._rules:
            self._rules[key] = StoppingRule(self.sigma, alpha, n, self.radii, self.futility,
                                            self.first_round)
        return self._rules[key]

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """Predict with g at x and certify an ℓ2 radius, using at most n estimation samples.

        With probability ≥ 1 − α over the noise, the answer is ``ABSTAIN`` or g(x) with a radius
        within which g is constant. ``last_num_samples`` holds the estimation samples it took.
        """
        (result,) = self.certify_stream([(x, generator)], n0, n, alpha, batch_size)
        self.last_num_samples = result.samples
        return result.prediction, result.radius

    def certify_stream(self, inputs: Iterable[tuple[torch.Tensor, torch.Generator | None]], n0: int,
                       n: int, alpha: float, batch_size: int) -> Iterator[SequentialResult]:
        """Certify (input, generator) pairs sharing forward batches; results come in input order,
        each as soon as it and all before it are done. Inputs are read a pool at a time (enough to
        fill a batch with small rounds), not all at once.
        A generator of None draws from torch's global RNG, whose draws then depend on the order of
        the work; give each input its own generator for results that do not."""
        n0, n, batch_size = check_counts(n0=n0, n=n, batch_size=batch_size)
        check_alpha(alpha)
        rule = self.rule(n, alpha)
        self.base_classifier.eval()
        source = iter(inputs)
        # enough inputs in flight to fill a batch with their smallest rounds, plus finished ones
        # waiting for an earlier input (bounded: those are counted in the pool too)
        capacity = 2 * (-(-batch_size // min(n0, rule.sizes[0]))) + 2
        pool: list[_Pending] = []
        exhausted = False
        while True:
            while not exhausted and len(pool) < capacity:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    pool.append(_Pending(x=item[0], generator=item[1], need=n0,
                                         votes=[0] * self.num_classes))
            while pool and pool[0].result is not None:
                done = pool.pop(0).result
                assert done is not None  # the loop condition checked it
                yield done
            if not pool:
                return
            self._run_batch([p for p in pool if p.result is None], rule, batch_size)

    @torch.inference_mode()
    def _run_batch(self, active: list[_Pending], rule: StoppingRule, batch_size: int) -> None:
        """One forward batch over the oldest inputs' pending samples, then their decisions."""
        start = time.perf_counter()
        x0 = active[0].x
        batch = self._batch_buffer(x0, batch_size)
        owners: list[int] = []
        filled = 0
        for slot, item in enumerate(active):
            take = min(item.need, batch_size - filled)
            if take == 0:
                continue
            self._fill(item, batch[filled:filled + take])
            owners.extend([slot] * take)
            item.need -= take
            item.in_flight = take
            filled += take
            if filled == batch_size:
                break
        with autocast_context(x0.device, PRECISIONS[self.precision]):
            logits = self.base_classifier(batch if self.static_batch else batch[:filled])[:filled]
            if logits.shape[1] != self.num_classes:  # or votes would be counted for another input
                raise ValueError(f"the classifier gives {logits.shape[1]} outputs, but "
                                 f"num_classes is {self.num_classes}")
            votes = logits.argmax(1)
            owner = torch.tensor(owners, device=x0.device)
            counts = torch.bincount(owner * self.num_classes + votes,
                                    minlength=len(active) * self.num_classes)
        per_input: list[list[int]] = counts.view(len(active), self.num_classes).tolist()  # the batch's one host sync
        seconds = time.perf_counter() - start
        for slot, item in enumerate(active):
            if item.in_flight == 0:
                continue
            item.seconds += seconds * item.in_flight / filled
            item.in_flight = 0
            item.votes = [a + b for a, b in zip(item.votes, per_input[slot], strict=True)]
            if item.need == 0:
                self._end_round(item, rule)

    def _end_round(self, item: _Pending, rule: StoppingRule) -> None:
        """After a round: pick the class (selection) or apply the rule (estimation)."""
        if item.stage == -1:  # selection done: the most voted class (the first on ties)
            item.guess = max(range(self.num_classes), key=item.votes.__getitem__)
            item.votes = [0] * self.num_classes
        else:
            decision = rule.decide(item.stage, item.votes[item.guess])
            if decision.stop:
                certified = decision.p_lower >= 0.5
                item.result = SequentialResult(
                    prediction=item.guess if certified else self.ABSTAIN,
                    radius=rule.radius(decision.p_lower), samples=rule.sizes[item.stage],
                    seconds=item.seconds)
                item.noise = None
                return
        item.stage += 1
        item.need = rule.sizes[item.stage] - (rule.sizes[item.stage - 1] if item.stage else 0)

    def _fill(self, item: _Pending, rows: torch.Tensor) -> None:
        """rows ← x + noise, taking the input's drawn noise in order and drawing chunks as needed."""
        placed = 0
        while placed < len(rows):
            if item.noise is None or len(item.noise) == 0:
                size = min(DRAW_CHUNK, item.need - placed)
                item.noise = torch.randn((size, *item.x.shape), generator=item.generator,
                                         device=item.x.device).mul_(self.sigma)
            take = min(len(item.noise), len(rows) - placed)
            torch.add(item.noise[:take], item.x, out=rows[placed:placed + take])
            item.noise = item.noise[take:]
            placed += take

    def _batch_buffer(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.shape[1:] != x.shape or buf.shape[0] < rows or buf.device != x.device:
            # zeros, not empty: with static_batch the rows past the filled ones go through the model
            buf = torch.zeros((rows, *x.shape), dtype=torch.float32, device=x.device)
            self._buffer = buf
        return buf

