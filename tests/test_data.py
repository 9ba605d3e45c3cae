"""Tests for certify.data: file formats, search order, augmentation and error messages."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datafactory import write_cifar10_dataset, write_cifar_batch, write_idx_dataset, write_idx_file

from certify.data import (
    DatasetInfo,
    RandomCropFlip,
    available_datasets,
    dataset_info,
    load_dataset,
    resolve_data_dir,
)
from certify.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CERTIFY_DATA from the caller's shell, and ./data/<name> resolves inside tmp_path."""
    monkeypatch.delenv("CERTIFY_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


# --- registry -------------------------------------------------------------------------------


def test_registry_facts() -> None:
    assert available_datasets() == ["cifar10", "fashion-mnist", "imagenet", "mnist"]
    cifar = dataset_info("cifar10")
    assert isinstance(cifar, DatasetInfo)
    assert cifar.input_shape == (3, 32, 32) and cifar.num_classes == 10 and len(cifar.classes) == 10
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2023, 0.1994, 0.2010)
    assert dataset_info("mnist").mean == (0.0,) and dataset_info("mnist").std == (1.0,)
    fashion = dataset_info("fashion-mnist")
    assert fashion.input_shape == (1, 28, 28) and fashion.classes[9] == "Ankle boot"
    assert dataset_info("CIFAR10") is cifar


