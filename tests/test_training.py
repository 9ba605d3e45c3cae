"""The training loop: a checkpoint per epoch, and a resumed run that continues exactly."""

from __future__ import annotations

import pytest
import torch

from certify.checkpoint import load_checkpoint
from certify.errors import UserError
from certify.objectives import GaussianAugmentation, make_objective
from certify.params import ParamError
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
    with pytest.raises(ParamError, match=r"^sigma: must be in \(0, ∞\), got 0.0") as err:
        make_objective("gaussian", sigma=0.0)
    assert err.value.param == "sigma"  # the library names the parameter; the CLI its flag
    with pytest.raises(UserError, match="unknown objective"):
        make_objective("no-such-objective")


# --- per-epoch JSON-lines log, bf16 / channels_last, recipes -------------------------------------

import json  # noqa: E402

from certify.cli import main  # noqa: E402
from certify.cli.train import available_recipes, load_recipe  # noqa: E402
from certify.training import loop  # noqa: E402


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_log_has_one_line_per_epoch_and_appends_on_resume(fake_fmnist, tmp_path):
    log_path = tmp_path / "m.jsonl"
    train(config(fake_fmnist, epochs=1), tmp_path / "m.pt", progress=False, log=quiet, log_path=log_path)
    (first,) = read_jsonl(log_path)
    assert {"epoch", "lr", "train_loss", "train_ce", "train_noisy_acc", "test_acc", "test_noisy_acc",
            "images_per_s", "seconds"} <= set(first)
    assert first["epoch"] == 1 and first["lr"] == 0.05 and 0 <= first["train_noisy_acc"] <= 1
    assert first["train_ce"] == first["train_loss"]  # Gaussian's only loss term is the whole loss

    ckpt = train(config(fake_fmnist), tmp_path / "m.pt", resume=True, progress=False, log=quiet,
                 log_path=log_path)
    records = read_jsonl(log_path)
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first
    assert records == ckpt.training["history"]


def test_resume_drops_log_lines_of_epochs_the_checkpoint_lacks(fake_fmnist, tmp_path):
    log_path = tmp_path / "m.jsonl"
    train(config(fake_fmnist, epochs=1), tmp_path / "m.pt", progress=False, log=quiet, log_path=log_path)
    with open(log_path, "a") as f:  # as if the run died between writing epoch 2's line and checkpoint
        f.write(json.dumps({"epoch": 2, "train_loss": 9.0}) + "\n")
    train(config(fake_fmnist), tmp_path / "m.pt", resume=True, progress=False, log=quiet, log_path=log_path)
    records = read_jsonl(log_path)
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["train_loss"] != 9.0


def test_fresh_run_refuses_to_append_to_an_old_log(fake_fmnist, tmp_path):
    log_path = tmp_path / "m.jsonl"
    log_path.write_text('{"epoch": 1}\n')
    with pytest.raises(UserError, match="already holds epochs of another run"):
        train(config(fake_fmnist, epochs=1), tmp_path / "m.pt", progress=False, log=quiet,
              log_path=log_path)


def test_epoch_averages_weight_chunks_and_turn_correct_into_accuracy():
    sums = {"loss": 0.0, "images": 0, "correct": 0}
    loop._accumulate(sums, 2.0, {"ce": 2.0, "kl": torch.tensor(1.0), "correct": 3, "note": "x"}, 6)
    loop._accumulate(sums, 1.0, {"ce": 1.0, "kl": 0.0, "correct": 1, "flag": True}, 2)
    means = loop._averages(sums)
    assert means == {"train_loss": 1.75, "train_ce": 1.75, "train_kl": 0.75, "train_noisy_acc": 0.5,
                     "images": 8}


def cli(*args) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code


