"""Long-tailed training through the trainer and the CLI: the view, the losses, weights, samplers,
UniMix and ABSGD inside real runs, resume exactness, and the errors a user meets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datafactory import write_idx_dataset
from test_cli import cli

from certify.checkpoint import load_checkpoint
from certify.data.long_tail import long_tail_counts
from certify.errors import UserError
from certify.nets.cosine import NormedLinear
from certify.training import TrainConfig, train
from certify.training.views import checkpoint_training_data, training_targets


@pytest.fixture
def lt_fmnist(tmp_path: Path) -> Path:
    """A Fashion-MNIST-format directory with 40 training images per class and 20 test images."""
    root = tmp_path / "fmnist-lt"
    write_idx_dataset(root, n_train=400, n_test=20)
    return root


def config(data_dir, **changes) -> TrainConfig:
    base = dict(dataset="fashion-mnist", arch="small_cnn", arch_kwargs={"width": 4, "hidden": 16},
                objective="classify", objective_params={}, epochs=2, batch_size=16, lr=0.05,
                data_dir=str(data_dir), seed=3, imbalance=10.0, balanced_val=4)
    return TrainConfig(**(base | changes))


def quiet(_line):
    pass


def test_the_view_is_recorded_and_the_test_split_stays_balanced(lt_fmnist, tmp_path, capsys):
    ckpt = train(config(lt_fmnist, epochs=1), tmp_path / "m.pt", progress=False, log=quiet)
    assert cli("info", tmp_path / "m.pt") == 0
    shown = capsys.readouterr().out
    assert "long-tailed view  ρ=10 (exp), 4 per class held out, seed 0" in shown
    assert "training images   36 27 21 16 12 10 7 6 4 3 (per class)" in shown
    expected = long_tail_counts(36, 10, 10)
    assert ckpt.training["class_counts"] == expected
    assert ckpt.training["long_tail"] == {"imbalance": 10.0, "profile": "exp", "seed": 0,
                                          "balanced_val": 4, "counts": expected}
    assert ckpt.metrics["images"] == sum(expected) and "test_balanced_acc" in ckpt.metrics
    data = checkpoint_training_data(ckpt, str(lt_fmnist))  # what post-hoc steps refit on
    assert torch.bincount(training_targets(data), minlength=10).tolist() == expected
    assert len(data.validation) == 40


def test_ldam_trains_a_cosine_head_that_reloads(lt_fmnist, tmp_path):
    ckpt = train(config(lt_fmnist, epochs=1, objective_params={"loss": "ldam", "reweight": "drw",
                                                               "drw_epoch": 0}),
                 tmp_path / "m.pt", progress=False, log=quiet)
    assert ckpt.arch_kwargs == {"width": 4, "hidden": 16, "cosine_head": True}
    model = load_checkpoint(tmp_path / "m.pt").build_model()
    assert isinstance(model[1].classifier[-1], NormedLinear)
    assert ckpt.certification == {"kind": "none"}


def test_every_state_resumes_exactly(lt_fmnist, tmp_path):
    """CDB-W's and CDB-S's difficulty, ABSGD's normalizer and UniMix's draws survive a resume."""
    params = {"loss": "bayias", "reweight": "cdb", "unimix": True}
    changes = dict(objective_params=params, sampler="cdb", optimizer="absgd", absgd_lambda=2.0,
                   absgd_init_lambda=200.0, absgd_lambda_epoch=1, epochs=3)
    straight = train(config(lt_fmnist, **changes), tmp_path / "a.pt", progress=False, log=quiet)
    train(config(lt_fmnist, **(changes | {"epochs": 2})), tmp_path / "b.pt", progress=False, log=quiet)
    resumed = train(config(lt_fmnist, **changes), tmp_path / "b.pt", resume=True, progress=False, log=quiet)
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    state = straight.resume_state
    assert state["objective"]["absgd"]["log_u"] is not None  # the second stage ran
    assert len(state["sampling"]["difficulty"]) == 10
    assert state["objective"]["reweighting"]["difficulty"] == state["sampling"]["difficulty"]
    last = straight.training["history"][-1]  # the log shows what steers the next epoch
    assert last["sampler_difficulty"] == [round(d, 4) for d in state["sampling"]["difficulty"]]
    assert last["cdb_difficulty"] == last["sampler_difficulty"]


def test_drw_changes_training_only_from_its_epoch(lt_fmnist, tmp_path):
    plain = train(config(lt_fmnist, epochs=2), tmp_path / "a.pt", progress=False, log=quiet)
    late = train(config(lt_fmnist, epochs=2, objective_params={"reweight": "drw", "drw_epoch": 2}),
                 tmp_path / "b.pt", progress=False, log=quiet)
    early = train(config(lt_fmnist, epochs=2, objective_params={"reweight": "drw", "drw_epoch": 1}),
                  tmp_path / "c.pt", progress=False, log=quiet)
    same = all(torch.equal(v, late.state_dict[k]) for k, v in plain.state_dict.items())
    differs = any(not torch.equal(v, early.state_dict[k]) for k, v in plain.state_dict.items())
    assert same and differs


def test_gaussian_and_smoothmix_compose_with_the_long_tailed_losses(lt_fmnist, tmp_path):
    ckpt = train(config(lt_fmnist, epochs=1, objective="gaussian",
                        objective_params={"sigma": 0.25, "loss": "vs", "unimix": True}),
                 tmp_path / "m.pt", progress=False, log=quiet)
    assert ckpt.certification == {"kind": "smoothing", "sigma": 0.25}
    assert ckpt.training["config"]["objective_params"]["loss"] == "vs"
    mixed = train(config(lt_fmnist, epochs=1, objective="smoothmix", optimizer="absgd",
                         absgd_init_lambda=1.0, objective_params={
                             "sigma": 0.25, "num_steps": 2, "loss": "ldam", "reweight": "cb"}),
                  tmp_path / "s.pt", progress=False, log=quiet)
    assert mixed.arch_kwargs["cosine_head"] is True
    assert mixed.resume_state["objective"]["absgd"]["log_u"] is not None


@pytest.mark.parametrize("changes, message", [
    ({"objective_params": {"reweight": "cdb"}, "balanced_val": 0}, "^balanced_val: "),
    ({"sampler": "cdb", "balanced_val": 0}, "^balanced_val: "),
    ({"val_count": 8}, "^val_count: .*balanced_val N"),
    ({"objective_params": {"loss": "cals"}, "balanced_val": 0}, "^balanced_val: .* validation split"),
    ({"train_count": 50}, "^train_count: "),
    ({"imbalance": 1000.0}, "no training image"),
    ({"objective": "linf_mixture", "objective_params": {"eps_train": 0.1, "eps_test": 0.1},
      "optimizer": "absgd"}, "absgd"),
    ({"objective": "smoothmix", "objective_params": {"sigma": 0.25, "unimix": True}}, "^unimix: "),
    ({"optimizer": "absgd", "absgd_lambda": 0.0}, "non-zero"),
])
def test_mistakes_fail_before_training(lt_fmnist, tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        train(config(lt_fmnist, **changes), tmp_path / "m.pt", progress=False, log=quiet)
    assert not (tmp_path / "m.pt").exists()


def test_cli_trains_ldam_drw_and_rejects_bad_flags(lt_fmnist, tmp_path, capsys):
    common = ["train", "--dataset", "fashion-mnist", "--arch", "small_cnn", "--arch-opt", "width=4",
              "--arch-opt", "hidden=16", "--data-dir", lt_fmnist, "--epochs", "1", "--batch", "16",
              "--imbalance", "10", "--quiet"]
    assert cli(*common, "--objective", "classify", "--loss", "ldam", "--reweight", "drw",
               "--drw-epoch", "0", "--out", tmp_path / "m.pt") == 0
    recorded = load_checkpoint(tmp_path / "m.pt").training["config"]
    assert recorded["imbalance"] == 10 and recorded["objective_params"]["reweight"] == "drw"
    capsys.readouterr()
    assert cli(*common, "--objective", "classify", "--unimix", "--unimix-alpha", "1",
               "--out", tmp_path / "u.pt") == 2
    assert cli(*common, "--objective", "linf_mixture", "--vs-gamma", "0.2", "--out", tmp_path / "s.pt") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)
    assert "--vs-gamma does not apply to --objective linf_mixture" in err[1]


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_the_view_works_on_the_other_datasets(tmp_path, dataset):
    from datafactory import write_cifar10_dataset

    from certify.data import load_dataset
    from certify.training.views import prepare_training_data

    root = tmp_path / dataset
    if dataset == "cifar10":
        write_cifar10_dataset(root, n_per_batch=40)  # 200 images: 20 per class
    else:
        write_idx_dataset(root, n_train=200, n_test=10)
    split = load_dataset(dataset, "train", data_dir=str(root), augment=True)
    data = prepare_training_data(split, dataset, 10, "none", 0, None, 0, imbalance=10.0, balanced_val=2)
    assert data.class_counts == long_tail_counts(18, 10, 10)
    assert torch.bincount(training_targets(data), minlength=10).tolist() == data.class_counts
    assert torch.bincount(torch.tensor([split.targets[i] for i in data.validation.indices]),
                          minlength=10).tolist() == [2] * 10
    # CDB measures difficulty on the images as they are, not on random crops and flips
    first = data.validation.indices[0]
    assert torch.equal(data.validation[0][0], split.data[first].float() / 255)
    assert (split.transform is not None) == (dataset == "cifar10")
