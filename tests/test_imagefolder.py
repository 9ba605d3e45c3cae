"""ImageNet and folder:PATH datasets, and reference ImageNet ResNet-50 checkpoints.

The checkpoint is written as Cohen et al.'s code/train.py writes it (``Sequential(NormalizeLayer,
DataParallel(resnet50))``, saved with its optimizer), and the images are transformed independently
of certify with torchvision, as the reference's code/datasets.py does.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import cli
from torch import nn
from torchvision import datasets, transforms
from torchvision.models import resnet50

from certify.checkpoint import load_checkpoint
from certify.data import dataset_info, load_dataset, set_input_size
from certify.errors import UserError
from certify.nets import build_model
from certify.results import read_results, read_sidecar

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# created in this order, so that sorted order (ImageFolder's labels) differs from creation order
CLASSES = ("n03", "n01", "n02")
SIZES = ((300, 260), (260, 333))  # (width, height): odd, non-square, both sides above 256


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data directory from the caller's environment."""
    monkeypatch.delenv("CERTIFY_DATA", raising=False)
    monkeypatch.delenv("IMAGENET_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def write_tree(directory: Path, seed: int = 0, sizes=SIZES) -> Path:
    """CLASSES × len(sizes) PNG images of random pixels under directory/<class>/."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (directory / name).mkdir(parents=True)
        for k, (w, h) in enumerate(sizes):
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / name / f"img{k}.png")
    return directory


class ReferenceNormalizeLayer(nn.Module):
    """The reference's NormalizeLayer: means and stds as plain tensors (not in the state dict)."""

    def __init__(self, means: list[float], sds: list[float]) -> None:
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - means) / sds


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A random-weight ImageNet ResNet-50 saved as the reference's train.py saves it, and the model."""
    torch.manual_seed(0)
    net = resnet50(weights=None)
    with torch.no_grad():  # random batch-norm statistics, so that loading them matters
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    model = nn.Sequential(ReferenceNormalizeLayer(IMAGENET_MEAN, IMAGENET_STD), nn.DataParallel(net))
    assert "1.module.conv1.weight" in model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    path = tmp_path_factory.mktemp("ref") / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict()}, path)
    return path, model.eval()


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    write_tree(root / "val")
    return root


def test_reference_resnet50_gives_the_reference_logits(reference, imagenet_root):
    path, ref_model = reference
    ckpt = load_checkpoint(path, dataset="imagenet", sigma=0.5)
    assert (ckpt.arch, ckpt.input_shape, ckpt.num_classes) == ("resnet50", (3, 224, 224), 1000)
    assert (ckpt.mean, ckpt.std) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    model = ckpt.build_model().eval()  # strict load: every key of ours is in the file, and back

    data = load_dataset("imagenet", "test", data_dir=imagenet_root)
    assert len(data) == 6
    xs, labels = zip(*(data[i] for i in range(len(data))))
    assert list(labels) == [0, 0, 1, 1, 2, 2]  # n01, n01, n02, ..., not the creation order

    expected = datasets.ImageFolder(str(imagenet_root / "val"), transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]))
    ref_x = torch.stack([expected[i][0] for i in range(len(expected))])
    assert [expected[i][1] for i in range(len(expected))] == list(labels)
    x = torch.stack(xs)
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x, ref_x)
    with torch.no_grad():  # one image per class keeps the CPU time down
        ours, theirs = model(x[::2]), ref_model(ref_x[::2])
    assert ours.shape == (3, 1000)
    assert float(ours.std()) > 1e-2  # not a degenerate output that anything would match
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 80 ResNet-50 passes at 224×224: ~20 s on two CPU cores
def test_certify_run_on_imagenet(reference, tmp_path, capsys):
    path, _ = reference
    root = tmp_path / "imagenet"
    for k, name in enumerate(("n02", "n01")):  # one image per class: each costs 40 passes
        (root / "val" / name).mkdir(parents=True)
        Image.fromarray(np.full((270, 300, 3), 60 * k, dtype=np.uint8)).save(root / "val" / name / "x.JPEG")
    out = tmp_path / "r.tsv"
    assert cli("run", path, "--dataset", "imagenet", "--sigma", "0.5", "--n", "32", "--n0", "8",
               "--batch", "40", "--data-dir", root, "--out", out, "--quiet", "--device", "cpu") == 0
    res = read_results(out)
    assert res.idx.tolist() == [0, 1] and res.label.tolist() == [0, 1]
    assert set(res.predict.tolist()) <= set(range(-1, 1000))
    side = read_sidecar(out)
    assert (side["dataset"], side["sigma"], side["n0"], side["n"], side["complete"]) == \
        ("imagenet", 0.5, 8, 32, True)
    assert "input_size" not in side
    assert "2 class folders, not ImageNet's 1000" in capsys.readouterr().err


def test_imagenet_is_found_through_imagenet_dir(imagenet_root, monkeypatch):
    monkeypatch.setenv("IMAGENET_DIR", str(imagenet_root))
    assert load_dataset("imagenet", "test")[2][1] == 1
    with pytest.raises(UserError, match=r"imagenet train split \(train/\) not found .*IMAGENET_DIR"):
        load_dataset("imagenet", "train")


