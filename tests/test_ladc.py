"""LADC: class statistics, the head/neighbour rule, the feature generator, head retraining, the
feature hook, checkpoint calibration and the ``certify ladc`` command."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_checkpoint
from test_cli import cli
from torch import nn
from torch.utils.data import Subset, TensorDataset

from certify.checkpoint import load_checkpoint, save_checkpoint
from certify.data import load_dataset
from certify.errors import UserError
from certify.ladc import (
    calibrate_checkpoint,
    class_statistics,
    extract_features,
    generate_features,
    head_classes,
    neighbour_classes,
    retrain_head,
    seeds_per_feature,
    tukey,
)
from certify.nets import NormedLinear, build_model

HEAD = "1.classifier.3"  # small_cnn's last layer inside Sequential(NormalizeLayer, net)
# fake Fashion-MNIST train labels are (3i) mod 10: four images per class among 40
LONG_TAIL = {0: 4, 1: 4, 2: 3, 3: 2, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1}


def long_tailed_subset(data_dir):
    train = load_dataset("fashion-mnist", "train", data_dir=data_dir)
    keep, seen = [], dict.fromkeys(LONG_TAIL, 0)
    for i, y in enumerate(train.targets.tolist()):
        if seen[y] < LONG_TAIL[y]:
            keep.append(i)
            seen[y] += 1
    return Subset(train, keep), [LONG_TAIL[c] for c in range(10)]


def test_class_statistics_are_unbiased_per_class():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.tensor([0] * 12 + [1] * 17 + [2])
    means, covs = class_statistics(x, y, 3)
    for c in (0, 1):
        torch.testing.assert_close(means[c], x[y == c].double().mean(0))
        torch.testing.assert_close(covs[c], torch.cov(x[y == c].double().T))
    assert torch.equal(covs[2], torch.zeros(4, 4, dtype=torch.float64))  # one sample: no spread
    means, covs = class_statistics(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([0, 0]), 1)
    assert means[0].tolist() == [2.0, 4.0] and covs[0].tolist() == [[2.0, 4.0], [4.0, 8.0]]
    with pytest.raises(ValueError, match="class 3"):
        class_statistics(x, y, 4)


def test_tukey():
    x = torch.tensor([1.0, 4.0, 9.0])
    assert tukey(x, 1) is x
    torch.testing.assert_close(tukey(x, 0.5), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(tukey(x, 0), torch.log(x))


def test_head_classes_and_neighbours_by_hand():
    counts = [100, 30, 21, 20]  # n_max/5 = 20: class 3 sits on the threshold and is not a head
    assert head_classes(counts) == [0, 1, 2]
    means = torch.tensor([[0.0], [10.0], [3.0], [4.0]])
    assert neighbour_classes(means, counts, 3) == [[0, 2, 1], [1, 2, 0], [2, 0, 1], [3, 2, 0]]
    assert neighbour_classes(means, counts, 1) == [[0], [1], [2], [3]]
    assert neighbour_classes(means, counts, 10)[3] == [3, 2, 0, 1]  # fewer heads than K-1
    assert neighbour_classes(means, counts, 2)[1] == [1, 2]


def test_seeds_per_feature_spreads_the_remainder_over_distinct_seeds():
    g = torch.Generator().manual_seed(0)
    draws = [seeds_per_feature(4, 14, g) for _ in range(20)]  # 14 = 3·4 + 2
    for per_seed in draws:
        assert per_seed.sum() == 14 and sorted(per_seed.tolist()) == [3, 3, 4, 4]
    assert len({tuple(d.tolist()) for d in draws}) > 1  # the extra seeds are drawn at random
    assert seeds_per_feature(3, 6).tolist() == [2, 2, 2]
    assert seeds_per_feature(5, 3).sum() == 3 and seeds_per_feature(5, 3).max() == 1


def test_generation_brings_every_class_to_n_max():
    torch.manual_seed(1)
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 3 + [3])
    x = torch.randn(len(y), 3) + 3 * torch.nn.functional.one_hot(y, 4)[:, :3]
    out = generate_features(x, y, 4, k=2, generator=torch.Generator().manual_seed(0))
    assert out.counts == [0, 6, 7, 9]
    assert torch.bincount(torch.cat([y, out.labels]), minlength=4).tolist() == [10] * 4
    assert out.features.shape == (22, 3) and out.features.dtype == torch.float32


def test_generated_points_sit_at_the_calibrated_mean():
    x = torch.tensor([[0.0, 0.0]] * 10 + [[10.0, 0.0]] * 10 + [[4.0, 4.0]] * 2)
    y = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    out = generate_features(x, y, 3, k=3, alpha=0.0, generator=torch.Generator().manual_seed(0))
    assert out.counts == [0, 0, 8] and out.neighbours[2] == [2, 0, 1]
    # every covariance is 0, so Σ' = 1e-4·I; μ' = (x + μ2 + μ0 + μ1)/4 = ((4,4)+(4,4)+(0,0)+(10,0))/4
    torch.testing.assert_close(out.features, torch.tensor([[4.5, 2.0]]).expand(8, 2), atol=0.05, rtol=0)
    assert out.features.std(0).max() > 1e-3  # sampled, not copied


def test_generated_covariance_approaches_the_calibrated_one():
    torch.manual_seed(2)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, -0.3, 0.7]])
    head = torch.randn(4000, 3) @ mixing.T + torch.tensor([1.0, 2.0, 3.0])
    tail = torch.tensor([[5.0, -1.0, 0.0]])
    x, y = torch.cat([head, tail]), torch.tensor([0] * 4000 + [1])
    out = generate_features(x, y, 2, k=2, alpha=0.1, generator=torch.Generator().manual_seed(3))
    means, covs = class_statistics(x, y, 2)
    expected_cov = (covs[0] + covs[1]) / 2 + 0.1 + 1e-4 * torch.eye(3, dtype=torch.float64)
    expected_mean = (tail[0].double() + means[1] + means[0]) / 3
    made = out.features.double()
    assert out.counts == [0, 3999]
    torch.testing.assert_close(made.mean(0), expected_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(made.T), expected_cov, atol=0.08, rtol=0)


def test_generation_is_reproducible():
    torch.manual_seed(4)
    x, y = torch.randn(20, 5), torch.tensor([0] * 12 + [1] * 5 + [2] * 3)
    a = generate_features(x, y, 3, generator=torch.Generator().manual_seed(7))
    b = generate_features(x, y, 3, generator=torch.Generator().manual_seed(7))
    c = generate_features(x, y, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.features, c.features)


def blobs(n=300):
    g = torch.Generator().manual_seed(5)
    y = torch.arange(n) % 3
    return 4 * torch.eye(8)[y] + 0.5 * torch.randn(n, 8, generator=g), y


@pytest.mark.parametrize("make_head", [lambda: nn.Linear(8, 3), lambda: NormedLinear(8, 3)])
def test_retrain_head_learns_separable_features(make_head):
    x, y = blobs()
    head = make_head()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()  # every logit equal: argmax says class 0, accuracy 1/3
    assert (head(x).argmax(1) == y).float().mean() < 0.4
    losses = retrain_head(head, x, y, epochs=5, lr=0.1, batch_size=64,
                          generator=torch.Generator().manual_seed(0))
    assert (head(x).argmax(1) == y).float().mean() > 0.95 and losses[-1] < losses[0]
    again = make_head()
    retrain_head(again, x, y, epochs=5, lr=0.1, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.weight, head.weight)  # the seed fixes the re-initialization too


def test_feature_hook_returns_the_penultimate_features():
    model = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,),
                        width=2, hidden=6)
    model.train()
    x, y = torch.rand(7, 1, 8, 8), torch.arange(7)
    net = model[1]

    def manual(inputs):
        return net.classifier[:3](net.features(model[0](inputs)))

    features, labels = extract_features(model, TensorDataset(x, y), "cpu", batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(features, manual(x))
        assert torch.equal(labels, y) and model.training  # mode restored
        noisy, _ = extract_features(model, TensorDataset(x, y), "cpu", batch_size=10, noise_sigma=0.5,
                                    generator=torch.Generator().manual_seed(9))
        noise = 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(noisy, manual(x + noise))


@pytest.mark.parametrize("cosine", [False, True])
def test_calibrate_checkpoint_retrains_only_the_head(fake_fmnist, tmp_path, cosine):
    kwargs = {"width": 4, "hidden": 16, **({"cosine_head": True} if cosine else {})}
    ckpt = make_checkpoint(**kwargs)
    ckpt.resume_state = {"optimizer": {"x": 1}}
    ckpt.sha256 = "ab" * 32
    original = {name: v.clone() for name, v in ckpt.state_dict.items()}
    data, counts = long_tailed_subset(fake_fmnist)
    new = calibrate_checkpoint(ckpt, data, counts, "cpu", k=3, epochs=2, batch_size=8, seed=1)
    path = save_checkpoint(new, tmp_path / "ladc.pt")
    loaded = load_checkpoint(path)
    changed = {name for name, v in loaded.state_dict.items() if not torch.equal(v, original[name])}
    assert changed == ({f"{HEAD}.weight"} if cosine else {f"{HEAD}.weight", f"{HEAD}.bias"})
    assert all(torch.equal(v, original[name]) for name, v in ckpt.state_dict.items())  # input untouched
    assert "ladc" not in ckpt.training and ckpt.resume_state
    record = loaded.training["ladc"]
    assert [a + b for a, b in zip(record["generated"], counts)] == [4] * 10
    assert record["source"] == "ab" * 32 and record["noise_sigma"] == 0.25
    assert (record["k"], record["alpha"], record["tukey_lambda"], record["epochs"]) == (3, 0.0, 1.0, 2)
    assert record["head_classes"] == list(range(10))  # 5·n > 4 for every count here
    assert loaded.resume_state == {}
    loaded.build_model("cpu")
    again = calibrate_checkpoint(ckpt, data, counts, "cpu", k=3, epochs=2, batch_size=8, seed=1)
    assert torch.equal(again.state_dict[f"{HEAD}.weight"], new.state_dict[f"{HEAD}.weight"])


def test_calibrate_checkpoint_refuses(fake_fmnist):
    data, counts = long_tailed_subset(fake_fmnist)
    ckpt = make_checkpoint(width=4, hidden=16)
    with pytest.raises(UserError, match="not the data it was trained on"):
        calibrate_checkpoint(ckpt, data, [4] * 10, "cpu", epochs=1)
    with pytest.raises(UserError, match="--tukey"):
        calibrate_checkpoint(ckpt, data, counts, "cpu", tukey_lambda=0.5, epochs=1)
    ckpt.certification = {"kind": "linf_dist", "eps": 0.1}
    with pytest.raises(UserError, match="ℓ∞-distance"):
        calibrate_checkpoint(ckpt, data, counts, "cpu", epochs=1)


def one_error_line(capsys, code: int, pattern: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


def test_cli_errors(small_checkpoint, tmp_path, capsys):
    one_error_line(capsys, cli("ladc", tmp_path / "missing.pt", "--out", tmp_path / "o.pt"),
                   "checkpoint not found")
    one_error_line(capsys, cli("ladc", small_checkpoint, "--out", small_checkpoint), "already exists")
    one_error_line(capsys, cli("ladc", small_checkpoint, "--out", tmp_path / "no" / "o.pt"),
                   "does not exist")
    one_error_line(capsys, cli("ladc", small_checkpoint, "--out", tmp_path / "o.pt", "--k", "0"), "--k")
    assert not (tmp_path / "o.pt").exists()
    assert cli("ladc", "--help") == 0 and "nearest" in capsys.readouterr().out


def test_cli_end_to_end(fake_fmnist, tmp_path, capsys):
    """Train a tiny long-tailed smoothing model, then LADC it through the command, which rebuilds
    the exact training view from the checkpoint."""
    from certify.training import TrainConfig, train

    config = TrainConfig(dataset="fashion-mnist", arch="small_cnn", arch_kwargs={"width": 4, "hidden": 16},
                         objective="gaussian", objective_params={"sigma": 0.25}, epochs=1, batch_size=8,
                         lr=0.05, data_dir=str(fake_fmnist), seed=5, imbalance=4.0)
    source = train(config, tmp_path / "m.pt", progress=False, log=lambda _line: None)
    counts = source.training["class_counts"]
    assert max(counts) == 4 and min(counts) == 1
    out = tmp_path / "ladc.pt"
    code = cli("ladc", tmp_path / "m.pt", "--out", out, "--epochs", "2", "--batch", "8", "--seed", "2",
               "--device", "cpu", "--data-dir", fake_fmnist)
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, printed
    assert "ladc: features" in captured.err and "ladc: head" in captured.err  # progress bars
    assert "generated      3" in printed and "before  test accuracy" in printed and f"wrote {out}" in printed
    ckpt = load_checkpoint(out)
    assert ckpt.command  # set by the command; calibrate_checkpoint leaves it empty
    record = ckpt.training["ladc"]
    assert [a + b for a, b in zip(record["generated"], counts)] == [4] * 10
    assert record["source"] == load_checkpoint(tmp_path / "m.pt").sha256 and record["noise_sigma"] == 0.25
    assert {"test_acc", "test_balanced_acc", "test_acc_before_ladc"} <= set(ckpt.metrics)
    assert not math.isnan(ckpt.metrics["test_balanced_acc"]) and ckpt.resume_state == {}
    assert cli("ladc", tmp_path / "m.pt", "--out", tmp_path / "quiet.pt", "--epochs", "1", "--batch", "8",
               "--device", "cpu", "--data-dir", fake_fmnist, "--quiet") == 0
    assert "ladc:" not in capsys.readouterr().err
