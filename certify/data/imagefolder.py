"""Datasets stored as folders of image files: ImageNet, and any ``folder:PATH`` class tree.

Unlike the built-in datasets these are read lazily: one image is decoded per ``__getitem__``, since
ImageNet's 50,000 validation images at 3×224×224 would take 30 GB as float32. Labels follow
torchvision's ImageFolder (the smoothing references load ImageNet with it): a class is a
sub-folder, and its index is its position among the sorted sub-folder names.

Transforms are those of Cohen et al.'s ``code/datasets.py`` (locuslab/smoothing): for testing,
resize the shorter side to 256 and centre-crop 224; for training, RandomResizedCrop(224) and a
horizontal flip. A folder dataset of input size s resizes to round(s·256/224) and crops s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from certify.data.files import ENV_VAR
from certify.data.registry import DatasetInfo, check_split, register_dataset, register_dataset_family
from certify.errors import UserError

IMAGENET_ENV_VAR = "IMAGENET_DIR"  # the variable the reference code reads
IMAGENET_SIZE = 224
IMAGENET_RESIZE = 256
# The reference's normalization (code/datasets.py: _IMAGENET_MEAN, _IMAGENET_STDDEV).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGENET = DatasetInfo(
    name="imagenet",
    num_classes=1000,
    input_shape=(3, IMAGENET_SIZE, IMAGENET_SIZE),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    # The class names are the WordNet ids of the class folders, known only once the data is read
    # (ImageFolderDataset.classes); reports show class indices instead.
    classes=(),
)

ImageTransform = Callable[[Any], Tensor]  # PIL image -> float32 C x H x W in [0, 1]


def resize_for(size: int) -> int:
    """Shorter side before the centre crop: ImageNet's 256 for 224, the same ratio for other sizes."""
    return round(size * IMAGENET_RESIZE / IMAGENET_SIZE)


def eval_transform(size: int = IMAGENET_SIZE) -> ImageTransform:
    """Resize the shorter side, centre-crop a size × size square, scale to [0, 1] (reference's test)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resize_for(size)), transforms.CenterCrop(size),
                               transforms.ToTensor()])


def train_transform(size: int = IMAGENET_SIZE) -> ImageTransform:
    """The reference's ImageNet training augmentation: a random resized crop and a flip."""
    from torchvision import transforms

    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor()])


