"""Learning-rate schedules against the references' own loops, epoch by epoch: LDAM-DRW's
``adjust_learning_rate`` (the CIFAR-LT protocol), ABSGD's variant of it, SmoothMix's StepLR stepped
with ``step(epoch)`` after each epoch, and Cohen's stepped before it."""

from __future__ import annotations

import warnings

import pytest
import torch

from certify.params import ParamError
from certify.training import TrainConfig, train
from certify.training.optim import make_optimizer, make_scheduler, milestone_epochs
from certify.training.recipes import available_recipes, load_recipe


def our_lrs(config: TrainConfig, stop: int | None = None, resume_at: int | None = None) -> list[float]:
    """The lr of every epoch as the trainer runs it: read before the epoch, step after it; with
    ``resume_at`` the scheduler is rebuilt there from its state_dict, as --resume does."""
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, config.optim)
    scheduler = make_scheduler(optimizer, config.schedule, steps_per_epoch=7)
    lrs = []
    for epoch in range(config.epochs if stop is None else stop):
        if epoch == resume_at:
            states = optimizer.state_dict(), scheduler.state_dict()  # what the checkpoint keeps
            optimizer = make_optimizer(model, config.optim)  # the trainer's order: build both,
            scheduler = make_scheduler(optimizer, config.schedule, steps_per_epoch=7)  # then load
            optimizer.load_state_dict(states[0])
            scheduler.load_state_dict(states[1])
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def ldam_adjust_learning_rate(base_lr: float, epoch: int) -> float:
    """kaidic/LDAM-DRW cifar_train.py (also VS-Loss and Prior-LT), called before each epoch."""
    epoch = epoch + 1
    if epoch <= 5:
        lr = base_lr * epoch / 5
    elif epoch > 180:
        lr = base_lr * 0.0001
    elif epoch > 160:
        lr = base_lr * 0.01
    else:
        lr = base_lr
    return lr


def absgd_adjust_learning_rate(base_lr: float, epoch: int) -> float:
    """qiqi-helloworld/ABSGD myutils.py, the branch for 200 (or 300) epochs."""
    epoch = epoch + 1
    if epoch <= 5:
        lr = base_lr * epoch / 5
    elif epoch >= 160:
        lr = base_lr * 0.01
    else:
        lr = base_lr
    return lr


def recipe_config(name: str, **changes) -> TrainConfig:
    recipe = load_recipe(name)
    config = TrainConfig(objective=recipe.config.get("objective", "gaussian"),
                         objective_params=recipe.objective,
                         **({k: v for k, v in recipe.config.items() if k != "objective"} | changes))
    config.validate()
    return config


@pytest.mark.parametrize("name", ["cifar10-lt100-ce", "cifar10-lt100-ldam-drw", "cifar10-lt100-vs",
                                  "cifar10-lt100-bayias-unimix"])
def test_lt_recipes_follow_ldam_adjust_learning_rate_for_all_200_epochs(name):
    config = recipe_config(name)
    assert config.epochs == 200 and config.lr == 0.1
    expected = [ldam_adjust_learning_rate(0.1, e) for e in range(200)]
    lrs = our_lrs(config)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    # the anchors in words: warm-up 0.02..0.1, the drops at 0-based epochs 160 and 180
    assert lrs[:6] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    assert lrs[159:161] == pytest.approx([0.1, 1e-3]) and lrs[179:181] == pytest.approx([1e-3, 1e-5])
    # a resumed run continues on the same schedule (the scheduler's state is restored)
    assert our_lrs(config, resume_at=170) == lrs


def test_absgd_recipe_follows_absgd_adjust_learning_rate():
    config = recipe_config("cifar10-lt100-absgd")
    expected = [absgd_adjust_learning_rate(0.1, e) for e in range(200)]
    lrs = our_lrs(config)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert lrs[158:160] == pytest.approx([0.1, 1e-3]) and lrs[-1] == pytest.approx(1e-3)


def emulate_smoothmix(base_lr: float, step_size: int, gamma: float, epochs: int) -> list[float]:
    """jh-jeong/smoothmix code/train.py: StepLR built in prologue(), the epoch trained, then
    ``scheduler.step(epoch)``, with torch's own StepLR."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step(epoch) is deprecated, not removed
        for epoch in range(epochs):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step(epoch)
    return lrs


def emulate_cohen(base_lr: float, step_size: int, gamma: float, epochs: int) -> list[float]:
    """locuslab/smoothing code/train.py: ``scheduler.step(epoch)`` before the epoch."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(epochs):
            scheduler.step(epoch)
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
    return lrs


@pytest.mark.parametrize("name", ["cifar10-smoothmix-s0.25", "cifar10-smoothmix-s0.5",
                                  "cifar10-smoothmix-s1.0", "mnist-smoothmix-s0.25",
                                  "mnist-smoothmix-s0.5", "mnist-smoothmix-s1.0"])
