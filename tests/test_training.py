"""The training loop: a checkpoint per epoch, and a resumed run that continues exactly."""

from __future__ import annotations

import pytest
import torch

from certify.checkpoint import load_checkpoint
from certify.errors import UserError
from certify.objectives import GaussianAugmentation, make_objective
from certify.training import TrainConfig, train


def config(data_dir, **changes) -> TrainConfig:
    base = dict(dataset="fashion-mnist", arch="small_cnn", arch_kwargs={"width": 4, "hidden": 16},
                objective_params={"sigma": 0.5}, epochs=2, batch_size=8, lr=0.05, lr_step_size=1,
                lr_gamma=0.5, data_dir=str(data_dir), seed=4)
    return TrainConfig(**(base | changes))


def quiet(_line):
    pass


def test_resumed_run_equals_uninterrupted_run(fake_fmnist, tmp_path):
    straight = train(config(fake_fmnist), tmp_path / "a.pt", progress=False, log=quiet)
    first = train(config(fake_fmnist, epochs=1), tmp_path / "b.pt", progress=False, log=quiet)
    assert first.epoch == 1
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = train(config(fake_fmnist), tmp_path / "b.pt", resume=True, progress=False, log=quiet)
    assert resumed.epoch == straight.epoch == 2
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    assert [h["lr"] for h in resumed.training["history"]] == [0.05, 0.025]  # the schedule continued


def test_checkpoint_records_what_certify_run_needs(fake_fmnist, tmp_path):
    train(config(fake_fmnist, epochs=1), tmp_path / "m.pt", command="certify train ...",
          progress=False, log=quiet)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.certification == {"kind": "smoothing", "sigma": 0.5}
    assert (ckpt.arch, ckpt.dataset, ckpt.command) == ("small_cnn", "fashion-mnist", "certify train ...")
    assert ckpt.mean == (0.2860,) and ckpt.std == (0.3530,)
    assert ckpt.training["config"]["lr"] == 0.05
    assert {"train_loss", "test_acc", "test_noisy_acc", "images_per_s"} <= set(ckpt.metrics)
    assert ckpt.metrics["images"] == 40


def test_resume_with_other_settings_is_refused(fake_fmnist, tmp_path):
    train(config(fake_fmnist, epochs=1), tmp_path / "m.pt", progress=False, log=quiet)
    with pytest.raises(UserError, match="lr=0.05 not 0.1"):
        train(config(fake_fmnist, lr=0.1), tmp_path / "m.pt", resume=True, progress=False, log=quiet)


def test_gaussian_objective_trains_on_noisy_inputs():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(len(x), 3, requires_grad=True)

    x = torch.full((4000, 1, 2, 2), 0.5)
    loss, stats = GaussianAugmentation(sigma=0.3).loss(Spy(), x, torch.zeros(4000, dtype=torch.long), 0)
    noise = seen[0] - x
    assert noise.std().item() == pytest.approx(0.3, rel=0.03)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item())  # uniform logits
    assert make_objective("gaussian", sigma=0.3).certification() == {"kind": "smoothing", "sigma": 0.3}
    with pytest.raises(UserError, match="--sigma must be positive"):
        make_objective("gaussian", sigma=0.0)
    with pytest.raises(UserError, match="unknown objective"):
        make_objective("no-such-objective")
