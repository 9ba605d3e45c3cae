"""The datasets that ship with certify: Fashion-MNIST, MNIST and CIFAR-10.

Normalization stats are those the reference implementations use, so that models trained here
compare with published numbers.
"""

from __future__ import annotations

from pathlib import Path

from certify.data.augment import RandomCropFlip
from certify.data.cifar import Cifar10Format
from certify.data.files import FileDataset
from certify.data.idx import IdxFormat
from certify.data.registry import DatasetInfo, register_dataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    input_shape=(1, 28, 28),
    # Measured once over all 60000 x 784 training pixels of the Debian copy
    # (dataset-fashion-mnist, train-images-idx3-ubyte.gz), scaled to [0, 1]:
    # mean 0.28604, population std 0.35302, rounded to 4 decimals.
    mean=(0.2860,),
    std=(0.3530,),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    linf_mean=(0.2860,),
    linf_std=0.3520,
    # No standard map exists; ours pairs look-alikes: T-shirt↔shirt, pullover↔coat,
    # sandal→sneaker, ankle boot→sneaker.
    asymmetric_pairs=((0, 6), (6, 0), (2, 4), (4, 2), (5, 7), (9, 7)),
)

MNIST = DatasetInfo(
    name="mnist",
    num_classes=10,
    input_shape=(1, 28, 28),
    # SmoothMix's LeNet feeds MNIST unnormalized, i.e. identity normalization.
    mean=(0.0,),
    std=(1.0,),
    classes=tuple(str(digit) for digit in range(10)),
    linf_mean=(0.1307,),
    linf_std=0.3081,
    # 2→7, 3→8, 5↔6, 7→1: Patrini et al. 2017 as commonly reused (from memory).
    asymmetric_pairs=((2, 7), (3, 8), (5, 6), (6, 5), (7, 1)),
)

CIFAR10 = DatasetInfo(
    name="cifar10",
    num_classes=10,
    input_shape=(3, 32, 32),
    # The values of Cohen et al.'s randomized smoothing code (its std is not the exact pixel std).
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
    classes=("airplane", "automobile", "bird", "cat", "deer",
             "dog", "frog", "horse", "ship", "truck"),
    linf_mean=(0.4914, 0.4822, 0.4465),
    linf_std=0.2009,
    # truck→automobile, bird→airplane, cat↔dog, deer→horse: Patrini et al. 2017, and the map in
    # the LogitClip reference (its `transition` dict).
    asymmetric_pairs=((9, 1), (2, 0), (3, 5), (5, 3), (4, 7)),
)

_ELSEWHERE = "pass --data-dir / set CERTIFY_DATA, or download it with torchvision into ./data/fashion-mnist"

register_dataset(FileDataset(
    info=FASHION_MNIST,
    disk_format=IdxFormat(torchvision_dir="FashionMNIST"),
    torchvision_class="FashionMNIST",
    how_to_get=f"get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or {_ELSEWHERE}",
    system_dirs=(DEBIAN_FASHION_MNIST,),
    # No augmentation: the SmoothMix reference trains the MNIST family with ToTensor only.
    train_augmentation=None,
))

register_dataset(FileDataset(
    info=MNIST,
    disk_format=IdxFormat(torchvision_dir="MNIST"),
    torchvision_class="MNIST",
    how_to_get="pass --data-dir holding the IDX files (directly or torchvision's MNIST/raw/), "
    "set CERTIFY_DATA, or download it with torchvision.datasets.MNIST into ./data/mnist where online",
    # No augmentation: the SmoothMix reference trains MNIST with ToTensor only.
    train_augmentation=None,
))

register_dataset(FileDataset(
    info=CIFAR10,
    disk_format=Cifar10Format(),
    torchvision_class="CIFAR10",
    how_to_get="pass --data-dir holding torchvision's cifar-10-batches-py/ (or its batch files), "
    "set CERTIFY_DATA, or download it with torchvision.datasets.CIFAR10 into ./data/cifar10 where online",
    # Cohen et al.'s CIFAR-10 training: RandomCrop(32, padding=4) + RandomHorizontalFlip.
    train_augmentation=lambda: RandomCropFlip(padding=4),
))
