"""``certify eval``: how good a checkpoint's classifier is, beyond accuracy.

One pass over a split gives the softmax probabilities, from which: accuracy, balanced accuracy,
per-class accuracy, ECE and classwise ECE (15 equal-width bins), and set-valued prediction: top-k
against average-k with the same average size (docs/long_tail_noisy.md#average-k-sets). Average-k needs
held-out data for its threshold: the split's even-indexed images calibrate it and every metric
of the sets is measured on the odd-indexed ones. Smoothing models are evaluated as their base
classifier on clean inputs; ℓ∞-dist nets at p = ∞.

Long-tailed training (docs/long_tail_noisy.md#shot-groups): when the checkpoint records its
training images per class, the
classes are split into many-, medium- and few-shot groups by that *training* count, OLTR's
convention (> 100 / 20–100 / < 20 images on CIFAR-100-LT, n_max = 500), not Prior-LT's class-index
thirds. By default the thresholds scale with the dataset: many = n_max/5, few = n_max/25. A
certification TSV of ``certify run`` adds certified accuracy per class and per group.

Probabilities are the softmax of the logits the model was trained to produce: a cosine-head model
trained with LDAM outputs cosines in [-1, 1] that its loss multiplies by s (30 by default), so its
probabilities are softmax(s·z) (:func:`logit_scale`). Accuracy and top-k do not depend on the scale;
ECE, classwise ECE, the reliability diagram and average-k do, and are left undefined for a cosine
head whose training record is missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from certify.calibration import classwise_ece, expected_calibration_error
from certify.errors import UserError
from certify.fsutil import atomic_write_text, check_output_path
from certify.jsonutil import strict_dumps
from certify.results import Results, check_writable, read_results, read_sidecar, sidecar_path
from certify.set_prediction import (
    average_k_sets,
    average_k_threshold,
    average_k_tie_fraction,
    mean_set_size,
    set_error,
    top_k_sets,
)


@dataclass
class Predictions:
    probs: Tensor  # (N, C) softmax probabilities
    labels: Tensor  # (N,)


@dataclass(frozen=True)
class LogitScale:
    """The factor the model's logits get before the softmax: the one its loss applied in training.

    ``value`` None: unknown (a cosine head without a training record), so probabilities, hence
    calibration and average-k, are undefined. ``source`` says where the value came from.
    """

    value: float | None
    source: str


def logit_scale(ckpt: Any) -> LogitScale:
    """The logit scale of a checkpoint (:class:`LogitScale`), from what it records.

    LADC that retrained a cosine head records the scale it trained with; a run trained with loss
    ``ldam`` multiplies its logits by ``ldam_s`` (recorded when given, else the option's default,
    30); any other training record means the loss saw the raw logits (scale 1). Without a training
    record a plain head is taken as raw, and a cosine head's scale is unknown.
    """
    from certify.objectives.label_loss import LABEL_LOSS_OPTIONS
    from certify.params import by_name

    cosine = bool(ckpt.arch_kwargs.get("cosine_head"))
    training = ckpt.training if isinstance(ckpt.training, Mapping) else {}
    ladc = training.get("ladc")
    if isinstance(ladc, Mapping) and ladc.get("cosine_scale") is not None:
        value = float(ladc["cosine_scale"])
        return LogitScale(value, f"LADC retrained the cosine head on {value:g}·logits")
    config = training.get("config")
    params = config.get("objective_params") if isinstance(config, Mapping) else None
    if isinstance(params, Mapping):
        if params.get("loss") == "ldam":
            recorded = params.get("ldam_s")
            value = float(by_name(LABEL_LOSS_OPTIONS)["ldam_s"].default if recorded is None else recorded)
            return LogitScale(value, f"the s of loss ldam, {'as recorded' if recorded is not None else 'its default'}")
        return LogitScale(1.0, f"raw logits, as loss {params.get('loss', 'ce')} trained them")
    if cosine:
        return LogitScale(None, "unknown: a cosine head (logits in [-1, 1]) without the training "
                                "record that says how its loss scaled them")
    return LogitScale(1.0, "raw logits")


@torch.no_grad()
def predict_probabilities(model: nn.Module, dataset: Any, device: torch.device | str,
                          batch_size: int = 1000, scale: float = 1.0) -> Predictions:
    """Softmax of ``scale``·logits for every example of ``dataset`` (ℓ∞-dist nets at p = ∞)."""
    from certify.linf_dist.layers import INF, set_p

    model.eval()
    set_p(model, INF)  # no-op for models without ℓp-distance layers
    probs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        probs.append((model(x.to(device)).float() * scale).softmax(1).cpu())
        labels.append(torch.as_tensor(y))
    return Predictions(torch.cat(probs), torch.cat(labels))


def per_class_accuracy(pred: Predictions) -> list[float]:
    """Accuracy on each class's examples (nan for a class with none)."""
    hits = pred.probs.argmax(1) == pred.labels
    return [hits[pred.labels == c].float().mean().item() if (pred.labels == c).any() else math.nan
            for c in range(pred.probs.shape[1])]