def test_bf16_autocast_and_channels_last_train_on_cpu(fake_fmnist, tmp_path):
    out = tmp_path / "m.pt"
    assert cli("train", "--arch", "small_cnn", "--arch-opt", "width=4", "--arch-opt", "hidden=16",
               "--epochs", "1", "--batch", "8", "--train-count", "16", "--eval-count", "12",
               "--amp", "bf16", "--channels-last", "--device", "cpu", "--data-dir", fake_fmnist,
               "--quiet", "--out", out) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.training["config"]["amp"] == "bf16" and ckpt.training["config"]["channels_last"] is True
    assert all(t.is_contiguous() for t in ckpt.state_dict.values())  # stored in the standard layout
    model = ckpt.build_model()  # the stored weights load into the recorded architecture
    assert model.state_dict().keys() == ckpt.state_dict.keys()
    assert all(torch.equal(v, ckpt.state_dict[k]) for k, v in model.state_dict().items())
    assert [r["epoch"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1]  # default --log: OUT.jsonl
    with pytest.raises(ParamError, match="amp: must be one of off, bf16"):
        config(fake_fmnist, amp="fp16").validate()


def test_every_recipe_loads_and_names_its_source():
    names = available_recipes()
    assert {"fmnist-gaussian-s0.5-short", "fmnist-smoothmix-s0.5-short", "fmnist-gaussian-s0.25-short",
            "fmnist-smoothmix-s0.25-short", "cifar10-smoothmix-s0.25", "cifar10-gaussian-s1.0",
            "mnist-smoothmix-s1.0", "mnist-gaussian-s0.5"} <= set(names)
    fields = set(TrainConfig.option_names())
    for name in names:
        recipe = load_recipe(name)
        assert recipe.description and recipe.source, name
        assert set(recipe.config) <= fields, name
        config = TrainConfig(**recipe.config)
        config.validate()
        # every objective argument is one the objective takes (building it checks the values)
        make_objective(config.objective, **recipe.objective)
        if config.arch.startswith("linf_"):
            assert {"eps_train", "eps_test"} <= set(recipe.objective), name
        elif config.objective != "classify":  # a smoothing recipe names its σ
            assert "sigma" in recipe.objective, name
    cifar = load_recipe("cifar10-smoothmix-s0.5")
    assert (cifar.config["epochs"], cifar.config["lr_step_size"]) == (150, 50)
    assert (cifar.config["arch"], cifar.config["batch_size"]) == ("cifar_resnet110", 256)
    assert cifar.objective == {"sigma": 0.5, "num_noise_vec": 2, "num_steps": 4, "step_size": 1.0,
                               "eta": 5.0, "mix_step": 1, "warmup": 10}
    assert load_recipe("mnist-smoothmix-s1.0").objective["num_steps"] == 8


@pytest.fixture
def captured(monkeypatch):
    """Replace the training run by a recorder of the config that the CLI built."""
    import certify.training

    seen = {}

    def fake_train(config, out, **kwargs):
        seen.update(config=config, log_path=kwargs["log_path"])
        raise SystemExit(0)

    monkeypatch.setattr(certify.training, "train", fake_train)
    return seen


def test_explicit_flag_beats_recipe_beats_default(captured, tmp_path):
    assert cli("train", "--recipe", "fmnist-smoothmix-s0.5-short", "--epochs", "1", "--num-steps", "3",
               "--device", "cpu", "--out", tmp_path / "m.pt", "--log", tmp_path / "x.jsonl") == 0
    c = captured["config"]
    assert c.epochs == 1 and c.objective_params["num_steps"] == 3  # typed
    assert (c.dataset, c.arch, c.objective, c.lr, c.lr_step_size, c.batch_size) == (
        "fashion-mnist", "lenet", "smoothmix", 0.05, 2, 256)  # from the recipe
    assert c.objective_params == {"sigma": 0.5, "num_noise_vec": 2, "num_steps": 3, "step_size": 2.0,
                                  "eta": 1.0, "mix_step": 1, "warmup": 2}  # unset: SmoothMix's default
    assert c.momentum == 0.9 and c.amp == "off" and captured["log_path"] == tmp_path / "x.jsonl"

    assert cli("train", "--recipe", "fmnist-smoothmix-s0.5-short", "--objective", "gaussian",
               "--sigma", "0.25", "--device", "cpu", "--out", tmp_path / "m.pt") == 0
    assert captured["config"].objective_params == {"sigma": 0.25}  # SmoothMix settings do not leak
    assert captured["log_path"] == tmp_path / "m.jsonl"


def test_smoothmix_flags_need_the_smoothmix_objective(captured, tmp_path, capsys):
    assert cli("train", "--num-steps", "3", "--out", tmp_path / "m.pt") == 2
    assert "--num-steps does not apply to --objective gaussian" in capsys.readouterr().err
    assert cli("train", "--objective", "linf_hinge", "--sigma", "0.5", "--eps-train", "0.2",
               "--eps-test", "0.1", "--out", tmp_path / "m.pt") == 2
    assert "--sigma does not apply to --objective linf_hinge" in capsys.readouterr().err
    assert cli("train", "--objective", "linf_mixture", "--out", tmp_path / "m.pt") == 2
    assert "needs --eps-train and --eps-test" in capsys.readouterr().err


def test_list_recipes_and_unknown_recipe(tmp_path, capsys):
    assert cli("train", "--list-recipes") == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == available_recipes()
    assert any("SmoothMix on CIFAR-10, σ=0.5" in line for line in listed)
    assert cli("train", "--recipe", "nope", "--out", tmp_path / "m.pt") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'nope'; available: ") and "mnist-gaussian-s0.5" in err
    assert len(err.strip().splitlines()) == 1
    assert cli("train", "--help") == 0
    options = capsys.readouterr().out.split("\nObjective:")[1]
    assert "linf_mixture" in options.split("--objective")[1].split("--sigma")[0]


def test_train_help_groups_every_generated_option_under_its_component(capsys):
    from certify.objectives import all_options
    from certify.training.config import SECTIONS

    assert cli("train", "--help") == 0
    text = capsys.readouterr().out
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line[0].isspace()]
    titles = [s.title for s in SECTIONS]
    assert [h for h in headings if h in titles] == titles  # one heading per section, in order
    for section in SECTIONS:
        body = text.split(f"\n{section.title}:\n")[1].split("\n\n")[0]
        for param in section.options:
            if param.name not in ("device", "data_dir"):  # the shared options, under Run and output
                assert param.cli_flag in body, (section.title, param.cli_flag)
    objective_part = text.split("\nObjective:\n")[1]
    for param, _ in all_options().values():
        assert param.cli_flag in objective_part, param.cli_flag


