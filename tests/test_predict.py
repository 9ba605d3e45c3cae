"""``certify predict`` / ``--method predict``: the reference's predict.py statistics and its guarantee."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest
from test_cli import cli, rows_without_time
from torch import nn

from certify.checkpoint import load_checkpoint
from certify.data import load_dataset
from certify.methods import RunContext, example_generator
from certify.results import read_results, read_sidecar
from certify.smoothing.core import Smooth


def predict_args(ckpt, out, data, *extra):
    return [ckpt, "--out", out, "--data-dir", data, "--n", "200", "--batch", "64", "--seed", "3",
            "--quiet", *extra]


def test_rows_follow_the_two_sided_binomial_test_of_the_reference(small_checkpoint, fake_fmnist, tmp_path):
    out = tmp_path / "p.tsv"
    assert cli("predict", *predict_args(small_checkpoint, out, fake_fmnist, "--alpha", "1e-10")) == 0
    rows = read_results(out)
    assert len(rows) == 12 and set(rows.radius.tolist()) == {0.0}
    model = load_checkpoint(small_checkpoint).build_model()
    smooth = Smooth(model, 10, 0.25)
    data = load_dataset("fashion-mnist", "test", data_dir=fake_fmnist)
    context = RunContext(batch_size=64, seed=3)
    decided = 0
    for i, idx in enumerate(rows.idx.tolist()):
        x, label = data[idx]
        top, c1, c2 = smooth.top_two_votes(x, 200, 64, example_generator(context, idx))
        pvalue = binomtest(c1, c1 + c2, p=0.5).pvalue  # scipy.stats.binom_test of the reference
        assert float(rows.columns["pvalue"][i]) == pytest.approx(pvalue, rel=1e-3)
        assert rows.predict[i] == (-1 if pvalue > 1e-10 else top)
        assert rows.correct[i] == int(rows.predict[i] == label)
        decided += pvalue <= 1e-10
    assert 0 < decided < 12  # both branches: the random model decides some images, not all
    # 'certify run --method predict' is the same command
    again = tmp_path / "again.tsv"
    assert cli("run", *predict_args(small_checkpoint, again, fake_fmnist, "--alpha", "1e-10",
                                    "--method", "predict")) == 0
    assert rows_without_time(again) == rows_without_time(out)
    sidecar = read_sidecar(out)
    assert (sidecar["method"], sidecar["n"], sidecar["alpha"], sidecar["sigma"]) == ("predict", 200, 1e-10, 0.25)


class NearTie(nn.Module):
    """Class 0 when the first noisy pixel exceeds t, else class 1: P(class 0) = P(ε > t) for x = 0."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, 0]
        return torch.stack([first - self.threshold, self.threshold - first], dim=1)


def test_a_wrong_class_is_returned_with_probability_at_most_alpha():
    """g(x) = 0 with P(class 0) = 0.55: over 400 calls at α = 0.05 the runner-up comes back at most
    a binomial-tail margin above 5% of the time; an inverted test or a swapped class would return
    class 1 about as often as class 0."""
    sigma = 1.0
    smooth = Smooth(NearTie(-0.12566 * sigma), 2, sigma)  # P(N(0,1) > -0.12566) = 0.55
    x = torch.zeros(1, 2, 2)
    generator = torch.Generator().manual_seed(0)
    answers = [smooth.predict(x, 200, 0.05, 200, generator) for _ in range(400)]
    wrong, right = answers.count(1), answers.count(0)
    assert wrong <= 30  # P(Binomial(400, 0.05) > 30) < 0.01, and the true rate is far below α
    assert right > 50  # at p = 0.55 and N = 200 the test often decides (power ≈ 0.3)


def test_too_few_samples_are_refused(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "p.tsv"
    # 10 votes of 10: p = 2·½¹⁰ = 0.00195 > 0.001, so every image would abstain; 11 is enough
    assert cli("predict", *predict_args(small_checkpoint, out, fake_fmnist, "--n", "10")) == 2
    assert "--n: 10 samples predict no image at alpha 0.001" in capsys.readouterr().err
    assert not out.exists()
    assert cli("predict", *predict_args(small_checkpoint, out, fake_fmnist, "--n", "11", "--count", "1")) == 0
    assert cli("predict", *predict_args(small_checkpoint, out, fake_fmnist, "--n0", "5", "--force")) == 2
    assert "No such option '--n0'" in capsys.readouterr().err