SHOTS = ("many", "medium", "few")



def _number(x: float) -> int | float:
    """A threshold as JSON shows it best: 1200, not 1200.0."""
    return int(x) if float(x).is_integer() else float(x)


def _check_counts(class_counts: Sequence[int]) -> list[int]:
    counts = [int(c) for c in class_counts]
    if not counts:
        raise UserError("training class counts are empty")
    if any(c < 0 for c in counts) or any(int(c) != c for c in class_counts):
        raise UserError(f"training class counts must be non-negative whole numbers, got {list(class_counts)}")
    return counts


def shot_groups(class_counts: Sequence[int], many: float | None = None,
                few: float | None = None) -> dict[str, Any]:
    """Many-, medium- and few-shot classes by *training* image count (OLTR;
    docs/long_tail_noisy.md#shot-groups).

    many-shot: count > ``many``; medium: ``few`` ≤ count ≤ ``many``; few-shot: count < ``few``.
    A threshold left out scales OLTR's (100, 20) at CIFAR-100-LT's n_max = 500 to this dataset:
    many = n_max/5, few = n_max/25, n_max = max(class_counts). Returns
    ``{"thresholds": {"many": m, "few": f}, "default": {"many": bool, "few": bool},
    "classes": {"many": [...], "medium": [...], "few": [...]}}`` with class indices ascending.
    """
    counts = _check_counts(class_counts)
    n_max = max(counts)
    defaulted = {"many": many is None, "few": few is None}
    many = n_max / 5 if many is None else float(many)
    few = n_max / 25 if few is None else float(few)
    for name, value in (("many", many), ("few", few)):
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"the {name}-shot threshold must be a non-negative number, got {value}")
    if few > many:
        raise UserError(f"the few-shot threshold ({_number(few)}) must not exceed the many-shot "
                        f"threshold ({_number(many)})")
    classes: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(counts):
        classes["many" if n > many else "few" if n < few else "medium"].append(c)
    return {"thresholds": {"many": _number(many), "few": _number(few)}, "default": defaulted,
            "classes": classes}


def shot_label(groups: Mapping[str, Any], shot: str) -> str:
    """The group's rule as text: ">1200", "240-1200", "<240" (training images per class)."""
    m, f = groups["thresholds"]["many"], groups["thresholds"]["few"]
    return {"many": f">{m:g}", "medium": f"{f:g}-{m:g}", "few": f"<{f:g}"}[shot]


def shot_thresholds(groups: Mapping[str, Any]) -> dict[str, Any]:
    """The thresholds of :func:`shot_groups` with where they came from, for reports."""
    m, f = groups["thresholds"]["many"], groups["thresholds"]["few"]
    d = groups["default"]
    source = ("n_max/5 and n_max/25 (OLTR's 100/20 at CIFAR-100-LT's n_max = 500)"
              if d["many"] and d["few"] else
              "as given" if not (d["many"] or d["few"]) else
              f"{'few' if d['many'] else 'many'} as given, "
              f"{'many = n_max/5' if d['many'] else 'few = n_max/25'}")
    return {"many": m, "few": f, "default": dict(d), "source": source,
            "rule": f"training images per class: many-shot > {m:g}, medium {f:g}-{m:g} inclusive, "
                    f"few-shot < {f:g} (OLTR convention, not Prior-LT's class-index thirds)"}


