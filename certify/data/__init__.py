"""Datasets by name: facts for building models, and in-memory splits for training and certifying.

    info = dataset_info("cifar10")                  # classes, input shape, normalization
    train = load_dataset("cifar10", "train", augment=True)
    x, y = train[0]                                 # float32 3x32x32 in [0, 1], int label
    val = load_dataset("imagenet", "test")          # lazy: decodes one image per item
    set_input_size("folder:/data/pets", 64)         # any class-folder tree, resized to 64

Files are found via an explicit directory, $CERTIFY_DATA, system copies or ./data/<name>
(see certify.data.files); new datasets or views register a source with register_dataset().
"""

from certify.data import builtin as _builtin  # noqa: F401  (registers the shipped datasets)
from certify.data import imagefolder as _imagefolder  # noqa: F401  (imagenet, folder:PATH)
from certify.data.augment import RandomCropFlip
from certify.data.files import ENV_VAR, FileDataset
from certify.data.memory import InMemoryImageDataset
from certify.data.registry import (
    DatasetInfo,
    DatasetSource,
    available_datasets,
    dataset_info,
    describe_dataset,
    load_dataset,
    register_dataset,
    resolve_data_dir,
    set_input_size,
)

__all__ = [
    "ENV_VAR",
    "DatasetInfo",
    "DatasetSource",
    "FileDataset",
    "InMemoryImageDataset",
    "RandomCropFlip",
    "available_datasets",
    "dataset_info",
    "describe_dataset",
    "load_dataset",
    "register_dataset",
    "resolve_data_dir",
    "set_input_size",
]
