"""Models brought as files: torch.export programs and TorchScript archives, and 'certify export'."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint
from datafactory import write_cifar10_dataset
from test_cli import cli, rows_without_time
from torch import nn

from certify.checkpoint import load_checkpoint, save_checkpoint
from certify.data import dataset_info, load_dataset
from certify.results import read_sidecar

CIFAR = dataset_info("cifar10")
SMALL_N = ("--n0", "8", "--n", "32", "--quiet")


class Normalized(nn.Module):
    """The input contract: pixels in [0, 1] come in, the model normalizes them itself."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class Memorizer(nn.Module):
    """Knows the labels of exactly these images and answers class 0 for any other input, so which
    inputs it gets right is known exactly."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10):
        super().__init__()
        self.register_buffer("images", images.flatten(1))
        self.register_buffer("classes", nn.functional.one_hot(labels, num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distances = ((x.flatten(1)[:, None, :] - self.images[None]) ** 2).sum(-1)
        return (distances < 1e-6).float() @ self.classes


def export(model: nn.Module, path: Path, shape: tuple[int, ...], batch: int | None = None) -> Path:
    """torch.export with a dynamic batch dimension, or a fixed one of ``batch``."""
    example = torch.rand(batch or 2, *shape)
    dynamic = None if batch else ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic), path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(capsys) -> str:
    """The one line a refused command prints (no traceback, nothing else)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Path:
    write_cifar10_dataset(tmp_path / "cifar", n_per_batch=1, n_test=6)
    return tmp_path / "cifar"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> dict[str, Path]:
    """A torchvision ResNet-18 with its normalization inside, random weights, in three files: a
    torch.export program with a dynamic batch, one exported for batches of exactly 4, and
    TorchScript under our checkpoints' extension (the content decides, not the name)."""
    import torchvision

    root = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    model = Normalized(torchvision.models.resnet18(num_classes=10), CIFAR.mean, CIFAR.std).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.trace(model, torch.rand(2, 3, 32, 32)), root / "resnet.pt")
    return {"export": export(model, root / "resnet.pt2", (3, 32, 32)),
            "fixed": export(model, root / "fixed.pt2", (3, 32, 32), batch=4),
            "torchscript": root / "resnet.pt"}


def test_export_round_trip_certifies_the_same_rows(small_checkpoint, fake_fmnist, tmp_path, capsys):
    program = tmp_path / "m.pt2"
    assert cli("export", small_checkpoint, "--out", program) == 0
    assert f"certify run {program} --dataset fashion-mnist --sigma 0.25" in capsys.readouterr().out
    # n0 = 8, then 12 + 12 + 8: the program runs batches of two sizes
    common = ("--data-dir", fake_fmnist, "--count", "6", *SMALL_N, "--batch", "12", "--seed", "5")
    assert cli("run", small_checkpoint, "--out", tmp_path / "ckpt.tsv", *common) == 0
    assert cli("run", program, "--dataset", "fashion-mnist", "--sigma", "0.25",
               "--out", tmp_path / "pt2.tsv", *common) == 0
    rows = rows_without_time(tmp_path / "pt2.tsv")
    assert rows == rows_without_time(tmp_path / "ckpt.tsv") and len(rows) == 7
    assert any(float(row[3]) > 0 for row in rows[1:])  # certified radii, not only abstentions
    side = read_sidecar(tmp_path / "pt2.tsv")
    assert side["checkpoint_sha256"] == sha256(program) and side["model_format"] == "torch.export"
    assert side["sigma"] == 0.25 and side["dataset"] == "fashion-mnist"
    # the file is a plain program: torch alone runs it, with the normalization inside
    x = torch.rand(3, 1, 28, 28)
    expected = load_checkpoint(small_checkpoint).build_model().eval()(x)
    assert torch.allclose(torch.export.load(program).module()(x), expected, atol=1e-6)