def test_registry_holds_the_linf_statistics_and_noise_maps() -> None:
    from dataclasses import replace

    from certify.data.noisy_labels import ASYMMETRIC_PAIRS, dataset_pairs
    from certify.linf_dist.nets import linf_normalization

    # the ℓ∞-dist references' statistics: their own mean, one std for every channel
    assert linf_normalization(dataset_info("cifar10")) == ((0.4914, 0.4822, 0.4465), (0.2009,) * 3)
    assert linf_normalization(dataset_info("mnist")) == ((0.1307,), (0.3081,))
    assert linf_normalization(dataset_info("fashion-mnist")) == ((0.2860,), (0.3520,))
    # a dataset without them: its own mean and the average of its stds
    plain = replace(dataset_info("cifar10"), std=(0.1, 0.2, 0.6), linf_mean=None, linf_std=None)
    assert linf_normalization(plain) == (plain.mean, (pytest.approx(0.3),) * 3)
    assert dataset_pairs("cifar10") == {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
    assert dataset_pairs("mnist") == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    assert dataset_pairs("fashion-mnist") == {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 9: 7}
    assert dataset_pairs("svhn") is None
    assert dataset_pairs("imagenet") is None  # no standard map
    assert ASYMMETRIC_PAIRS == {name: pairs for name in available_datasets()
                                if (pairs := dataset_pairs(name)) is not None}


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(UserError, match="known datasets: cifar10, fashion-mnist, imagenet, mnist, or folder:PATH"):
        dataset_info("svhn")


@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_bad_split(tmp_path: Path, split: str) -> None:
    write_idx_dataset(tmp_path, 2, 2)
    with pytest.raises(UserError, match="unknown split"):
        load_dataset("mnist", split, data_dir=tmp_path)


# --- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("torchvision_dir", [None, "MNIST"], ids=["flat", "torchvision"])
def test_idx_round_trip(tmp_path: Path, gz: bool, torchvision_dir: str | None) -> None:
    expected = write_idx_dataset(tmp_path, n_train=7, n_test=3, gz=gz, torchvision_dir=torchvision_dir)
    for split, n in (("train", 7), ("test", 3)):
        ds = load_dataset("mnist", split, data_dir=tmp_path)
        images, labels = expected[split]
        assert len(ds) == n
        assert ds.data.dtype == torch.uint8 and ds.data.shape == (n, 1, 28, 28)
        assert ds.targets.dtype == torch.int64
        assert torch.equal(ds.data, images) and torch.equal(ds.targets, labels)
        for i in range(n):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
            assert type(y) is int and y == int(labels[i])
            assert torch.equal(x, images[i].float() / 255)
            assert 0.0 <= x.min() and x.max() <= 1.0


def test_idx_exact_pixel_values(tmp_path: Path) -> None:
    """A hand-made image: pixel (r, c) = 9*r + c, so the row-major layout is checked directly."""
    rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    image = ((9 * rows + cols) % 256)[None]
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        write_idx_file(tmp_path / stem, image)
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx_file(tmp_path / stem, np.array([7]))
    x, y = load_dataset("mnist", "test", data_dir=tmp_path)[0]
    assert y == 7
    assert x[0, 0, 0] == 0 and x[0, 0, 5] == pytest.approx(5 / 255)
    assert x[0, 3, 2] == pytest.approx(29 / 255)
    assert x[0, 27, 27] == pytest.approx(((9 * 27 + 27) % 256) / 255)


def test_idx_detects_gzip_by_content(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 4, 4, gz=True)
    # A gzipped file under the plain name still reads (torchvision-style extraction mishaps).
    for gz_file in tmp_path.glob("*.gz"):
        gz_file.with_suffix("").write_bytes(gz_file.read_bytes())
    assert len(load_dataset("mnist", "train", data_dir=tmp_path)) == 4


# --- CIFAR-10 -------------------------------------------------------------------------------


@pytest.mark.parametrize("torchvision_layout", [True, False], ids=["torchvision", "flat"])
def test_cifar_round_trip(tmp_path: Path, torchvision_layout: bool) -> None:
    expected = write_cifar10_dataset(tmp_path, n_per_batch=3, n_test=4, torchvision_layout=torchvision_layout)
    where = tmp_path / "cifar-10-batches-py" if torchvision_layout else tmp_path
    assert resolve_data_dir("cifar10", tmp_path) == where
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(train) == 15 and len(test) == 4
    for ds, split in ((train, "train"), (test, "test")):
        images, labels = expected[split]
        assert ds.data.dtype == torch.uint8 and ds.data.shape == (len(ds), 3, 32, 32)
        assert torch.equal(ds.data, images) and torch.equal(ds.targets, labels)
        x, y = ds[len(ds) - 1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and type(y) is int
        assert torch.equal(x, images[-1].float() / 255)


def test_cifar_channel_order(tmp_path: Path) -> None:
    """Rows are R plane, G plane, B plane (each 32x32 row-major), not interleaved RGB."""
    red = np.arange(1024) % 256
    row = np.concatenate([red, np.full(1024, 200), np.full(1024, 7)])[None]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(tmp_path / name, row, [3])
    x, y = load_dataset("cifar10", "test", data_dir=tmp_path)[0]
    assert y == 3
    assert torch.equal(x[0] * 255, torch.tensor(red, dtype=torch.float32).view(32, 32))
    assert torch.all(x[1] == 200 / 255) and torch.all(x[2] == 7 / 255)
    assert x[0, 1, 0] == pytest.approx(32 / 255)  # row 1 starts at byte 32 of the red plane


# --- augmentation ---------------------------------------------------------------------------


def _match_shift(out: torch.Tensor, image: torch.Tensor, pad: int) -> tuple[int, int, bool] | None:
    """The (dy, dx, flipped) for which `out` is `image` shifted with zero fill, if any."""
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[1:]
    for flipped in (False, True):
        candidate = out.flip(-1) if flipped else out
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                if torch.equal(candidate, padded[:, top : top + h, left : left + w]):
                    return top - pad, left - pad, flipped
    return None


def test_random_crop_flip_is_shift_with_zero_padding() -> None:
    torch.manual_seed(0)
    image = torch.randint(1, 256, (3, 32, 32)).float() / 255  # no zeros, so padding is visible
    shifts, flips = set(), 0
    draws = 300
    for _ in range(draws):
        out = RandomCropFlip(padding=4)(image)
        assert out.shape == image.shape and 0.0 <= out.min() and out.max() <= 1.0
        match = _match_shift(out, image, 4)
        assert match is not None, "output is not a zero-padded shift of the input"
        dy, dx, flipped = match
        zeros = (out == 0).all(dim=0)
        assert int(zeros.sum()) == 32 * 32 - (32 - abs(dy)) * (32 - abs(dx))
        shifts.add((dy, dx))
        flips += flipped
    assert 0.4 * draws < flips < 0.6 * draws
    assert {dy for dy, _ in shifts} == set(range(-4, 5)) and {dx for _, dx in shifts} == set(range(-4, 5))


def test_augmentation_follows_global_seed(tmp_path: Path) -> None:
    write_cifar10_dataset(tmp_path, n_per_batch=2)
    ds = load_dataset("cifar10", "train", data_dir=tmp_path, augment=True)
    torch.manual_seed(123)
    first = [ds[i][0] for i in range(len(ds))]
    torch.manual_seed(123)
    second = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, ds.data[i].float() / 255) for i, a in enumerate(first))


def test_no_augmentation_is_deterministic(tmp_path: Path) -> None:
    write_cifar10_dataset(tmp_path, n_per_batch=2)
    ds = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert ds.transform is None
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], ds[i][0]) and torch.equal(ds[i][0], ds.data[i] / 255)


def test_mnist_family_has_no_augmentation(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 3, 3)
    ds = load_dataset("mnist", "train", data_dir=tmp_path, augment=True)
    assert ds.transform is None
    assert torch.equal(ds[0][0], ds.data[0] / 255)


def test_dataloader_batches(tmp_path: Path) -> None:
    write_cifar10_dataset(tmp_path, n_per_batch=2)
    ds = load_dataset("cifar10", "train", data_dir=tmp_path, augment=True)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


# --- where files are found ------------------------------------------------------------------


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as info:
        load_dataset("fashion-mnist", "train", data_dir=empty)
    message = str(info.value)
    assert "\n" not in message
    assert str(empty) in message
    assert "sudo apt-get install dataset-fashion-mnist" in message and "CERTIFY_DATA" in message


