"""Noisy-label and calibration training through the trainer: label-noise views, the label losses
inside the objectives, CALS's per-epoch hook, and the susceptibility probe."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import cli

from certify.errors import UserError
from certify.objectives import make_objective
from certify.training import TrainConfig, train
from certify.training.views import parse_label_noise


def config(data_dir, **changes) -> TrainConfig:
    base = dict(dataset="fashion-mnist", arch="small_cnn", arch_kwargs={"width": 4, "hidden": 16},
                objective="classify", objective_params={}, epochs=2, batch_size=8, lr=0.05,
                data_dir=str(data_dir), seed=5)
    return TrainConfig(**(base | changes))


def quiet(_line):
    pass


def test_label_noise_is_recorded_and_only_touches_training_labels(fake_fmnist, tmp_path):
    ckpt = train(config(fake_fmnist, label_noise="symmetric:0.5", epochs=1), tmp_path / "m.pt",
                 progress=False, log=quiet)
    noise = ckpt.training["label_noise"]
    assert noise["kind"] == "symmetric" and noise["realized_rate"] == 0.5 and len(noise["flipped"]) == 20
    transition = torch.tensor(noise["transition"], dtype=torch.float64)
    torch.testing.assert_close(transition.sum(1), torch.ones(10, dtype=torch.float64))
    assert transition[0, 0] == 0.5 and transition[0, 1] == pytest.approx(0.5 / 9)
    assert {"flipped_fit_noisy", "flipped_fit_clean"} <= set(ckpt.metrics)
    # the same seed flips the same images
    again = train(config(fake_fmnist, label_noise="symmetric:0.5", epochs=1), tmp_path / "n.pt",
                  progress=False, log=quiet)
    assert again.training["label_noise"]["flipped"] == noise["flipped"]


def test_bad_label_noise():
    for text in ("symmetric", "symmetric:1.5", "gaussian:0.2", "symmetric:x"):
        with pytest.raises(UserError, match="^label_noise: "):
            parse_label_noise(text)
    assert parse_label_noise("none") is None and parse_label_noise("asymmetric:0.3") == ("asymmetric", 0.3)


def test_susceptibility_probe_is_logged_and_changes_nothing_else(fake_fmnist, tmp_path):
    plain = train(config(fake_fmnist, val_count=8), tmp_path / "a.pt", progress=False, log=quiet)
    probed = train(config(fake_fmnist, val_count=8, susceptibility=8), tmp_path / "b.pt",
                   progress=False, log=quiet)
    history = probed.training["history"]
    assert "susceptibility_r" in history[0] and "zeta" not in history[0]  # ζ(t) skips epoch 0
    assert history[1]["zeta"] == pytest.approx(history[1]["susceptibility_r"], abs=1e-6)
    for key, value in plain.state_dict.items():  # the probe's step was undone exactly
        assert torch.equal(value, probed.state_dict[key]), key


def test_cals_updates_its_multipliers_and_resumes_exactly(fake_fmnist, tmp_path):
    cfg = config(fake_fmnist, objective_params={"loss": "cals", "cals_margin": 0.1}, val_count=8)
    straight = train(cfg, tmp_path / "a.pt", progress=False, log=quiet)
    lambd = straight.resume_state["objective"]["lambd"]
    assert lambd.shape == (10,) and (lambd > 1e-6).any() and (lambd <= 1e6).all()
    train(config(fake_fmnist, objective_params={"loss": "cals", "cals_margin": 0.1}, val_count=8,
                 epochs=1), tmp_path / "b.pt", progress=False, log=quiet)
    resumed = train(cfg, tmp_path / "b.pt", resume=True, progress=False, log=quiet)
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    with pytest.raises(UserError, match="^val_count: "):
        train(config(fake_fmnist, objective_params={"loss": "cals"}), tmp_path / "c.pt",
              progress=False, log=quiet)


def test_label_losses_inside_the_objectives():
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 5
    y = torch.tensor([0, 1, 2, 3, 0, 1])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    x = torch.zeros(6, 1)
    ce, _ = make_objective("classify").loss(Fixed(), x, y, 0)
    assert ce.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    smooth, _ = make_objective("classify", label_smoothing=0.1).loss(Fixed(), x, y, 0)
    want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(want.item())
    inf, _ = make_objective("classify", loss="alpha", alpha=float("inf")).loss(Fixed(), x, y, 0)
    p_y = logits.softmax(1).gather(1, y[:, None]).mean()
    assert inf.item() == pytest.approx(1 - p_y.item(), abs=1e-6)
    clipped, _ = make_objective("classify", logit_clip=1.0).loss(Fixed(), x, y, 0)
    unit = logits / logits.norm(dim=1, keepdim=True)
    assert clipped.item() == pytest.approx(torch.nn.functional.cross_entropy(unit, y).item(), abs=1e-6)
    with pytest.raises(UserError, match="label_smoothing: applies"):
        make_objective("classify", loss="alpha", label_smoothing=0.1)


def test_cli_flags(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert cli("train", "--objective", "gaussian", "--sigma", "0.25", "--loss", "alpha", "--alpha", "2",
               "--logit-clip", "2", "--label-noise", "asymmetric:0.4", "--arch", "small_cnn",
               "--arch-opt", "width=4", "--arch-opt", "hidden=8", "--epochs", "1", "--batch", "8",
               "--data-dir", fake_fmnist, "--out", out, "-q") == 0
    from certify.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt.training["config"]["objective_params"] == {"sigma": 0.25, "loss": "alpha", "alpha": 2.0,
                                                           "logit_clip": 2.0}
    assert ckpt.training["label_noise"]["kind"] == "asymmetric"
    plain = tmp_path / "plain.pt"
    assert cli("train", "--objective", "classify", "--arch", "small_cnn", "--arch-opt", "width=4",
               "--arch-opt", "hidden=8", "--epochs", "1", "--batch", "8", "--data-dir", fake_fmnist,
               "--out", plain, "-q") == 0
    capsys.readouterr()
    assert cli("run", plain, "--out", tmp_path / "r.tsv", "--data-dir", fake_fmnist) == 2
    assert "trained without a certificate (objective classify)" in capsys.readouterr().err
    # at an explicit σ it is certified as the undefended baseline, noted and recorded
    assert cli("run", plain, "--out", tmp_path / "r.tsv", "--data-dir", fake_fmnist, "--sigma", "0.25",
               "--count", "2", "--n", "64", "--n0", "8", "-q") == 0
    assert "trained without noise (objective classify), not for σ = 0.25" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "r.tsv.json").read_text())
    assert (sidecar["sigma"], sidecar["trained_sigma"], sidecar["method"]) == (0.25, 0.0, "cohen")
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 3
    assert cli("eval", plain, "--data-dir", fake_fmnist, "--json", tmp_path / "e.json") == 0
    assert "average-2 sets" in capsys.readouterr().out
    assert (tmp_path / "e.json").exists()
    assert cli("train", "--objective", "linf_hinge", "--eps-train", "0.1", "--eps-test", "0.1",
               "--loss", "alpha", "--out", tmp_path / "x.pt") == 2
    assert "--loss does not apply to --objective linf_hinge" in capsys.readouterr().err


def test_the_alpha_loss_flag_has_its_own_name_and_the_old_spelling(monkeypatch, tmp_path):
    """--loss-alpha (the α of the α-loss) is distinct from run's --alpha (the failure probability);
    --alpha still reaches it in train."""
    import certify.training

    seen = []

    def record(config, out, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(certify.training, "train", record)
    for flag in ("--loss-alpha", "--alpha"):
        assert cli("train", "--loss", "alpha", flag, "3", "--out", tmp_path / "m.pt") == 0
        assert seen[-1].objective_params["alpha"] == 3.0