def test_the_loop_names_no_method():
    """Everything method-specific reaches the loop through hooks: its source names no objective,
    certification method, component or long-tailed/noisy-label technique."""
    import re
    from pathlib import Path

    from certify.methods import METHODS
    from certify.objectives import OBJECTIVES
    from certify.training.config import COMPONENTS

    source = Path(loop.__file__).read_text(encoding="utf-8").lower()
    names = {*OBJECTIVES, *METHODS, *(c.__name__ for c in COMPONENTS), *(c.name for c in COMPONENTS),
             "ldam", "cals", "cdb", "absgd", "smoothmix", "unimix", "sigma", "linf", "lipschitz",
             "susceptibility", "label_loss", "cosine", "hinge", "bayias", "logitclip"}
    found = sorted(n for n in names if re.search(rf"\b{re.escape(n.lower())}\b", source))
    assert found == []


def test_shared_objective_options_are_declared_once():
    """An option several objectives take is one Param object, so its flag, default and checks
    cannot drift apart; and every option's default passes its own check."""
    from certify.objectives import OBJECTIVES

    seen = {}
    for objective in OBJECTIVES.values():
        for option in objective.options:
            assert seen.setdefault(option.name, option) is option, (objective.name, option.name)
            assert option.check(option.default) == option.default or option.default is None
    assert {"sigma", "loss", "eps_train", "num_steps"} <= set(seen)


def test_every_committed_checkpoint_rebuilds_its_config_and_objective():
    """Checkpoints written before the settings were sectioned still describe a valid run: the
    flat record round-trips (options added since take their defaults), and the objective rebuilt
    from it promises the certificate the checkpoint carries."""
    from pathlib import Path

    checkpoints = sorted((Path(__file__).parents[1] / "models").glob("*.pt"))
    assert len(checkpoints) >= 5
    defaults = TrainConfig().record()
    for path in checkpoints:
        ckpt = load_checkpoint(path)
        stored = ckpt.training["config"]
        config = TrainConfig.from_record(stored)
        config.validate()
        assert config.record() == defaults | stored, path.name
        objective = make_objective(config.objective, **config.objective_params)
        assert objective.certification() == ckpt.certification, path.name


