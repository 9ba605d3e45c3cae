"""Shared fixtures: a tiny Fashion-MNIST-format directory and a saved checkpoint for it."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from datafactory import write_idx_dataset  # noqa: E402

from certify.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from certify.nets import build_model  # noqa: E402

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    """A Fashion-MNIST-format directory with 40 train and 12 test images."""
    root = tmp_path / "fmnist"
    write_idx_dataset(root, n_train=40, n_test=12)
    return root


def make_checkpoint(arch: str = "small_cnn", dataset: str = "fashion-mnist", sigma: float = 0.25,
                    input_shape=(1, 28, 28), seed: int = 0, **arch_kwargs) -> Checkpoint:
    torch.manual_seed(seed)
    mean = FMNIST_MEAN if input_shape[0] == 1 else (0.5,) * input_shape[0]
    std = FMNIST_STD if input_shape[0] == 1 else (0.25,) * input_shape[0]
    model = build_model(arch, num_classes=10, input_shape=input_shape, mean=mean, std=std, **arch_kwargs)
    return Checkpoint(arch=arch, arch_kwargs=arch_kwargs, dataset=dataset, input_shape=input_shape,
                      num_classes=10, mean=mean, std=std,
                      certification={"kind": "smoothing", "sigma": sigma},
                      state_dict=model.state_dict(), command="made by the test suite")


@pytest.fixture
def small_checkpoint(tmp_path: Path) -> Path:
    """A random-weight small_cnn checkpoint for Fashion-MNIST, saved with save_checkpoint."""
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(width=4, hidden=16), path)
    return path


@pytest.fixture
def single_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment torchrun gives its only process (a free local port for the rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