class ImageFolderDataset(Dataset):
    """Images listed by path, decoded on access: items are ``(float32 C x H x W in [0, 1], int)``.

    ``transform`` (PIL image → tensor) is the training augmentation; None means the deterministic
    ``plain`` pipeline, so code that drops augmentation by setting ``transform = None`` (as the
    training views do for validation) gets the plain images.
    """

    def __init__(self, root: Path, classes: list[str], samples: list[tuple[str, int]],
                 plain: ImageTransform, transform: ImageTransform | None = None) -> None:
        self.root = root
        self.classes = classes
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.plain = plain
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import UnidentifiedImageError
        from torchvision.datasets.folder import default_loader

        path = self.samples[index][0]
        try:
            image = default_loader(path)  # PIL, converted to RGB
        except UnidentifiedImageError:
            raise UserError(f"cannot read image {path}: not an image file PIL can decode") from None
        except (OSError, ValueError) as err:  # unreadable, or truncated after its header
            raise UserError(f"cannot read image {path}: {' '.join(str(err).split())}") from None
        x = (self.transform or self.plain)(image)
        # labels from .targets, so a view that rewrites them (label noise) is obeyed
        return x, int(self.targets[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, classes={len(self.classes)})"


def find_classes(directory: Path, hint: str = "") -> list[str]:
    """Sorted class sub-folder names of ``directory`` (torchvision's rule); UserError if none."""
    from torchvision.datasets.folder import find_classes as torchvision_find_classes

    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory{hint}")
    try:
        classes, _ = torchvision_find_classes(str(directory))
    except FileNotFoundError:
        raise UserError(f"{directory} has no class sub-folders (expected {directory}/<class>/<image>)"
                        f"{hint}") from None
    return classes


def scan_images(directory: Path, classes: list[str], hint: str = "") -> list[tuple[str, int]]:
    """(path, class index) of every image under ``directory``'s class folders, in ImageFolder order;
    UserError naming the class folders that hold no image."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    index = {name: i for i, name in enumerate(classes)}
    samples = make_dataset(str(directory), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    found = {label for _, label in samples}
    empty = [name for name in classes if index[name] not in found]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UserError(f"{directory}: no images in class folder(s) {shown} (images end in "
                        f"{', '.join(IMG_EXTENSIONS)}){hint}")
    return samples


def _load_folder(directory: Path, classes: list[str], size: int, augment: bool,
                 hint: str = "") -> ImageFolderDataset:
    samples = scan_images(directory, classes, hint)
    return ImageFolderDataset(directory, classes, samples, eval_transform(size),
                              train_transform(size) if augment else None)


# --- ImageNet ---------------------------------------------------------------------------------

IMAGENET_SPLIT_DIRS = {"test": "val", "train": "train"}  # the references certify the val set
IMAGENET_LAYOUT = ("ROOT/val/<wnid>/<image>.JPEG for the test split, ROOT/train/<wnid>/... for "
                   "training (the validation images sorted into class folders, as for torchvision's "
                   "ImageFolder)")


@dataclass(frozen=True)
class ImageNetSource:
    """ImageNet in the standard layout, found like the other datasets or via $IMAGENET_DIR."""

    info: DatasetInfo = IMAGENET

    def search_dirs(self, data_dir: Path | None) -> list[Path]:
        """Where ROOT is looked for: the given directory only, else $CERTIFY_DATA/imagenet,
        $IMAGENET_DIR, ./data/imagenet."""
        if data_dir is not None:
            return [data_dir]
        dirs = []
        for var, sub in ((ENV_VAR, "imagenet"), (IMAGENET_ENV_VAR, "")):
            value = os.environ.get(var, "").strip()
            if value:
                dirs.append(Path(value).expanduser() / sub)
        return [*dirs, Path.cwd() / "data" / "imagenet"]

    def find(self, data_dir: Path | None, split: str | None = None) -> Path | None:
        """First ROOT holding the split's folder (either split's when ``split`` is None)."""
        subs = [IMAGENET_SPLIT_DIRS[split]] if split else list(IMAGENET_SPLIT_DIRS.values())
        for root in self.search_dirs(data_dir):
            if any((root / sub).is_dir() for sub in subs):
                return root
        return None

    def not_found_message(self, data_dir: Path | None, split: str | None = None) -> str:
        looked = ", ".join(str(d) for d in self.search_dirs(data_dir))
        what = f"imagenet {split} split ({IMAGENET_SPLIT_DIRS[split]}/)" if split else "imagenet data"
        above = " (--data-dir is ROOT, the folder above val/ and train/)" \
            if data_dir is not None and data_dir.name in IMAGENET_SPLIT_DIRS.values() else ""
        return (f"{what} not found (looked in: {looked}){above}; expected {IMAGENET_LAYOUT}; pass "
                f"--data-dir ROOT, or set {ENV_VAR} (ROOT = its imagenet/ folder) or {IMAGENET_ENV_VAR}")

    def resolve(self, data_dir: Path | None) -> Path:
        """ROOT, the directory holding val/ and/or train/."""
        found = self.find(data_dir)
        if found is None:
            raise UserError(self.not_found_message(data_dir))
        return found

    def load(self, split: str, data_dir: Path | None, augment: bool, download: bool) -> ImageFolderDataset:
        """The split as a lazy dataset; ImageNet cannot be downloaded automatically."""
        check_split(split)
        root = self.find(data_dir, split)
        if root is None:
            message = self.not_found_message(data_dir, split)
            if download:
                message += " (ImageNet cannot be downloaded automatically: it needs a licence from image-net.org)"
            raise UserError(message)
        directory = root / IMAGENET_SPLIT_DIRS[split]
        hint = (f"; expected {IMAGENET_LAYOUT} (the validation archive unpacks flat: sort it into "
                f"class folders first)")
        classes = find_classes(directory, hint)
        if len(classes) > self.info.num_classes:
            raise UserError(f"{directory} has {len(classes)} class folders; ImageNet has "
                            f"{self.info.num_classes}")
        if len(classes) < self.info.num_classes:
            print(f"note: {directory} has {len(classes)} class folders, not ImageNet's "
                  f"{self.info.num_classes}: labels are positions among these {len(classes)} folders, "
                  f"which match a 1000-class model's only if no class before them is missing",
                  file=sys.stderr)
        return _load_folder(directory, classes, IMAGENET_SIZE, augment, hint)


# --- folder:PATH --------------------------------------------------------------------------------

FOLDER_PREFIX = "folder"
FOLDER_USAGE = "folder:PATH (a folder of class sub-folders of images)"
# Models that carry their own normalization (exported models) ignore these and get [0, 1] pixels.
# For the rest (a model built here, a reference {'arch', 'state_dict'} file) ImageNet's statistics
# are the usual choice for natural photographs; the exported-model check that warns when a model
# wants normalized inputs compares against them too.
FOLDER_MEAN = IMAGENET_MEAN
FOLDER_STD = IMAGENET_STD
SPLIT_FOLDERS = ("train", "val", "test")


class FolderSource:
    """``folder:PATH``: any ImageFolder tree, resized and centre-cropped to ``input_size``.

    Splits: when PATH has any of train/, val/, test/, "train" reads train/ and "test" reads test/
    (val/ when there is no test/); otherwise PATH itself is the test split and there is no train
    split. Classes (and their count) are the test split's sub-folders, or train/'s without one.
    """

    def __init__(self, root: Path, input_size: int = IMAGENET_SIZE) -> None:
        self.root = root
        self.input_size = input_size
        self._classes: list[str] | None = None

    @property
    def name(self) -> str:
        return f"{FOLDER_PREFIX}:{self.root}"

    def set_input_size(self, size: int) -> None:
        """Side of the square images the data is resized and cropped to (default 224)."""
        if size < 1:
            raise UserError(f"the input size must be at least 1 pixel, got {size}")
        self.input_size = int(size)

    def describe(self) -> dict[str, Any]:
        """What a results sidecar records besides the name (which holds the absolute path)."""
        return {"input_size": self.input_size}

    def split_dir(self, split: str) -> Path:
        """The folder a split reads (see the class docstring); UserError if it has none."""
        check_split(split)
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "no such directory"
            raise UserError(f"{self.name}: {what}; expected "
                            f"PATH/<class>/<image> or PATH/train/<class>/..., PATH/test/<class>/...")
        present = [s for s in SPLIT_FOLDERS if (self.root / s).is_dir()]
        if not present:
            if split == "train":
                raise UserError(f"{self.name} has no train split: PATH itself is the test split "
                                f"unless it has train/ and test/ (or val/) sub-folders")
            return self.root
        wanted = ["train"] if split == "train" else ["test", "val"]
        for sub in wanted:
            if sub in present:
                return self.root / sub
        raise UserError(f"{self.name} has {', '.join(s + '/' for s in present)} but no "
                        f"{' or '.join(s + '/' for s in wanted)} for the {split} split")

    def classes(self) -> list[str]:
        """Class folder names of the test split (train/'s when there is no test split), read once."""
        if self._classes is None:
            try:
                directory = self.split_dir("test")
            except UserError:
                directory = self.split_dir("train")
            self._classes = find_classes(directory)
        return self._classes

    @property
    def info(self) -> DatasetInfo:
        classes = self.classes()
        size = self.input_size
        return DatasetInfo(name=self.name, num_classes=len(classes), input_shape=(3, size, size),
                           mean=FOLDER_MEAN, std=FOLDER_STD, classes=tuple(classes))

    def resolve(self, data_dir: Path | None) -> Path:
        """PATH itself: the name already says where the data is."""
        if data_dir is not None:
            raise UserError(f"{self.name} names its directory; --data-dir does not apply to it: drop it")
        self.classes()  # raises when there is no data
        return self.root

    def load(self, split: str, data_dir: Path | None, augment: bool, download: bool) -> ImageFolderDataset:
        """The split as a lazy dataset, labelled by the test split's class folders."""
        self.resolve(data_dir)
        directory = self.split_dir(split)
        classes = self.classes()
        if split == "train" and self._has_test():
            own = find_classes(directory)
            if own != classes:
                raise UserError(f"{directory} has other class folders than the test split "
                                f"({len(own)} against {len(classes)}): labels would not agree")
        return _load_folder(directory, classes, self.input_size, augment)

    def _has_test(self) -> bool:
        try:
            self.split_dir("test")
        except UserError:
            return False
        return True


_FOLDERS: dict[Path, FolderSource] = {}


def folder_source(path: str) -> FolderSource:
    """The source of ``folder:PATH``, one per absolute path so its input size persists."""
    if not path.strip():
        raise UserError(f"a folder dataset needs its directory: {FOLDER_USAGE}")
    root = Path(path.strip()).expanduser().resolve()
    if root not in _FOLDERS:
        _FOLDERS[root] = FolderSource(root)
    return _FOLDERS[root]


register_dataset(ImageNetSource())
register_dataset_family(FOLDER_PREFIX, folder_source, FOLDER_USAGE)