def _group_classes(groups: Mapping[str, Any]) -> Mapping[str, Sequence[int]]:
    return groups["classes"] if "classes" in groups else groups


def shot_accuracy(per_class_values: Iterable[float], groups: Mapping[str, Any]) -> dict[str, float]:
    """Mean of ``per_class_values`` over each group's classes, skipping nan classes (no test
    examples); nan for a group with no (non-nan) class. ``groups``: what :func:`shot_groups`
    returns, or a plain ``{"many": [...], "medium": [...], "few": [...]}``."""
    classes = _group_classes(groups)
    values = [float(v) for v in per_class_values]
    out = {}
    for shot in SHOTS:
        present = [values[c] for c in classes.get(shot, []) if not math.isnan(values[c])]
        out[shot] = sum(present) / len(present) if present else math.nan
    return out


def _shots_section(per_class: Sequence[float], groups: Mapping[str, Any]) -> dict[str, Any]:
    acc = shot_accuracy(per_class, groups)
    return {shot: {"threshold": shot_label(groups, shot), "classes": list(groups["classes"][shot]),
                   "accuracy": acc[shot]} for shot in SHOTS}


def report(pred: Predictions, k: int = 2, seed: int = 0, class_counts: Sequence[int] | None = None,
           many: float | None = None, few: float | None = None,
           scale: LogitScale | None = None) -> dict[str, Any]:
    """Every metric of the module docstring, as plain numbers.

    ``scale``: how ``pred``'s probabilities were made (recorded as ``"logit_scale"`` and
    ``"logit_scale_source"``); with an unknown value, ``"ece"``, ``"classwise_ece"`` and
    ``"average_k"`` are None (the probabilities' scale is arbitrary).

    With ``class_counts`` (training images per class) the result also has ``"class_counts"``,
    ``"shot_thresholds"`` (``{"many": m, "few": f, "default": bool, "rule": text}``) and
    ``"shots"``: ``{"many": {"threshold": ">m", "classes": [...], "accuracy": x}, "medium": ...,
    "few": ...}``; see :func:`shot_groups` for ``many``/``few``.
    """
    scale = scale or LogitScale(1.0, "raw logits")
    defined = scale.value is not None
    per_class = per_class_accuracy(pred)
    present = [a for a in per_class if not math.isnan(a)]
    calibrate, held = slice(0, None, 2), slice(1, None, 2)
    probs, labels = pred.probs[held], pred.labels[held]
    top_sets = top_k_sets(probs, k)
    average_k = None
    if defined:
        threshold = average_k_threshold(pred.probs[calibrate], k)
        tie = average_k_tie_fraction(pred.probs[calibrate], k, threshold)
        avg_sets = average_k_sets(probs, threshold, tie, generator=torch.Generator().manual_seed(seed))
        average_k = {"threshold": threshold, "set_size": mean_set_size(avg_sets),
                     "set_error": set_error(avg_sets, labels)}
    metrics: dict[str, Any] = {
        "examples": len(pred.labels),
        "accuracy": (pred.probs.argmax(1) == pred.labels).float().mean().item(),
        "balanced_accuracy": sum(present) / len(present),
        "per_class_accuracy": per_class,
        "logit_scale": scale.value,
        "logit_scale_source": scale.source,
        "ece": expected_calibration_error(pred.probs, pred.labels) if defined else None,
        "classwise_ece": classwise_ece(pred.probs, pred.labels) if defined else None,
        "k": k,
        "top_k": {"set_size": mean_set_size(top_sets), "set_error": set_error(top_sets, labels)},
        "average_k": average_k,
    }
    if class_counts is not None:
        counts = _check_counts(class_counts)
        if len(counts) != len(per_class):
            raise UserError(f"{len(counts)} training class counts for a {len(per_class)}-class model")
        groups = shot_groups(counts, many, few)
        metrics["class_counts"] = counts
        metrics["shot_thresholds"] = shot_thresholds(groups)
        metrics["shots"] = _shots_section(per_class, groups)
    return metrics


