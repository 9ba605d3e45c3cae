"""LADC, label-aware distribution calibration: a post-hoc fix of a long-tailed classifier's head.

A network trained on long-tailed data has a backbone that is usable for every class but a last
layer biased towards the head classes, because the tail classes had too few examples to place
their decision regions. LADC (Wang et al., arXiv 2111.04901; docs/long_tail_noisy.md#ladc) keeps the
backbone, estimates each tail class's feature distribution with help from the statistics of
related head classes, samples features from it until every class has as many as the largest, and
retrains the head alone on real + generated features.

No official code exists. The generator follows TailCalib (Vigneswaran et al. 2021, the closest
public reference): statistics of the raw features, then the Tukey transform, then per seed feature
``x`` the calibrated mean ``(x + Σ μ_k)/(|N|+1)`` and covariance ``mean Σ_k + α + 1e-4·I``.
"Label-aware" is our reading of LADC: the neighbour set ``N_c`` is chosen once per class from
class statistics (the class itself and its nearest head classes by distance between means), not
per sample as TailCalib does. LADC's exact rule and weights are unverified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from certify.checkpoint import Checkpoint
from certify.errors import UserError
from certify.fsutil import check_output_path
from certify.nets.cosine import NormedLinear, classifier_head

__all__ = ["GeneratedFeatures", "extract_features", "class_statistics", "tukey", "head_classes",
           "neighbour_classes", "seeds_per_feature", "generate_features", "retrain_head", "check_checkpoint",
           "calibrate_checkpoint", "LadcSpec", "LadcReport", "run_ladc", "format_ladc"]

COV_JITTER = 1e-4  # TailCalib's diagonal term: Σ' from few or collinear features is often singular
WEIGHT_DECAY = 5e-4
COSINE_SCALE = 30.0  # LDAM's s: cosine logits in [-1, 1] are too flat for cross-entropy unscaled


@dataclass
class GeneratedFeatures:
    features: Tensor  # (M, D) float32
    labels: Tensor  # (M,) int64
    counts: list[int]  # generated points per class; real + generated = n_max for every class
    neighbours: list[list[int]]  # N_c of every class (used only where counts[c] > 0)


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Any, device: torch.device | str, batch_size: int = 1000,
                     noise_sigma: float | None = None, generator: torch.Generator | None = None,
                     progress: bool = False) -> tuple[Tensor, Tensor]:
    """Penultimate features (the input of the classifier head) and labels of every item.

    With ``noise_sigma`` the features are those of ``x + σ·N(0, I)``, one draw per image from the
    CPU ``generator`` (device-independent): a smoothing model's base classifier only ever sees
    noisy inputs, so that is the distribution its head must separate.
    """
    _, _, head = classifier_head(model)
    captured: list[Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    labels = []
    try:
        batches = DataLoader(dataset, batch_size=batch_size)
        for x, y in tqdm(batches, desc="ladc: features", unit="batch", leave=False, disable=not progress):
            if noise_sigma:
                x = x + noise_sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            model(x.to(device))
            labels.append(torch.as_tensor(y, dtype=torch.int64))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).flatten(1), torch.cat(labels)


def class_statistics(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class means (C, D) and unbiased covariances (C, D, D), in float64.

    A class with one sample has no spread to estimate: its covariance is zero (its neighbours and
    the jitter supply the spread). A class with none has no mean, which LADC cannot do without.
    """
    x = features.double()
    means = x.new_zeros(num_classes, x.shape[1])
    covs = x.new_zeros(num_classes, x.shape[1], x.shape[1])
    for c in range(num_classes):
        xc = x[labels == c]
        if len(xc) == 0:
            raise ValueError(f"class {c} has no features")
        means[c] = xc.mean(0)
        if len(xc) > 1:
            centred = xc - means[c]
            covs[c] = centred.T @ centred / (len(xc) - 1)
    return means, covs


def tukey(x: Tensor, lam: float) -> Tensor:
    """Tukey's ladder of powers: λ = 1 identity, λ = 0 log, else x**λ (makes skewed, non-negative
    ReLU features more Gaussian, which the sampler assumes)."""
    if lam == 1:
        return x
    return torch.log(x) if lam == 0 else x.pow(lam)


def head_classes(class_counts: Sequence[int]) -> list[int]:
    """The many-shot classes: more than n_max/5 training images (OLTR's "> 100" at CIFAR-100-LT's
    500-image maximum, scaled to the dataset, docs/long_tail_noisy.md#shot-groups)."""
    n_max = max(class_counts)
    return [c for c, n in enumerate(class_counts) if 5 * n > n_max]


