"""Susceptibility ζ to noisy labels (Forouzesh, Sedghi & Thiran, ICLR 2023;
docs/long_tail_noisy.md#susceptibility).

How far one optimizer step on a batch of *unlabeled* inputs with uniformly random labels lowers
their loss says how readily the network is memorizing; it needs no clean labels, so it can pick
models and stopping epochs on noisy data. Per epoch t (reference ``compute_update_on_sout``):

    r_t = Φ̃(W_t) − Φ̃(W̃_{t+1})        (mean CE on the random-label batch before/after one step)
    ζ(t) = (1/t) Σ_{τ=1..t} r_τ          (running mean; the notebook skips epoch 0)

The step is then undone: parameters, buffers, gradients, optimizer state (momentum buffers, Adam
moments and step counts, param-group hyperparameters) and the RNG are restored bit for bit, in
memory (docs/long_tail_noisy.md#susceptibility), so measuring ζ does not change the training trajectory.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.params import Param
from certify.training.component import TrainingComponent, TrainingRun

__all__ = ["random_label_step", "select_region1", "susceptibility", "susceptibility_regions"]

LossFn = Callable[[Tensor, Tensor], Tensor]
_ABSENT = object()


class _Snapshot:
    """An in-memory copy of everything one optimizer step can change, restorable in place."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.params = [p.detach().clone() for p in model.parameters()]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.training = [m.training for m in model.modules()]
        self.opt_state = {p: {k: (v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v))
                              for k, v in s.items()}
                          for p, s in optimizer.state.items()}
        self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
                       for g in optimizer.param_groups]
        # Bookkeeping that LR schedulers read (set by the step wrapper); absent on some versions.
        self.opt_attrs = {a: getattr(optimizer, a, _ABSENT) for a in ("_opt_called", "_step_count")}
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @torch.no_grad()
    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for p, saved, g in zip(model.parameters(), self.params, self.grads):
            p.copy_(saved)
            if g is None:
                p.grad = None
            elif p.grad is None or p.grad.shape != g.shape:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        current = dict(model.named_buffers())
        for name, saved in self.buffers.items():
            current[name].copy_(saved)
        for m, mode in zip(model.modules(), self.training):
            m.training = mode
        for key in list(optimizer.state):
            if key not in self.opt_state:
                del optimizer.state[key]  # state the random step created from nothing
        for key, saved_state in self.opt_state.items():
            state = optimizer.state[key]
            for k in list(state):
                if k not in saved_state:
                    del state[k]
            for k, v in saved_state.items():
                cur = state.get(k)
                if isinstance(v, Tensor) and isinstance(cur, Tensor) and cur.shape == v.shape \
                        and cur.dtype == v.dtype:
                    cur.copy_(v)  # in place: keeps any outside reference to the tensor valid
                else:
                    state[k] = v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)
        for group, saved_group in zip(optimizer.param_groups, self.groups):
            group.update(copy.deepcopy(saved_group))
        for a, v in self.opt_attrs.items():
            if v is _ABSENT:
                if a in vars(optimizer):
                    delattr(optimizer, a)
            else:
                setattr(optimizer, a, v)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def random_label_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Tensor,
                      num_classes: int, generator: torch.Generator,
                      loss_fn: LossFn = F.cross_entropy) -> float:
    """r_t: the drop of the random-label loss after one ``optimizer`` step on ``inputs``, undone after.

    Labels are drawn uniformly from all ``num_classes`` classes with ``generator`` (CPU), as the
    reference's ``corrupt_prob=1`` loader does. Both losses are measured in training mode (as
    the reference, which calls ``net.train()``); the model's modes are restored afterwards.
    ``inputs`` must already be on the model's device.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    device = next(model.parameters()).device
    labels = torch.randint(0, num_classes, (inputs.shape[0],), generator=generator).to(device)
    snapshot = _Snapshot(model, optimizer)
    try:
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        before = loss.item()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            after = loss_fn(model(inputs), labels).item()
    finally:
        snapshot.restore(model, optimizer)
    return before - after


def susceptibility(r: Sequence[float], skip_first: bool = True) -> float:
    """ζ(t) = mean of the per-epoch drops r_1..r_t (r_0, measured at initialization, skipped).

    The notebook computes ``sum(r[1:t]) / t``; we divide by the number of terms summed, i.e. the
    running mean the paper defines (the two differ by one epoch in the numerator).
    """
    values = list(r)[1:] if skip_first else list(r)
    if not values:
        raise ValueError("susceptibility needs at least one drop after the skipped first epoch")
    return float(sum(values) / len(values))


def susceptibility_regions(zetas: Sequence[float], train_accs: Sequence[float]) -> list[int]:
    """Region per model in the (ζ, train accuracy) plane, split at the mean of each axis.

    1: ζ ≤ mean and accuracy ≥ mean (fits the data, resists random labels: select these);
    2: ζ > mean, accuracy ≥ mean; 3: ζ ≤ mean, accuracy < mean; 4: ζ > mean, accuracy < mean.
    """
    # Unverified (the paper names only Region 1): numbering of 2-4 and ties at the mean going to
    # Region 1's side are our choices.
    if len(zetas) != len(train_accs) or not zetas:
        raise ValueError("need one train accuracy per ζ, and at least one model")
    z = torch.tensor([float(v) for v in zetas], dtype=torch.float64)
    a = torch.tensor([float(v) for v in train_accs], dtype=torch.float64)
    low_z = (z <= z.mean()).tolist()
    high_a = (a >= a.mean()).tolist()
    table = {(True, True): 1, (False, True): 2, (True, False): 3, (False, False): 4}
    return [table[(lz, ha)] for lz, ha in zip(low_z, high_a)]


def select_region1(zetas: Sequence[float], train_accs: Sequence[float]) -> list[int]:
    """Indices of the Region-1 models (low ζ, high train accuracy), best train accuracy first."""
    regions = susceptibility_regions(zetas, train_accs)
    chosen = [i for i, reg in enumerate(regions) if reg == 1]
    return sorted(chosen, key=lambda i: -float(train_accs[i]))


class Susceptibility:
    """The trainer's per-epoch probe: r_t on a fixed batch of ``count`` held-out images with fixed
    uniformly random labels, and the running ζ(t) of the r's so far (from epoch 1 on)."""

    def __init__(self, dataset: Any, count: int, num_classes: int, seed: int, device: torch.device):
        self.count, self.num_classes, self.seed = count, num_classes, seed
        self.inputs = None
        if count:
            take = min(count, len(dataset))
            self.inputs = torch.stack([dataset[i][0] for i in range(take)]).to(device)

    def measure(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                history: Sequence[dict[str, Any]]) -> dict[str, float]:
        if self.inputs is None:
            return {}
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 99991)
        r = random_label_step(model, optimizer, self.inputs, self.num_classes, generator)
        drops = [h["susceptibility_r"] for h in history[:epoch] if "susceptibility_r" in h] + [r]
        record = {"susceptibility_r": round(r, 6)}
        if len(drops) > 1:
            record["zeta"] = round(susceptibility(drops), 6)
        return record


SUSCEPTIBILITY_OPTIONS: tuple[Param, ...] = (
    Param("susceptibility", 0, "Log the susceptibility ζ each epoch, on N held-out images with "
          "random labels (the paper: 128; 0: off).", kind=int, at_least=0),
)


class SusceptibilityProbe(TrainingComponent):
    """Measures r_t (and ζ) before each epoch trains, on the validation split or else the test
    images; the probe's optimizer step is undone, so training is unchanged."""

    name = "probe"
    title = "Susceptibility (noisy labels)"
    options = SUSCEPTIBILITY_OPTIONS

    def __init__(self, settings: Any):
        self.count = settings.susceptibility
        self.probe: Susceptibility | None = None

    def setup(self, run: TrainingRun) -> None:
        images = run.data.validation if run.data.validation is not None else run.test_set
        self.probe = Susceptibility(images, self.count, run.num_classes, run.config.run.seed,
                                    run.device)

    def start_epoch(self, run: TrainingRun, epoch: int) -> dict[str, Any]:
        assert self.probe is not None
        return self.probe.measure(run.model, run.optimizer, epoch, run.history)