def format_report(metrics: dict[str, Any], classes: tuple[str, ...] | None = None) -> str:
    """The report as aligned text lines."""
    k = metrics["k"]
    value, source = metrics.get("logit_scale", 1.0), metrics.get("logit_scale_source", "raw logits")
    undefined = "undefined (the logit scale is unknown)"
    avg = metrics["average_k"]
    lines = [
        f"examples           {metrics['examples']}",
        f"accuracy           {metrics['accuracy']:.4f}",
        f"balanced accuracy  {metrics['balanced_accuracy']:.4f}",
        "logit scale        " + (source if value is None else f"{value:g} ({source})" if value == 1
                                  else f"{value:g}: probabilities = softmax({value:g}·logits) ({source})"),
        f"ECE (15 bins)      {_fmt(metrics['ece'])}" if metrics["ece"] is not None
        else f"ECE (15 bins)      {undefined}",
        f"classwise ECE      {_fmt(metrics['classwise_ece'])}" if metrics["classwise_ece"] is not None
        else f"classwise ECE      {undefined}",
        f"top-{k} sets        size {metrics['top_k']['set_size']:.3f}  error "
        f"{metrics['top_k']['set_error']:.4f}   (odd-indexed half)",
        f"average-{k} sets    size {avg['set_size']:.3f}  error {avg['set_error']:.4f}   (threshold "
        f"{avg['threshold']:.4g} from the even-indexed half)" if avg is not None
        else f"average-{k} sets    {undefined}",
    ]
    counts = metrics.get("class_counts")
    if metrics.get("shots") is not None:
        lines += format_shot_lines(metrics["shot_thresholds"], metrics["shots"])
    lines.append("per-class accuracy" + ("   (training images)" if counts else ""))
    for c, acc in enumerate(metrics["per_class_accuracy"]):
        name = class_name(c, classes)
        train = f"   {counts[c]:>7}" if counts and c < len(counts) else ""
        lines.append(f"  {name:<16} {acc:.4f}{train}")
    return "\n".join(lines)


def class_name(c: int, classes: Sequence[str] | None) -> str:
    return classes[c] if classes and c < len(classes) else str(c)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "   n/a" if x is None or math.isnan(x) else f"{x:{spec}}"


def _class_list(classes: Sequence[int]) -> str:
    return f"{len(classes)} {'class' if len(classes) == 1 else 'classes'}" + \
        (": " + " ".join(map(str, classes)) if classes else "")


def format_shot_lines(thresholds: Mapping[str, Any], shots: Mapping[str, Any]) -> list[str]:
    """The many/medium/few-shot accuracy lines, thresholds and class lists stated; a group without
    classes gets no line."""
    lines = ["shot groups        by training images per class (OLTR convention, not Prior-LT's "
             "class-index thirds)",
             f"  thresholds       many-shot > {thresholds['many']:g}, medium {thresholds['few']:g}-"
             f"{thresholds['many']:g} inclusive, few-shot < {thresholds['few']:g}: "
             f"{thresholds['source']}"]
    for shot in SHOTS:
        g = shots[shot]
        if g["classes"]:
            lines.append(f"  {shot + '-shot':<12} {g['threshold']:<12} {_fmt(g['accuracy'])}   "
                         f"{_class_list(g['classes'])}")
    return lines



# --------------------------------------------------------------------------------------------
# Certified accuracy per class, from a ``certify run`` results table


def check_labels(results: Results, num_classes: int) -> None:
    """Every label of ``results`` must be a class of a ``num_classes``-class model."""
    bad = (results.label < 0) | (results.label >= num_classes)
    if bad.any():
        k = int(np.argmax(bad))
        where = results.path if results.path is not None else "the results"
        raise UserError(f"{where}: idx {int(results.idx[k])} has label {int(results.label[k])}, outside "
                        f"the model's classes 0..{num_classes - 1}; is this the right results file?")