def test_reference_weights_for_another_class_count_are_one_clear_line(reference, tmp_path, capsys):
    folder = write_tree(tmp_path / "pets", sizes=((40, 30),))
    code = cli("run", reference[0], "--dataset", f"folder:{folder}", "--sigma", "0.5", "--out",
               tmp_path / "r.tsv", "--quiet", "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "do not fit resnet50 on folder:" in err and "3 classes" in err and "1.fc.weight" in err


def test_folder_dataset_at_an_input_size(tmp_path):
    root = write_tree(tmp_path / "pets", seed=1)
    name = set_input_size(f"folder:{root}/", 32)
    assert name == f"folder:{root.resolve()}"
    info = dataset_info(f"folder:{root}")
    assert (info.num_classes, info.input_shape, info.classes) == (3, (3, 32, 32), ("n01", "n02", "n03"))
    assert (info.mean, info.std) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))  # the documented default
    data = load_dataset(name, "test")
    assert [data[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    # shorter side to round(32·256/224) = 37, then the central 32×32
    image = Image.open(root / "n02" / "img1.png").convert("RGB")
    expected = transforms.ToTensor()(transforms.CenterCrop(32)(transforms.Resize(37)(image)))
    assert torch.equal(data[3][0], expected)
    with pytest.raises(UserError, match="no train split"):
        load_dataset(name, "train")


def test_unreadable_image_is_a_user_error(tmp_path):
    root = write_tree(tmp_path / "pets", sizes=((20, 20),))
    (root / "n02" / "img0.png").write_bytes(b"not a png")
    data = load_dataset(f"folder:{root}", "test")
    assert data[0][1] == 0  # the readable ones load
    with pytest.raises(UserError, match=r"cannot read image .*n02/img0.png: not an image file"):
        data[1]


def test_folder_splits(tmp_path):
    root = tmp_path / "split"
    write_tree(root / "train", seed=2, sizes=((50, 40),))
    write_tree(root / "val", seed=3, sizes=((40, 50), (45, 45)))
    set_input_size(f"folder:{root}", 24)
    test, train = load_dataset(f"folder:{root}", "test"), load_dataset(f"folder:{root}", "train", augment=True)
    assert (len(test), len(train)) == (6, 3)
    assert train.targets.tolist() == [0, 1, 2] and train[0][0].shape == (3, 24, 24)
    assert test.transform is None and train.transform is not None


def test_folder_run_records_path_and_size(tmp_path, capsys):
    root = write_tree(tmp_path / "pets", sizes=((40, 30),))
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, input_shape=(3, 32, 32), mean=(0.0,) * 3,
                        std=(1.0,) * 3)  # a reference checkpoint records no options: the defaults
    ckpt = tmp_path / "ref.pth.tar"
    torch.save({"arch": "small_cnn", "state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "r.tsv"
    assert cli("run", ckpt, "--dataset", f"folder:{root}", "--input-size", "32", "--sigma", "0.25",
               "--n", "16", "--n0", "8", "--out", out, "--quiet", "--device", "cpu") == 0
    side = read_sidecar(out)
    assert (side["dataset"], side["input_size"]) == (f"folder:{root.resolve()}", 32)
    assert read_results(out).label.tolist() == [0, 1, 2]
    # the default size is 224, which does not fit a 32×32 model: --input-size was obeyed above
    set_input_size(f"folder:{root}", 224)
    assert cli("run", ckpt, "--dataset", f"folder:{root}", "--sigma", "0.25", "--out",
               tmp_path / "r224.tsv", "--quiet", "--device", "cpu") == 2
    assert "do not fit small_cnn" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["imagenet-missing", "folder-missing", "folder-flat", "folder-empty-class",
                                  "input-size-cifar10", "input-size-no-dataset"])
def test_bad_data_is_one_line(case, tmp_path, capsys, request):
    torch.manual_seed(0)
    classes = 2 if case == "folder-empty-class" else 10  # the model fits, so the data is at fault
    model = build_model("small_cnn", num_classes=classes, input_shape=(3, 32, 32), mean=(0.5,) * 3,
                        std=(0.25,) * 3)
    ckpt = tmp_path / "ref.pth.tar"
    torch.save({"arch": "small_cnn", "state_dict": model.state_dict()}, ckpt)
    if case == "imagenet-missing":
        ckpt = request.getfixturevalue("reference")[0]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(empty / "dog" / "a.png")
    args, expected = {
        "imagenet-missing": (["--dataset", "imagenet", "--data-dir", tmp_path / "nowhere"],
                             r"imagenet test split \(val/\) not found \(looked in: .*nowhere\); expected ROOT/val/"),
        "folder-missing": (["--dataset", f"folder:{tmp_path / 'nowhere'}", "--input-size", "32"],
                           "no such directory"),
        "folder-flat": (["--dataset", f"folder:{flat}", "--input-size", "32"], "has no class sub-folders"),
        "folder-empty-class": (["--dataset", f"folder:{empty}", "--input-size", "32"],
                               r"no images in class folder\(s\) cat "),
        "input-size-cifar10": (["--dataset", "cifar10", "--input-size", "32"],
                               r"cifar10 has a fixed input size \(3×32×32\)"),
        "input-size-no-dataset": (["--input-size", "32"], "pass --dataset"),
    }[case]
    code = cli("run", ckpt, *args, "--sigma", "0.25", "--out", tmp_path / "r.tsv", "--quiet",
               "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ")
    assert re.search(expected, err), err
    assert not (tmp_path / "r.tsv").exists()