def test_missing_mnist_lists_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTIFY_DATA", str(tmp_path / "root"))
    with pytest.raises(UserError) as info:
        resolve_data_dir("mnist")
    message = str(info.value)
    assert "\n" not in message
    for place in (tmp_path / "root" / "mnist", tmp_path / "root", tmp_path / "data" / "mnist"):
        assert str(place) in message
    assert "--data-dir" in message and "torchvision.datasets.MNIST" in message


def test_incomplete_directory_is_not_a_dataset(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 2, 2)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="not found"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_certify_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    monkeypatch.setenv("CERTIFY_DATA", str(root))
    write_idx_dataset(root / "mnist", 2, 2)  # $CERTIFY_DATA/<name>
    write_idx_dataset(root, 5, 5, torchvision_dir="MNIST")  # torchvision layout in the root
    assert resolve_data_dir("mnist") == root / "mnist"
    assert len(load_dataset("mnist", "train")) == 2
    write_cifar10_dataset(root, n_per_batch=1)  # $CERTIFY_DATA/cifar-10-batches-py
    assert resolve_data_dir("cifar10") == root / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", "train")) == 5


def test_certify_data_root_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    monkeypatch.setenv("CERTIFY_DATA", str(root))
    # Loose IDX files in a shared root are ambiguous between MNIST and Fashion-MNIST: ignored.
    write_idx_dataset(root, 2, 2)
    with pytest.raises(UserError, match="not found"):
        resolve_data_dir("mnist")
    write_idx_dataset(root, 3, 3, torchvision_dir="MNIST")
    assert resolve_data_dir("mnist") == root / "MNIST" / "raw"
    assert len(load_dataset("mnist", "test")) == 3


def test_explicit_dir_wins_and_cwd_data_is_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_dataset(tmp_path / "data" / "mnist", 4, 4)  # ./data/mnist (cwd is tmp_path)
    assert resolve_data_dir("mnist") == tmp_path / "data" / "mnist"
    write_idx_dataset(tmp_path / "env" / "mnist", 6, 6)
    monkeypatch.setenv("CERTIFY_DATA", str(tmp_path / "env"))
    assert resolve_data_dir("mnist") == tmp_path / "env" / "mnist"
    write_idx_dataset(tmp_path / "mine", 8, 8)
    assert len(load_dataset("mnist", "train", data_dir=str(tmp_path / "mine"))) == 8


# --- download -------------------------------------------------------------------------------


def test_download_writes_into_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(Path(root))
            write_idx_dataset(root, 3, 2, torchvision_dir="MNIST")

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    ds = load_dataset("mnist", "test", download=True)
    assert calls == [tmp_path / "data" / "mnist"] and len(ds) == 2
    load_dataset("mnist", "test", download=True)  # found locally now: no second download
    assert len(calls) == 1


def test_download_failure_is_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading\ncifar-10-python.tar.gz: network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="downloading cifar10 into .* failed: .*network unreachable") as info:
        load_dataset("cifar10", "train", data_dir=tmp_path / "c", download=True)
    assert "\n" not in str(info.value)


# --- corrupt files --------------------------------------------------------------------------


def test_bad_idx_magic(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 2, 2, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02" + bad.read_bytes()[2:])
    with pytest.raises(UserError, match=f"{bad}.*bad magic"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    assert len(load_dataset("mnist", "test", data_dir=tmp_path)) == 2  # other split unaffected


def test_truncated_idx(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 2, 2, gz=True)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-10]))
    with pytest.raises(UserError, match=f"{bad}.*truncated or corrupt"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 2, 2, gz=True)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:12])
    with pytest.raises(UserError, match=str(bad)):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, 2, 2, height=32, width=32)
    with pytest.raises(UserError, match=r"shape \(1, 32, 32\), expected \(1, 28, 28\)"):
        load_dataset("mnist", "train", data_dir=tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps([1, 2, 3]),
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
    ],
    ids=["garbage", "not-a-dict", "wrong-row-size"],
)
def test_corrupt_cifar_batch(tmp_path: Path, content: bytes) -> None:
    write_cifar10_dataset(tmp_path, n_per_batch=1)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=str(bad)):
        load_dataset("cifar10", "train", data_dir=tmp_path)


# --- the real Fashion-MNIST, where installed --------------------------------------------------


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist() -> None:
    assert resolve_data_dir("fashion-mnist") == DEBIAN_FASHION
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.data.shape == (60000, 1, 28, 28) and set(train.targets.unique().tolist()) == set(range(10))
    # Exact pixel statistics from the histogram, compared with the hard-coded normalization.
    counts = torch.bincount(train.data.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * values).sum() / counts.sum())
    std = float(((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt())
    info = dataset_info("fashion-mnist")
    assert info.mean[0] == pytest.approx(mean, abs=1e-3) and info.std[0] == pytest.approx(std, abs=1e-3)