def test_export_refuses_an_existing_out_and_linf_nets(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    out.write_text("keep me")
    assert cli("export", small_checkpoint, "--out", out) == 2
    assert "exists: pass --force" in error_line(capsys) and out.read_text() == "keep me"
    assert cli("export", small_checkpoint, "--out", out, "--force") == 0
    assert zipfile.is_zipfile(out)
    linf = Path(__file__).parents[1] / "models" / "fmnist-linf-v2-short.pt"
    assert cli("export", linf, "--out", tmp_path / "linf.pt2") == 2
    assert "writes models for randomized smoothing" in error_line(capsys)
    assert not (tmp_path / "linf.pt2").exists()
    assert cli("export", out, "--out", tmp_path / "again.pt2") == 2
    assert "already a torch.export model" in error_line(capsys)


def test_torchvision_model_as_program_and_torchscript(resnet, fake_cifar, tmp_path, capsys):
    """Every file certifies through the CLI with its own hash in the sidecar, and the three files of
    one model give the same rows (the fixed-batch program runs --batch 40 in pieces of 4)."""
    rows = {}
    for kind, path in resnet.items():
        out = tmp_path / f"{kind}.tsv"
        assert cli("run", path, "--dataset", "cifar10", "--sigma", "0.25", "--out", out,
                   "--data-dir", fake_cifar, "--count", "1", "--batch", "40", *SMALL_N) == 0, kind
        side = read_sidecar(out)
        assert side["checkpoint_sha256"] == sha256(path), kind
        assert side["model_format"] == ("torchscript" if kind == "torchscript" else "torch.export")
        assert "warning:" not in capsys.readouterr().err  # the normalization is inside
        rows[kind] = rows_without_time(out)
    assert rows["export"] == rows["fixed"] == rows["torchscript"] and len(rows["export"]) == 2
    assert cli("info", resnet["export"], "--dataset", "cifar10", "--sigma", "0.25") == 0
    shown = capsys.readouterr().out
    assert "torch.export" in shown and sha256(resnet["export"]) in shown


def test_fixed_batch_program_runs_any_batch(resnet):
    ckpt = load_checkpoint(resnet["fixed"], dataset="cifar10", sigma=0.5)
    assert ckpt.batch_range == (4, 4) and ckpt.certification == {"kind": "smoothing", "sigma": 0.5}
    assert (ckpt.mean, ckpt.std, ckpt.input_shape) == ((0.0,) * 3, (1.0,) * 3, (3, 32, 32))
    model = ckpt.build_model()
    x = torch.rand(6, 3, 32, 32)  # 4 + 2 padded to 4
    dynamic = load_checkpoint(resnet["export"], dataset="cifar10", sigma=0.5).build_model()
    logits = model(x)
    assert logits.shape == (6, 10) and torch.allclose(logits, dynamic(x), atol=1e-5)
    assert torch.allclose(model(x[:1]), logits[:1], atol=1e-5)


def test_missing_dataset_or_sigma_is_one_line(resnet, tmp_path, capsys):
    for extra in ((), ("--dataset", "cifar10"), ("--sigma", "0.25")):
        assert cli("run", resnet["export"], "--out", tmp_path / "r.tsv", *extra) == 2
        line = error_line(capsys)
        assert "records neither its dataset nor its noise level: pass --dataset and --sigma" in line
    assert cli("run", resnet["torchscript"], "--out", tmp_path / "r.tsv") == 2
    assert "is a torchscript model" in error_line(capsys)
    assert not (tmp_path / "r.tsv").exists()


def test_wrong_logits_and_wrong_input_shape_are_one_line(fake_cifar, tmp_path, capsys):
    seven = export(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7)), tmp_path / "seven.pt2",
                   (3, 32, 32))
    assert cli("run", seven, "--dataset", "cifar10", "--sigma", "0.25", "--out", tmp_path / "r.tsv",
               "--data-dir", fake_cifar, *SMALL_N) == 2
    assert "returns shape (2, 7) for a batch of 2 cifar10 images; certify needs (2, 10)" in \
        error_line(capsys)
    gray = export(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), tmp_path / "gray.pt2",
                  (1, 28, 28))
    assert cli("run", gray, "--dataset", "cifar10", "--sigma", "0.25", "--out", tmp_path / "r.tsv",
               "--data-dir", fake_cifar, *SMALL_N) == 2
    assert "takes inputs of shape ?×1×28×28; cifar10 batches are N×3×32×32" in error_line(capsys)


def test_a_zip_that_is_no_model_is_one_line(tmp_path, capsys):
    path = tmp_path / "notes.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "not a model")
    assert cli("run", path, "--dataset", "cifar10", "--sigma", "0.25", "--out", tmp_path / "r.tsv") == 2
    assert "is a zip archive but not a model" in error_line(capsys)


def rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """``source`` with the members named (below the archive's folder) replaced or added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        folder = old.namelist()[0].split("/")[0]
        for name in old.namelist():
            new.writestr(name, replace.pop(name.split("/", 1)[1], old.read(name)))
        for name, data in replace.items():
            new.writestr(f"{folder}/{name}", data)
    return target


class Payload:
    """Unpickling this would create a marker directory."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_and_compiled_code_are_refused_without_running(tmp_path, capsys):
    """torch.export.load alone would unpickle this payload (it retries without weights_only)."""
    program = export(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), tmp_path / "ok.pt2",
                     (3, 32, 32))
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save((Payload(str(marker)),), payload)
    evil = rewrite_zip(program, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": payload.getvalue()})
    assert cli("run", evil, "--dataset", "cifar10", "--sigma", "0.25", "--out", tmp_path / "r.tsv") == 2
    assert "contains pickled Python objects (code), which certify never executes" in error_line(capsys)
    assert not marker.exists()
    compiled = rewrite_zip(program, tmp_path / "aoti.pt2", {"data/aotinductor/model/model.so": b"\x7fELF"})
    assert cli("run", compiled, "--dataset", "cifar10", "--sigma", "0.25", "--out", tmp_path / "r.tsv") == 2
    assert "compiled AOTInductor library (native code)" in error_line(capsys)


class ShapeArithmetic(nn.Module):
    """A graph with symbolic shape expressions and a recorded guard (2·(n//2) + 1 ≤ 3n)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return flat[:, :10] + flat.reshape(-1)[: x.shape[0] // 2 * 2 + 1].sum()


def test_python_hidden_in_the_graph_json_is_never_run(fake_cifar, tmp_path, capsys):
    """torch.export.load evaluates shape expressions with sympify (eval), and module() execs the
    recorded guards: a crafted graph JSON could run code either way."""
    program = tmp_path / "shapes.pt2"
    example = torch.rand(4, 3, 32, 32)
    torch.export.save(torch.export.export(ShapeArithmetic(), (example,),
                                          dynamic_shapes=({0: torch.export.Dim.AUTO},)), program)
    with zipfile.ZipFile(program) as archive:
        graph = next(archive.read(n) for n in archive.namelist() if n.endswith("models/model.json"))
    assert b"Symbol(" in graph and b'"guards_code": ["' in graph  # both hiding places exist
    marker = tmp_path / "pwned"
    code = f"__import__('os').mkdir({str(marker)!r})".encode()
    in_expression = rewrite_zip(program, tmp_path / "expr.pt2",
                                {"models/model.json": graph.replace(b"Symbol(", code + b" or Symbol(", 1)})
    assert cli("run", in_expression, "--dataset", "cifar10", "--sigma", "0.25",
               "--out", tmp_path / "r.tsv") == 2
    assert "a shape expression in its graph is not plain arithmetic" in error_line(capsys)
    in_guard = rewrite_zip(program, tmp_path / "guard.pt2",
                           {"models/model.json": graph.replace(b'"guards_code": ["',
                                                               b'"guards_code": ["' + code + b" or ", 1)})
    assert cli("run", in_guard, "--dataset", "cifar10", "--sigma", "0.25", "--out", tmp_path / "r.tsv",
               "--data-dir", fake_cifar, "--count", "1", *SMALL_N) == 0
    assert not marker.exists()


def test_normalization_warning_fires_only_for_a_model_that_expects_normalized_inputs(
        fake_fmnist, tmp_path, capsys):
    info = dataset_info("fashion-mnist")
    images, labels = zip(*load_dataset("fashion-mnist", "test", data_dir=fake_fmnist), strict=True)
    pixels, labels_t = torch.stack(images), torch.tensor(labels)
    normalized = (pixels - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1)
    files = {"right": export(Memorizer(pixels, labels_t), tmp_path / "right.pt2", (1, 28, 28)),
             "wrong": export(Memorizer(normalized, labels_t), tmp_path / "wrong.pt2", (1, 28, 28))}
    for name, path in files.items():
        assert cli("run", path, "--dataset", "fashion-mnist", "--sigma", "0.25", "--count", "1",
                   "--out", tmp_path / f"{name}.tsv", "--data-dir", fake_fmnist, *SMALL_N) == 0
        warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        if name == "right":
            assert warned == []
        else:
            assert len(warned) == 1 and "classifies 12 of the first 12 fashion-mnist images right" \
                in warned[0] and "put the normalization inside the model" in warned[0]


def test_our_checkpoints_still_load_as_before(tmp_path):
    """Content decides: a torch.save archive with a .pt2 name is still our checkpoint."""
    path = save_checkpoint(make_checkpoint(width=4, hidden=16), tmp_path / "looks-exported.pt2")
    assert load_checkpoint(path).arch == "small_cnn"
