"""Checkpoints: round trip, reference format, and refusing what must be refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint

from certify.checkpoint import load_checkpoint, save_checkpoint
from certify.errors import UserError
from certify.nets import build_model


def test_round_trip_rebuilds_the_same_function(tmp_path: Path):
    ckpt = make_checkpoint(width=4, hidden=16, sigma=0.12)
    ckpt.metrics = {"test_acc": 0.5}
    path = save_checkpoint(ckpt, tmp_path / "m.pt")
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.dataset, loaded.input_shape, loaded.num_classes) == \
        ("small_cnn", "fashion-mnist", (1, 28, 28), 10)
    assert loaded.certification == {"kind": "smoothing", "sigma": 0.12}
    assert loaded.arch_kwargs == {"width": 4, "hidden": 16}
    assert loaded.metrics == {"test_acc": 0.5}
    assert len(loaded.sha256) == 64
    x = torch.rand(3, 1, 28, 28)
    original = build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28), mean=ckpt.mean,
                           std=ckpt.std, width=4, hidden=16)
    original.load_state_dict(ckpt.state_dict)
    assert torch.equal(loaded.build_model().eval()(x), original.eval()(x))
    # the normalization is inside the model: it changes the output
    assert not torch.allclose(loaded.build_model()[1](x), original(x))


def test_file_loads_with_weights_only(tmp_path: Path):
    path = save_checkpoint(make_checkpoint(width=4, hidden=16), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "certify-checkpoint" and raw["format_version"] == 1
    assert raw["certification"]["sigma"] == 0.25


def test_save_is_atomic(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(width=4, hidden=16), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(make_checkpoint(width=4, hidden=16, seed=1), path)
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary left behind


def test_reference_checkpoint_with_module_prefix(tmp_path: Path):
    model = build_model("cifar_resnet20", num_classes=10, input_shape=(3, 32, 32),
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    state = {(k.replace("1.", "1.module.", 1) if k.startswith("1.") else k): v
             for k, v in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": state, "epoch": 90}, path)
    with pytest.raises(UserError, match="--dataset and --sigma"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, dataset="cifar10", sigma=0.5)
    assert ckpt.reference_format and ckpt.certification == {"kind": "smoothing", "sigma": 0.5}
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(ckpt.build_model().eval()(x), model.eval()(x))


def test_reference_checkpoint_for_another_dataset_is_a_clear_error(tmp_path: Path):
    model = build_model("cifar_resnet20", num_classes=10, input_shape=(3, 32, 32),
                        mean=(0.5,) * 3, std=(0.25,) * 3)
    path = tmp_path / "ref.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": model.state_dict()}, path)
    ckpt = load_checkpoint(path, dataset="fashion-mnist", sigma=0.25)
    with pytest.raises(UserError, match="do not fit cifar_resnet20 on fashion-mnist"):
        ckpt.build_model()


def test_our_checkpoint_with_another_dataset_flag(tmp_path: Path):
    path = save_checkpoint(make_checkpoint("small_cnn", dataset="cifar10", input_shape=(3, 32, 32),
                                           width=4, hidden=16), tmp_path / "c.pt")
    with pytest.raises(UserError, match=r"trained on cifar10 \(3×32×32\).*1×28×28"):
        load_checkpoint(path, dataset="fashion-mnist")


def test_missing_and_truncated(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = save_checkpoint(make_checkpoint(width=4, hidden=16), tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut.pt: the file is truncated or damaged \(its zip archive is "
                                        r"incomplete\); copy or download it again$"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match=r"it is not a PyTorch checkpoint \(it starts with b'hell'"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "text.pt")


class Payload:
    """Unpickling this would create a marker file: the loader must refuse before running it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"arch": "lenet", "state_dict": {}, "payload": Payload(str(marker))}, path)
    with pytest.raises(UserError, match="pickled Python objects"):
        load_checkpoint(path, dataset="fashion-mnist", sigma=0.25)
    assert not marker.exists()