def per_class_certified_accuracy(results: Results, num_classes: int,
                                 radii: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """(C, R) table: for class c, the fraction of that class's rows certified correct with
    radius ≥ r (abstentions and wrong predictions count in the denominator, as in
    :meth:`Results.certified_accuracy`); nan for a class with no rows."""
    check_labels(results, num_classes)
    r = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    label = np.asarray(results.label, dtype=np.int64)
    radius = np.asarray(results.radius, dtype=np.float64)
    good = (np.asarray(results.correct) == 1)[:, None] & (radius[:, None] >= r[None, :])  # (N, R)
    hits = np.zeros((num_classes, r.shape[0]))
    np.add.at(hits, label, good.astype(np.float64))
    rows = np.bincount(label, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows[:, None] > 0, hits / rows[:, None], np.nan)


def default_class_radii(results: Results, norm: str = "l2") -> list[float]:
    """Three radii for the per-class table: 0 and the grid radii of
    :func:`certify.summary.default_radii` about a third and two thirds of the way to the largest
    certified radius. ℓ2's grid ends one step past the largest radius (accuracy 0 there), so that
    last point is never picked; with nothing certified beyond 0 the table has 0 and one step."""
    from certify.summary import default_radii, largest_radius

    grid = default_radii([results], norm)
    rmax = largest_radius([results])
    positive = [r for r in grid if 0 < r <= rmax]
    m = len(positive)
    if m == 0:
        return grid[:2]
    picks = {positive[math.ceil(m / 3) - 1], positive[math.ceil(2 * m / 3) - 1]}
    return [0.0, *sorted(picks)]


def certified_report(results: Results, num_classes: int, radii: Sequence[float], norm: str = "l2",
                     class_counts: Sequence[int] | None = None, many: float | None = None,
                     few: float | None = None) -> dict[str, Any]:
    """Certified accuracy per class (and per shot group when the training counts are known).

    ``{"norm", "radii", "rows", "rows_per_class", "overall": [per radius], "per_class": [[per
    radius] per class]}``, plus ``"shots": {"many": {"threshold", "classes", "accuracy": [per
    radius]}, ...}`` with ``class_counts``; nan for a class with no rows.
    """
    radii = [float(r) for r in radii]
    table = per_class_certified_accuracy(results, num_classes, radii)
    out: dict[str, Any] = {
        "norm": norm, "radii": radii, "rows": len(results),
        "rows_per_class": np.bincount(np.asarray(results.label, dtype=np.int64),
                                      minlength=num_classes).tolist(),
        "overall": results.certified_accuracy(radii).tolist(),
        "per_class": table.tolist(),
    }
    if class_counts is not None:
        groups = shot_groups(class_counts, many, few)
        per_radius = [shot_accuracy(table[:, j], groups) for j in range(len(radii))]
        out["shots"] = {shot: {"threshold": shot_label(groups, shot),
                               "classes": list(groups["classes"][shot]),
                               "accuracy": [acc[shot] for acc in per_radius]} for shot in SHOTS}
    return out


def _radius_head(r: float, norm: str) -> str:
    return f"{'ℓ∞' if norm == 'linf' else 'ℓ2'}={r:.2f}" if abs(round(r, 2) - r) < 1e-12 \
        else f"{'ℓ∞' if norm == 'linf' else 'ℓ2'}={r:.4g}"


def format_certified_report(cert: Mapping[str, Any], classes: Sequence[str] | None = None,
                            class_counts: Sequence[int] | None = None) -> str:
    """The per-class certified-accuracy table as aligned text, then the shot groups' rows."""
    heads = [_radius_head(r, cert["norm"]) for r in cert["radii"]]
    width = max(8, *(len(h) + 1 for h in heads))
    cols = "".join(f"{h:>{width}}" for h in heads)
    source = f" of {cert['results']}" if cert.get("results") else ""
    if cert.get("split"):
        source += f", {cert['split']} split"
    lines = [f"certified accuracy per class (correct with radius ≥ r, among the class's rows; "
             f"{cert['rows']} rows{source})",
             f"  {'class':<16} {'train':>7} {'rows':>6}{cols}"]

    def row(name: str, train: str, rows: str, values: Sequence[float]) -> str:
        return f"  {name:<16} {train:>7} {rows:>6}" + "".join(f"{_fmt(v):>{width}}" for v in values)

    for c, values in enumerate(cert["per_class"]):
        train = str(class_counts[c]) if class_counts is not None and c < len(class_counts) else "-"
        lines.append(row(class_name(c, classes), train, str(cert["rows_per_class"][c]), values))
    lines.append(row("all", "-", str(cert["rows"]), cert["overall"]))
    if cert.get("shots") is not None:
        lines.append("certified accuracy per shot group (mean over the group's classes)")
        for shot in (s for s in SHOTS if cert["shots"][s]["classes"]):  # empty groups: no line
            g = cert["shots"][shot]
            lines.append(f"  {shot + '-shot':<12} {g['threshold']:<12}"
                         + "".join(f"{_fmt(v):>{width}}" for v in g["accuracy"])
                         + f"   {_class_list(g['classes'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# ``certify eval`` as one call: checks, the pass over the split, the report and its files

SHOTS_SKIPPED = "shot groups: skipped (training class counts not recorded in the checkpoint)"


@dataclass
class EvalSpec:
    """Everything ``certify eval`` needs; an output path left None is not written."""

    checkpoint: Path
    split: str = "test"
    k: int = 2
    many: float | None = None  # shot-group thresholds (None: n_max/5 and n_max/25)
    few: float | None = None
    results: Path | None = None  # 'certify run' TSV of this checkpoint: certified accuracy per class
    radii: tuple[float, ...] = ()  # its columns; (): default_class_radii
    diagram: Path | None = None  # reliability diagram (PNG)
    json_out: Path | None = None
    class_plot: Path | None = None  # certified accuracy per class (.png/.pdf); needs ``results``
    batch: int = 1000
    device: torch.device | str = "cpu"
    data_dir: str | None = None


@dataclass
class EvalReport:
    """What :func:`run_evaluation` measured; :func:`format_evaluation` turns it into text."""

    metrics: dict[str, Any]  # :func:`report`'s
    certified: dict[str, Any] | None  # :func:`certified_report`'s with its source, when ``results``
    classes: tuple[str, ...] | None  # class names, when the dataset's match the model
    class_counts: list[int] | None  # training images per class, when the checkpoint records them


def run_evaluation(spec: EvalSpec) -> EvalReport:
    """Measure ``spec.checkpoint`` on its split and write the files ``spec`` asks for.

    Every option and input file is checked before the pass over the data, so a mistake costs
    seconds, not the whole evaluation.
    """
    from certify.checkpoint import load_checkpoint
    from certify.data import dataset_info, load_dataset

    ckpt = load_checkpoint(spec.checkpoint)
    _check_spec(spec, ckpt.num_classes)
    scale = logit_scale(ckpt)
    if scale.value is None and spec.diagram is not None:
        raise UserError(f"--diagram: the reliability diagram needs probabilities, and the logit "
                        f"scale of {spec.checkpoint} is {scale.source}")
    counts = ckpt.training.get("class_counts")
    if counts is not None and len(counts) != ckpt.num_classes:
        raise UserError(f"{spec.checkpoint} records {len(counts)} training class counts for "
                        f"{ckpt.num_classes} classes: a damaged checkpoint")
    certified = _certified_input(spec, ckpt) if spec.results is not None else None
    names = dataset_info(ckpt.dataset).classes
    classes = names if len(names) == ckpt.num_classes else None
    data = load_dataset(ckpt.dataset, spec.split, data_dir=spec.data_dir)
    pred = predict_probabilities(ckpt.build_model(spec.device), data, spec.device, spec.batch,
                                 scale=1.0 if scale.value is None else scale.value)
    metrics = report(pred, spec.k, class_counts=counts, many=spec.many, few=spec.few, scale=scale)
    cert = None
    if certified is not None:
        results, split, radii, norm = certified
        cert = {"results": str(spec.results), "split": split,
                **certified_report(results, ckpt.num_classes, radii, norm, counts, spec.many, spec.few)}
    evaluation = EvalReport(metrics, cert, classes, counts)
    _write_outputs(spec, evaluation, pred)
    return evaluation


def format_evaluation(evaluation: EvalReport) -> str:
    """The report as ``certify eval`` prints it: metrics, shot groups, certified table."""
    parts = [format_report(evaluation.metrics, evaluation.classes)]
    if evaluation.class_counts is None:
        parts.append(SHOTS_SKIPPED)
    if evaluation.certified is not None:
        parts.append(format_certified_report(evaluation.certified, evaluation.classes,
                                             evaluation.class_counts))
    return "\n".join(parts)


def _check_spec(spec: EvalSpec, num_classes: int) -> None:
    """Options that contradict each other or the model, and unwritable outputs."""
    if spec.k >= num_classes:
        raise UserError(f"--k must be below the number of classes ({num_classes}), got {spec.k}")
    for path in (spec.diagram, spec.json_out, spec.class_plot):
        if path is not None:
            check_output_path(path)
    if spec.results is None:
        if spec.class_plot is not None:
            raise UserError("--class-plot draws certified accuracy per class: it needs the "
                            "certification results of this checkpoint, --results TSV")
        if spec.radii:
            raise UserError("--radius sets the columns of the per-class certified accuracy: it needs "
                            "--results TSV")
    if spec.class_plot is not None:
        from certify.plot import plot_format

        plot_format(spec.class_plot)
        check_writable(spec.class_plot)
    many, few = spec.many, spec.few
    if many is not None and few is not None and few > many:
        raise UserError(f"--few ({few:g}) must not exceed --many ({many:g})")
    for name, value in (("--many", many), ("--few", few), *(("--radius", r) for r in spec.radii)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
    if any(r < 0 for r in spec.radii):
        raise UserError(f"--radius must be non-negative, got {min(spec.radii):g}")


def _certified_input(spec: EvalSpec, ckpt: Any) -> tuple[Results, Any, tuple[float, ...], str]:
    """The results table of ``spec.results``, checked against the checkpoint: (results, its
    split, the radii of the table, its norm)."""
    from certify.summary import check_norm

    path = spec.results
    assert path is not None  # the caller checks it
    results = read_results(path)
    sidecar = read_sidecar(path) or {}
    recorded = sidecar.get("checkpoint_sha256")
    if recorded and recorded != ckpt.sha256:
        raise UserError(f"{path} was certified with another checkpoint (its sidecar "
                        f"{sidecar_path(path)} records sha256 {recorded[:12]}…, "
                        f"{spec.checkpoint} is {ckpt.sha256[:12]}…)")
    if len(results) == 0:
        raise UserError(f"{path} has no rows: nothing to report per class")
    check_labels(results, ckpt.num_classes)
    norm = sidecar.get("norm", "l2")
    check_norm(norm)
    radii = tuple(sorted(set(spec.radii))) if spec.radii else tuple(default_class_radii(results, norm))
    return results, sidecar.get("split"), radii, norm


def _write_outputs(spec: EvalSpec, evaluation: EvalReport, pred: Predictions) -> None:
    """The class plot, reliability diagram and JSON that ``spec`` names."""
    cert, counts = evaluation.certified, evaluation.class_counts
    if cert is not None and spec.class_plot is not None:
        from certify.plot import plot_per_class_certified

        plot_per_class_certified([cert["per_class"]], [spec.checkpoint.stem], cert["radii"],
                                 spec.class_plot, class_names=evaluation.classes,
                                 class_counts=counts, norm=cert["norm"],
                                 title=f"{spec.checkpoint.name}: certified accuracy per class")
    if spec.diagram is not None:
        from certify.calibration import reliability_diagram

        confidence, predicted = pred.probs.max(1)
        reliability_diagram(confidence, predicted == pred.labels, spec.diagram,
                            title=spec.checkpoint.stem)
    if spec.json_out is not None:
        extra: dict[str, Any] = {} if counts is not None else {"class_counts": None, "shots": None}
        if cert is not None:
            extra["certified"] = cert
        atomic_write_text(spec.json_out, strict_dumps({"checkpoint": str(spec.checkpoint),
                                                       "split": spec.split, **evaluation.metrics,
                                                       **extra}, indent=2) + "\n")  # NaN → null
