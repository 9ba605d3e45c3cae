"""Issue 14: LDAM's cosine-head init as the reference's, LogitClip's two forms, calibration on the
logits a model is trained to produce (LDAM's s), and strict JSON in every file the toolkit writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_checkpoint
from test_cli import cli

from certify.calibration import classwise_ece, expected_calibration_error
from certify.checkpoint import save_checkpoint
from certify.errors import UserError
from certify.evaluation import EvalSpec, format_evaluation, logit_scale, predict_probabilities, run_evaluation
from certify.jsonutil import finite_or_none, strict_dumps
from certify.losses import clip_logits
from certify.nets import NormedLinear, build_model
from certify.objectives.label_loss import LABEL_LOSS_OPTIONS, LabelLoss
from certify.params import ParamError, by_name
from certify.results import read_sidecar, write_sidecar

# ---------------------------------------------------------------- LDAM's NormedLinear init


def reference_normed_linear_weight(in_features: int, out_features: int) -> torch.Tensor:
    """kaidic/LDAM-DRW models/resnet_cifar.py, NormedLinear.__init__ (weight stored (in, out))."""
    weight = torch.Tensor(in_features, out_features)
    weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    return weight


def reference_normed_linear_forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1).mm(F.normalize(weight, dim=0))


@pytest.mark.parametrize("shape", [(84, 10), (64, 100), (3, 7)])
def test_normed_linear_init_is_the_references(shape):
    in_features, out_features = shape
    torch.manual_seed(11)
    reference = reference_normed_linear_weight(in_features, out_features)
    torch.manual_seed(11)
    head = NormedLinear(in_features, out_features)
    assert head.weight.shape == (out_features, in_features)  # stored as nn.Linear's, transposed
    assert torch.equal(head.weight.detach().t(), reference)
    norms = torch.linalg.vector_norm(head.weight.detach(), dim=1)  # one per class
    torch.testing.assert_close(norms, torch.ones(out_features), atol=1e-6, rtol=0)
    x = torch.randn(5, in_features)
    torch.testing.assert_close(head(x), reference_normed_linear_forward(x, reference))
    assert head(x).abs().max() <= 1 + 1e-6  # cosines


def test_cosine_head_of_a_built_model_and_its_reset_have_unit_class_vectors():
    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28), mean=(0.5,), std=(0.25,),
                        cosine_head=True)
    heads = [m for m in model.modules() if isinstance(m, NormedLinear)]
    assert len(heads) == 1
    for _ in range(2):
        norms = torch.linalg.vector_norm(heads[0].weight.detach(), dim=1)
        torch.testing.assert_close(norms, torch.ones(10), atol=1e-6, rtol=0)
        with torch.no_grad():
            heads[0].weight.mul_(7)
        heads[0].reset_parameters()  # LADC's re-initialization


# ---------------------------------------------------------------- LogitClip: paper and official


def paper_clip(z: torch.Tensor, tau: float, p: float) -> torch.Tensor:
    """The paper: clip_τ(z) = τ·z/‖z‖_p if ‖z‖_p ≥ τ, else z."""
    norms = torch.linalg.vector_norm(z, ord=p, dim=-1, keepdim=True)
    return torch.where(norms >= tau, tau * z / norms, z)


def official_clip(logits: torch.Tensor, temp: float, lp: float) -> torch.Tensor:
    """hongxin001/LogitClip algorithms/clip.py, LogitClipping.train_batch, as written there."""
    delta = 1 / temp
    norms = torch.norm(logits, p=lp, dim=-1, keepdim=True) + 1e-7
    logits_norm = torch.div(logits, norms) * delta
    clip = (norms > temp).expand(-1, logits.shape[-1])
    return torch.where(clip, logits_norm, logits)


def clip_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.randn(200, 10, generator=g) * torch.logspace(-2, 1.5, 200)[:, None]


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_logit_clip_forms_match_reimplementations(tau, p):
    z = clip_inputs()
    norms = torch.linalg.vector_norm(z, ord=p, dim=1)
    assert (norms > tau).any() and (norms < tau).any()
    torch.testing.assert_close(clip_logits(z, tau, p), paper_clip(z, tau, p), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(clip_logits(z, tau, p, form="paper"), clip_logits(z, tau, p), rtol=0, atol=0)
    assert torch.equal(clip_logits(z, tau, p, form="official"), official_clip(z, tau, p))
    official = clip_logits(z, tau, p, form="official")
    outside = norms + 1e-7 > tau
    torch.testing.assert_close(torch.linalg.vector_norm(official[outside], ord=p, dim=1),
                               torch.full((int(outside.sum()),), 1 / tau), rtol=1e-5, atol=0)
    if tau == 1.0:  # the only τ where the two forms agree
        torch.testing.assert_close(official, clip_logits(z, tau, p), rtol=1e-5, atol=1e-6)


def test_logit_clip_form_option_in_the_label_loss():
    option = by_name(LABEL_LOSS_OPTIONS)["logit_clip_form"]
    assert (option.default, option.choices, option.cli_flag) == ("paper", ("paper", "official"),
                                                                 "--logit-clip-form")
    z = clip_inputs()[:32]
    y = torch.arange(32) % 10
    for form, reimplementation in (("paper", paper_clip), ("official", official_clip)):
        kwargs = {} if form == "paper" else {"logit_clip_form": form}
        loss = LabelLoss(logit_clip=1.5, **kwargs)
        want = F.cross_entropy(reimplementation(z, 1.5, 2.0), y)
        torch.testing.assert_close(loss(z, y), want, rtol=1e-6, atol=1e-7)
        recorded = loss.params()
        assert recorded["logit_clip"] == 1.5
        assert recorded.get("logit_clip_form") == (None if form == "paper" else "official")
    with pytest.raises(ParamError, match="logit_clip_form: applies with logit_clip only"):
        LabelLoss(logit_clip_form="official")
    with pytest.raises(ParamError, match="logit_clip_form: must be one of paper, official"):
        LabelLoss(logit_clip=1.0, logit_clip_form="code")


def test_train_cli_records_the_official_form(fake_fmnist, tmp_path):
    from certify.checkpoint import load_checkpoint

    out = tmp_path / "m.pt"
    assert cli("train", "--objective", "classify", "--logit-clip", "1.5", "--logit-clip-form", "official",
               "--arch", "small_cnn", "--arch-opt", "width=4", "--arch-opt", "hidden=8", "--epochs", "1",
               "--batch", "8", "--data-dir", fake_fmnist, "--out", out, "-q") == 0
    params = load_checkpoint(out).training["config"]["objective_params"]
    assert params == {"logit_clip": 1.5, "logit_clip_form": "official"}


# ---------------------------------------------------------------- calibration at the trained scale


def cosine_checkpoint(record: dict | None, **training):
    ckpt = make_checkpoint(width=4, hidden=16, cosine_head=True)
    if record is not None:
        ckpt.training["config"] = {"objective": "classify", "objective_params": record}
    ckpt.training |= training
    return ckpt


def test_logit_scale_comes_from_the_training_record():
    default_s = by_name(LABEL_LOSS_OPTIONS)["ldam_s"].default
    assert default_s == 30
    assert logit_scale(cosine_checkpoint({"loss": "ldam", "reweight": "drw"})).value == 30
    assert logit_scale(cosine_checkpoint({"loss": "ldam", "ldam_s": 10.0})).value == 10
    assert logit_scale(cosine_checkpoint({"loss": "ce"})).value == 1  # trained on raw cosines
    assert logit_scale(cosine_checkpoint({})).value == 1
    assert logit_scale(cosine_checkpoint(None)).value is None  # a cosine head, no record
    assert logit_scale(cosine_checkpoint(None, ladc={"cosine_scale": 30.0})).value == 30
    assert logit_scale(make_checkpoint(width=4, hidden=16)).value == 1  # plain head, no record
    assert "the s of loss ldam, its default" in logit_scale(cosine_checkpoint({"loss": "ldam"})).source


def test_eval_uses_the_ldam_scale(fake_fmnist, tmp_path):
    from certify.data import load_dataset

    ckpt = cosine_checkpoint({"loss": "ldam"})
    path = save_checkpoint(ckpt, tmp_path / "ldam.pt")
    evaluation = run_evaluation(EvalSpec(checkpoint=path, json_out=tmp_path / "e.json",
                                         diagram=tmp_path / "d.png", data_dir=str(fake_fmnist)))
    data = load_dataset("fashion-mnist", "test", data_dir=str(fake_fmnist))
    model = ckpt.build_model("cpu")
    scaled = predict_probabilities(model, data, "cpu", scale=30.0)
    raw = predict_probabilities(model, data, "cpu")
    metrics = evaluation.metrics
    assert metrics["logit_scale"] == 30
    assert metrics["ece"] == pytest.approx(expected_calibration_error(scaled.probs, scaled.labels))
    assert metrics["classwise_ece"] == pytest.approx(classwise_ece(scaled.probs, scaled.labels))
    assert metrics["ece"] != pytest.approx(expected_calibration_error(raw.probs, raw.labels))
    assert metrics["accuracy"] == (raw.probs.argmax(1) == raw.labels).float().mean().item()
    text = format_evaluation(evaluation)
    assert "logit scale        30: probabilities = softmax(30·logits) (the s of loss ldam, its default)" in text
    assert json.loads((tmp_path / "e.json").read_text())["logit_scale"] == 30


def test_eval_of_a_cosine_head_without_record_leaves_calibration_undefined(fake_fmnist, tmp_path,
                                                                           capsys):
    path = save_checkpoint(cosine_checkpoint(None), tmp_path / "bare.pt")
    out = tmp_path / "e.json"
    assert cli("eval", path, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out) == 0
    lines = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["ECE (15 bins)"].endswith("undefined (the logit scale is unknown)")
    assert lines["classwise ECE"].endswith("undefined (the logit scale is unknown)")
    assert lines["average-2 sets"].endswith("undefined (the logit scale is unknown)")
    assert lines["logit scale"].startswith("logit scale        unknown: a cosine head")
    metrics = json.loads(out.read_text())
    assert metrics["ece"] is None and metrics["classwise_ece"] is None and metrics["average_k"] is None
    assert metrics["logit_scale"] is None and metrics["top_k"]["set_size"] == 2
    with pytest.raises(UserError, match="--diagram: the reliability diagram needs probabilities"):
        run_evaluation(EvalSpec(checkpoint=path, diagram=tmp_path / "d.png", data_dir=str(fake_fmnist)))


# ---------------------------------------------------------------- strict JSON


def no_constants(name: str):
    raise ValueError(f"not JSON: {name}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=no_constants)


def test_eval_json_is_strict_on_a_balanced_model(fake_fmnist, tmp_path, capsys):
    ckpt = make_checkpoint(width=4, hidden=16)
    ckpt.training["class_counts"] = [4] * 10  # balanced: every class many-shot, two empty groups
    path = save_checkpoint(ckpt, tmp_path / "balanced.pt")
    out = tmp_path / "e.json"
    assert cli("eval", path, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out) == 0
    text = capsys.readouterr().out
    metrics = strict_loads(out.read_text())  # no NaN / Infinity anywhere
    assert metrics["shots"]["medium"] == {"threshold": "0.16-0.8", "classes": [], "accuracy": None}
    assert metrics["shots"]["few"]["accuracy"] is None and metrics["shots"]["many"]["accuracy"] is not None
    shot_lines = [line.split()[0] for line in text.splitlines() if "-shot" in line.split()[0]]
    assert shot_lines == ["many-shot"]  # empty groups get no line
    assert "nan" not in text.lower().replace("n/a", "")


def test_every_json_writer_is_strict(tmp_path):
    data = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": {"d": (math.nan, 2)}, "e": "x"}
    assert finite_or_none(data) == {"a": None, "b": [1.0, None, None], "c": {"d": [None, 2]}, "e": "x"}
    assert strict_loads(strict_dumps(data)) == finite_or_none(data)
    import numpy as np

    assert strict_loads(strict_dumps({"n": np.float32("nan"), "v": np.array([1.0, np.nan])})) == {
        "n": None, "v": [1.0, None]}
    tsv = tmp_path / "r.tsv"
    write_sidecar(tsv, {"x": math.nan, "radii": np.array([0.5, np.inf])})
    assert strict_loads(Path(str(tsv) + ".json").read_text()) == {"radii": [0.5, None], "x": None}
    assert read_sidecar(tsv) == {"radii": [0.5, None], "x": None}
    from certify.training.loop import _append_line

    log = tmp_path / "l.jsonl"
    _append_line(log, {"epoch": 1, "loss": math.nan, "cdb_difficulty": [0.5, math.nan]})
    assert strict_loads(log.read_text()) == {"epoch": 1, "loss": None, "cdb_difficulty": [0.5, None]}