def neighbour_classes(means: Tensor, class_counts: Sequence[int], k: int) -> list[list[int]]:
    """N_c for every class c: c itself, then the k−1 head classes other than c whose means are
    nearest to μ_c in L2 (ties by class index; fewer when fewer head classes exist).

    Our documented choice for LADC's unverified rule: chosen per class, so every generated
    feature of a class borrows from the same head classes.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    heads = torch.tensor(head_classes(class_counts), dtype=torch.int64)
    result = []
    for c in range(len(class_counts)):
        others = heads[heads != c]
        distances = (means[others].double() - means[c].double()).norm(dim=1)
        nearest = others[torch.argsort(distances, stable=True)[: k - 1]]
        result.append([c, *nearest.tolist()])
    return result


def seeds_per_feature(n_c: int, need: int, generator: torch.Generator | None = None) -> Tensor:
    """How many points each of a class's n_c real features seeds: ⌊need/n_c⌋ each, and one more
    for need mod n_c distinct features drawn at random, so that they sum to ``need`` exactly."""
    counts = torch.full((n_c,), need // n_c, dtype=torch.int64)
    counts[torch.randperm(n_c, generator=generator)[: need % n_c]] += 1
    return counts


def generate_features(features: Tensor, labels: Tensor, num_classes: int, *, k: int = 3,
                      alpha: float = 0.0, tukey_lambda: float = 1.0,
                      generator: torch.Generator | None = None) -> GeneratedFeatures:
    """Sample features until every class has n_max (TailCalib's generator, label-aware neighbours).

    Each real feature of class c seeds ⌊(n_max−n_c)/n_c⌋ points and (n_max−n_c) mod n_c distinct
    random seeds one more, so the class lands on n_max exactly. The seeds are the Tukey-transformed
    features; the head retrained on them must see ``tukey(features)`` as the real ones.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    # TailCalib's order: statistics of the raw features, then the transform of the seeds
    means, covs = class_statistics(features, labels, num_classes)
    seeds = tukey(features.double(), tukey_lambda)
    neighbours = neighbour_classes(means, counts.tolist(), k)
    n_max = int(counts.max())
    eye = torch.eye(features.shape[1], dtype=torch.float64)
    parts, part_labels, generated = [], [], [0] * num_classes
    for c in range(num_classes):
        n_c = int(counts[c])
        need = n_max - n_c
        if need == 0:
            continue
        per_seed = seeds_per_feature(n_c, need, generator)
        hood = neighbours[c]
        centres = (seeds[labels == c] + means[hood].sum(0)) / (len(hood) + 1)
        cov = covs[hood].mean(0) + alpha + COV_JITTER * eye  # Σ' depends on the class only
        chol, info = torch.linalg.cholesky_ex(cov)
        if info:
            raise ValueError(f"class {c}: the calibrated covariance is not positive definite "
                             f"(alpha={alpha} too negative?)")
        z = torch.randn(need, features.shape[1], generator=generator, dtype=torch.float64)
        parts.append((centres.repeat_interleave(per_seed, dim=0) + z @ chol.T).float())
        part_labels.append(torch.full((need,), c, dtype=torch.int64))
        generated[c] = need
    if not parts:
        return GeneratedFeatures(features.new_zeros(0, features.shape[1]), labels.new_zeros(0),
                                 generated, neighbours)
    return GeneratedFeatures(torch.cat(parts), torch.cat(part_labels), generated, neighbours)


def _reinitialize(head: nn.Linear | NormedLinear, generator: torch.Generator | None) -> None:
    """The head's own fresh init, drawn from ``generator`` so that the seed fixes it."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    device = head.weight.device
    head.cpu()  # the same init on every device; Module.to keeps the parameter objects
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        head.reset_parameters()  # NormedLinear's is the reference's unit-norm init
    head.to(device)


def retrain_head(head: nn.Linear | NormedLinear, features: Tensor, labels: Tensor, epochs: int = 10, lr: float = 0.1,
                 batch_size: int = 512, generator: torch.Generator | None = None,
                 weight_decay: float = WEIGHT_DECAY, cosine_scale: float = COSINE_SCALE,
                 progress: bool = False) -> list[float]:
    """Re-initialize ``head`` and train it alone on (features, labels); returns each epoch's mean loss.

    A fresh start, as in decoupled classifier retraining: the old weights carry the long-tail
    bias that the balanced features are meant to remove. SGD (momentum 0.9), cross-entropy, the
    learning rate on a per-step cosine to 0. A cosine head's logits are scaled by ``cosine_scale``
    during training only (argmax, hence predictions, do not depend on it).
    """
    if len(features) == 0:
        raise ValueError("no features to train the head on")
    device = head.weight.device
    _reinitialize(head, generator)
    features, labels = features.to(device, torch.float32), labels.to(device)
    scale = cosine_scale if isinstance(head, NormedLinear) else 1.0
    steps = epochs * math.ceil(len(features) / batch_size)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    was_training = head.training
    head.train()
    losses = []
    with torch.enable_grad():
        for _ in tqdm(range(epochs), desc="ladc: head", unit="epoch", leave=False, disable=not progress):
            order = torch.randperm(len(features), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                loss = F.cross_entropy(scale * head(features[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            losses.append(total / len(order))
    head.train(was_training)
    return losses


def check_checkpoint(ckpt: Checkpoint, tukey_lambda: float = 1.0) -> None:
    """Refuse what LADC cannot calibrate, before any data is read."""
    kind = str(ckpt.certification.get("kind", ""))
    if kind.startswith("linf"):
        raise UserError(f"{ckpt.path or 'the checkpoint'} is an ℓ∞-distance net ({kind}), whose "
                        f"certificate is built into the whole network; LADC retrains a linear head on "
                        f"penultimate features and works on smoothing and plain classifiers only")
    if tukey_lambda != 1:
        raise UserError(f"--tukey {tukey_lambda}: the head would be trained on Tukey-transformed "
                        f"features, but the exported model feeds it untransformed ones; only --tukey 1 "
                        f"gives a consistent checkpoint")


def calibrate_checkpoint(ckpt: Checkpoint, train_dataset: Any, class_counts: Sequence[int] | None,
                         device: torch.device | str, *, k: int = 3, alpha: float = 0.0,
                         tukey_lambda: float = 1.0, epochs: int = 10, lr: float = 0.1,
                         batch_size: int = 512, seed: int = 0,
                         feature_batch_size: int = 1000, progress: bool = False) -> Checkpoint:
    """A new checkpoint whose classifier head LADC retrained; ``ckpt`` itself is left unchanged.

    ``train_dataset`` must be the data ``ckpt`` was trained on (no augmentation), ``class_counts``
    its training images per class (checked against the labels; None: taken from them). The
    result is a final export: no resume state, metrics left to the caller, the LADC settings and
    the source checkpoint's sha256 under ``training["ladc"]``.
    """
    check_checkpoint(ckpt, tukey_lambda)
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    model = ckpt.build_model(device)
    try:
        _, _, head = classifier_head(model)
    except ValueError as err:
        raise UserError(f"{ckpt.path or 'the checkpoint'} ({ckpt.arch}): {err}; LADC retrains that "
                        f"layer") from None
    sigma = float(ckpt.certification["sigma"]) if ckpt.certification.get("kind") == "smoothing" else None
    generator = torch.Generator().manual_seed(seed)
    features, labels = extract_features(model, train_dataset, device, feature_batch_size, sigma, generator,
                                        progress=progress)
    found = torch.bincount(labels, minlength=ckpt.num_classes).tolist()
    if class_counts is not None and list(class_counts) != found:
        raise UserError(f"the training data has {found} images per class but the checkpoint records "
                        f"{list(class_counts)}: not the data it was trained on")
    if 0 in found:
        raise UserError(f"class {found.index(0)} has no training images: LADC needs at least one "
                        f"real feature per class to generate from")
    try:
        generated = generate_features(features, labels, ckpt.num_classes, k=k, alpha=alpha,
                                      tukey_lambda=tukey_lambda, generator=generator)
    except ValueError as err:
        raise UserError(f"LADC: {err}") from None
    retrain_head(head, torch.cat([tukey(features, tukey_lambda), generated.features]),
                 torch.cat([labels, generated.labels]), epochs, lr, batch_size, generator, progress=progress)
    record = {"k": k, "alpha": alpha, "tukey_lambda": tukey_lambda, "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "seed": seed, "weight_decay": WEIGHT_DECAY,
              "cosine_scale": COSINE_SCALE if isinstance(head, NormedLinear) else None,
              "noise_sigma": sigma, "class_counts": found, "head_classes": head_classes(found),
              "neighbours": [n if g else [] for n, g in zip(generated.neighbours, generated.counts)],
              "generated": generated.counts, "source": ckpt.sha256}
    return replace(ckpt, state_dict={name: v.detach().cpu().clone() for name, v in model.state_dict().items()},
                   training={**copy.deepcopy(ckpt.training), "ladc": record}, metrics={},
                   resume_state={}, command="", path=None, sha256="", reference_format=False)


# --------------------------------------------------------------------------------------------
# ``certify ladc`` as one call: the source's training data, before/after test accuracy, the file


@dataclass
class LadcSpec:
    """Everything ``certify ladc`` needs: the source checkpoint, where the calibrated one goes
    (it must not exist yet) and :func:`calibrate_checkpoint`'s settings."""

    checkpoint: Path
    out: Path
    k: int = 3
    alpha: float = 0.0
    tukey_lambda: float = 1.0
    epochs: int = 10
    lr: float = 0.1
    batch: int = 512
    seed: int = 0
    device: torch.device | str = "cpu"
    data_dir: str | None = None
    command: str = ""  # recorded in the calibrated checkpoint
    progress: bool = False  # progress bars on stderr for the feature pass and the head's epochs


@dataclass
class LadcReport:
    """What :func:`run_ladc` did; :func:`format_ladc` turns it into text."""

    checkpoint: Checkpoint  # the calibrated one, as saved (its LADC record: training["ladc"])
    out: Path
    before: tuple[float, float]  # (test accuracy, balanced accuracy) of the source
    after: tuple[float, float]  # the same for the calibrated checkpoint
    classes: tuple[str, ...]  # the dataset's class names


def run_ladc(spec: LadcSpec) -> LadcReport:
    """Calibrate ``spec.checkpoint`` on the exact data it was trained on, measure test accuracy
    before and after (the only evidence LADC helped) and save the result to ``spec.out``, holding
    its lock throughout."""
    from certify.locks import output_lock

    with output_lock(spec.out):
        return _run_ladc(spec)


def _run_ladc(spec: LadcSpec) -> LadcReport:
    from certify.checkpoint import load_checkpoint, save_checkpoint
    from certify.data import dataset_info, load_dataset
    from certify.training.views import checkpoint_training_data

    out = Path(spec.out)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out or remove it first")
    check_output_path(out)
    ckpt = load_checkpoint(spec.checkpoint)
    check_checkpoint(ckpt, spec.tukey_lambda)
    data = checkpoint_training_data(ckpt, spec.data_dir)
    test_set = load_dataset(ckpt.dataset, "test", data_dir=spec.data_dir)
    before = _test_accuracies(ckpt, test_set, spec.device)
    counts = ckpt.training.get("class_counts") or data.class_counts  # older checkpoints lack it
    new = calibrate_checkpoint(ckpt, data.train, counts, spec.device, k=spec.k, alpha=spec.alpha,
                               tukey_lambda=spec.tukey_lambda, epochs=spec.epochs, lr=spec.lr,
                               batch_size=spec.batch, seed=spec.seed, progress=spec.progress)
    after = _test_accuracies(new, test_set, spec.device)
    new.metrics = {"test_acc": round(after[0], 5), "test_balanced_acc": round(after[1], 5),
                   "test_acc_before_ladc": round(before[0], 5),
                   "test_balanced_acc_before_ladc": round(before[1], 5)}
    new.command = spec.command
    save_checkpoint(new, out)
    return LadcReport(new, out, before, after, dataset_info(ckpt.dataset).classes)


def format_ladc(report: LadcReport) -> str:
    """Generated features per class (and the head classes they came from), then test accuracy
    and balanced accuracy before and after."""
    record = report.checkpoint.training["ladc"]
    classes = report.classes
    lines = [f"generated features per class (up to {max(record['class_counts'])} each):"]
    for c, (real, made) in enumerate(zip(record["class_counts"], record["generated"])):
        name = classes[c] if c < len(classes) else str(c)
        hood = " ".join(map(str, record["neighbours"][c][1:]))
        lines.append(f"  {name:<16} real {real:>6}  generated {made:>6}"
                     + (f"  from heads {hood}" if hood else ""))
    for label, (acc, balanced) in (("before", report.before), ("after", report.after)):
        lines.append(f"{label:<7} test accuracy {acc:.4f}  balanced accuracy {balanced:.4f}")
    return "\n".join(lines)


def _test_accuracies(ckpt: Checkpoint, test_set: Any, device: torch.device | str) -> tuple[float, float]:
    """(accuracy, balanced accuracy over the classes present in the split)."""
    from certify.evaluation import per_class_accuracy, predict_probabilities

    pred = predict_probabilities(ckpt.build_model(device), test_set, device)
    per_class = [a for a in per_class_accuracy(pred) if not math.isnan(a)]
    return (pred.probs.argmax(1) == pred.labels).float().mean().item(), sum(per_class) / len(per_class)