def test_smoothmix_recipes_drop_the_lr_when_the_reference_does(name):
    config = recipe_config(name)
    assert config.lr_step_delay == 1
    expected = emulate_smoothmix(config.lr, config.lr_step_size, config.lr_gamma, config.epochs)
    lrs = our_lrs(config)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    step, lr = config.lr_step_size, config.lr
    # epoch `step` (0-based) still trains at the initial rate; the drop comes one epoch later
    assert lrs[step] == lr and lrs[step + 1] == pytest.approx(lr * 0.1)
    assert lrs[2 * step + 1] == pytest.approx(lr * 0.01)
    assert our_lrs(config, resume_at=step + 1) == lrs
    # the trainer's default timing is one epoch earlier: Cohen's loop
    undelayed = our_lrs(recipe_config(name, lr_step_delay=0))
    assert undelayed[step] == pytest.approx(lr * 0.1)
    assert undelayed == pytest.approx(emulate_cohen(lr, step, config.lr_gamma, config.epochs),
                                      rel=1e-12, abs=0)


def test_other_recipes_keep_the_default_timing():
    for name in available_recipes():
        config = recipe_config(name)
        if name.startswith(("cifar10-smoothmix", "mnist-smoothmix")):
            continue
        assert config.lr_step_delay == 0, name
        if config.lr_schedule == "step":  # still torch's StepLR, as before the option existed
            optimizer = make_optimizer(torch.nn.Linear(2, 2), config.optim)
            assert isinstance(make_scheduler(optimizer, config.schedule, 1),
                              torch.optim.lr_scheduler.StepLR), name
    gaussian = recipe_config("cifar10-gaussian-s0.25")
    assert gaussian.lr_step_delay == 0 and TrainConfig().lr_step_delay == 0
    assert our_lrs(gaussian)[29:31] == pytest.approx([0.1, 0.01])


def test_schedule_options_are_checked():
    with pytest.raises(ParamError, match="lr_warmup: applies to lr_schedule multistep only"):
        TrainConfig(lr_warmup=5).validate()
    with pytest.raises(ParamError, match="lr_step_delay: applies to lr_schedule step only"):
        TrainConfig(lr_schedule="multistep", lr_step_delay=1).validate()
    with pytest.raises(ParamError, match="lr_milestones: must be whole epochs"):
        TrainConfig(lr_schedule="multistep", lr_milestones="160.5").validate()
    with pytest.raises(ParamError, match="lr_milestones"):
        TrainConfig(lr_schedule="multistep", lr_milestones="0,10").validate()
    assert milestone_epochs("180, 160,160") == milestone_epochs([160, 180]) == (160, 180)
    assert TrainConfig().lr_milestones == "160,180"  # the reference's, used by multistep only


def test_trainer_runs_the_multistep_schedule_and_resumes_it(fake_fmnist, tmp_path):
    base = dict(dataset="fashion-mnist", arch="small_cnn", arch_kwargs={"width": 4, "hidden": 16},
                objective="classify", objective_params={}, epochs=4, batch_size=8, lr=0.1,
                lr_schedule="multistep", lr_warmup=2, lr_milestones="3", lr_gamma=0.1,
                data_dir=str(fake_fmnist), seed=1)
    straight = train(TrainConfig(**base), tmp_path / "a.pt", progress=False, log=lambda _: None)
    lrs = [h["lr"] for h in straight.training["history"]]
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.01])
    train(TrainConfig(**(base | {"epochs": 2})), tmp_path / "b.pt", progress=False, log=lambda _: None)
    resumed = train(TrainConfig(**base), tmp_path / "b.pt", resume=True, progress=False,
                    log=lambda _: None)
    assert [h["lr"] for h in resumed.training["history"]] == lrs
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_cli_takes_the_schedule_from_the_recipe_and_the_flags(monkeypatch, tmp_path):
    import certify.training
    from certify.cli import main

    seen = {}

    def fake_train(config, out, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(certify.training, "train", fake_train)

    def run(*args):
        try:
            main([*map(str, args), "--device", "cpu", "--out", str(tmp_path / "m.pt")])
        except SystemExit as exit:
            return exit.code
        return 0

    assert run("train", "--recipe", "cifar10-lt100-ldam-drw") == 0
    c = seen["config"]
    assert (c.arch, c.lr_schedule, c.lr_warmup, c.lr_milestones, c.lr_gamma) == (
        "cifar_resnet32", "multistep", 5, "160,180", 0.01)
    assert (c.objective_params["loss"], c.objective_params["reweight"]) == ("ldam", "drw")
    assert run("train", "--recipe", "cifar10-lt100-ce", "--lr-milestones", "120,150") == 0
    assert milestone_epochs(seen["config"].lr_milestones) == (120, 150)
    assert run("train", "--recipe", "cifar10-smoothmix-s0.5", "--lr-step-delay", "0") == 0
    assert seen["config"].lr_step_delay == 0
    assert run("train", "--recipe", "cifar10-gaussian-s0.5") == 0
    assert (seen["config"].lr_schedule, seen["config"].lr_step_delay) == ("step", 0)