def test_resume_takes_the_settings_from_the_checkpoint_and_force_starts_afresh(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "m.pt"
    first = ["--arch", "small_cnn", "--arch-opt", "width=4", "--arch-opt", "hidden=16", "--lr", "0.05",
             "--sigma", "0.3", "--batch", "8", "--train-count", "16", "--eval-count", "12"]
    common = ["--device", "cpu", "--data-dir", fake_fmnist, "--quiet", "--out", out]
    assert cli("train", *first, "--epochs", "1", *common) == 0
    # no flag but --resume (and a longer run): every setting comes from OUT
    assert cli("train", "--resume", "--epochs", "2", *common) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 2 and ckpt.certification == {"kind": "smoothing", "sigma": 0.3}
    config = ckpt.training["config"]
    assert (config["lr"], config["batch_size"], config["arch_kwargs"]) == (0.05, 8, {"width": 4, "hidden": 16})
    # a typed flag that differs is refused, naming the difference
    capsys.readouterr()
    assert cli("train", "--resume", "--epochs", "3", "--lr", "0.1", *common) == 2
    assert "lr=0.05 not 0.1" in capsys.readouterr().err
    assert cli("train", "--resume", "--force", *common) == 2
    assert cli("train", "--epochs", "1", *common) == 2  # exists: neither --resume nor --force
    assert "--force" in capsys.readouterr().err
    assert cli("train", "--force", "--epochs", "1", "--batch", "8", "--train-count", "16",
               "--eval-count", "12", *common) == 0  # afresh, with the defaults (lenet, σ = 0.25)
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 1 and ckpt.arch == "lenet" and ckpt.certification["sigma"] == 0.25
    assert [r["epoch"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1]


def test_unwritable_outputs_fail_before_any_work(fake_fmnist, tmp_path, monkeypatch):
    """A checkpoint or log in a directory this process may not write fails at once (the suite runs
    as root, for whom every directory is writable, so access() is made to say no)."""
    import os
    from pathlib import Path

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    built = []
    monkeypatch.setattr("certify.training.loop.build_training_model", lambda *a: built.append(a))
    with pytest.raises(UserError, match=r"cannot write checkpoint .*m.pt: directory .*locked is not writable"):
        train(config(fake_fmnist), locked / "m.pt", progress=False, log=quiet)
    with pytest.raises(UserError, match=r"cannot write log .*m.jsonl: directory .*locked is not writable"):
        train(config(fake_fmnist), tmp_path / "m.pt", progress=False, log=quiet, log_path=locked / "m.jsonl")
    assert built == []  # no model was built, no data loaded


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_epoch(fake_fmnist, tmp_path, monkeypatch):
    """A loss that turns NaN in epoch 2 stops training there, with a message naming the epoch and
    the learning rate, and the checkpoint still holds epoch 1; a learning rate of 1e30 blows up
    for real in epoch 1, and nothing is saved."""
    original = GaussianAugmentation.loss

    def loss_nan_in_epoch_2(self, model, x, y, epoch):
        value, stats = original(self, model, x, y, epoch)
        return (value * float("nan") if epoch == 1 else value), stats

    monkeypatch.setattr(GaussianAugmentation, "loss", loss_nan_in_epoch_2)
    with pytest.raises(UserError, match=r"^training diverged: the loss was nan at epoch 2, batch 1 of 5, "
                                        r"learning rate 0.025: .*m\.pt keeps epoch 1; "
                                        r"train afresh \(--force\) with a lower --lr"):
        train(config(fake_fmnist), tmp_path / "m.pt", progress=False, log=quiet)
    kept = load_checkpoint(tmp_path / "m.pt")
    assert kept.epoch == 1
    assert all(torch.isfinite(v).all() for v in kept.state_dict.values() if v.is_floating_point())
    monkeypatch.setattr(GaussianAugmentation, "loss", original)
    with pytest.raises(UserError, match=r"loss was (nan|inf) at epoch 1, .*: nothing was saved; train again with"):
        train(config(fake_fmnist, lr=1e30), tmp_path / "n.pt", progress=False, log=quiet)
    assert not (tmp_path / "n.pt").exists()
