"""Fast inference for certification: channels_last, torch.compile and the full-batch mode they need.

A faster classifier must give the same votes: the full-batch mode may only pad, never count the
padding, and channels_last or compilation may change outputs in the last bits only.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_checkpoint
from test_cli import cli, rows_without_time
from torch import nn

from certify.checkpoint import save_checkpoint
from certify.results import read_sidecar
from certify.smoothing import SequentialSmooth, Smooth
from certify.smoothing.inference import ChannelsLast, fast_classifier


class ShapeRecorder(nn.Module):
    """A fixed random linear classifier that records the batch sizes it is called with."""

    def __init__(self, shape: tuple[int, ...], classes: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(classes, int(torch.tensor(shape).prod()), generator=g)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return x.flatten(1) @ self.weight.T


def test_static_batch_counts_the_same_votes_from_the_same_noise():
    """Full batches change the shapes the classifier sees, not the noise drawn or the votes kept."""
    shape, sigma, batch = (1, 4, 4), 0.7, 64
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    counts, batches = [], []
    for static in (True, False):
        f = ShapeRecorder(shape)
        smooth = Smooth(f, 3, sigma, static_batch=static)
        g = torch.Generator().manual_seed(5)  # one stream for both calls, as certify's n0 then n
        counts.append(smooth._count_votes(x, 150, batch, g).tolist())
        counts.append(smooth._count_votes(x, 20, batch, g).tolist())
        batches.append(f.batches)
    assert counts[0] == counts[2] and counts[1] == counts[3]
    assert sum(counts[0]) == 150 and sum(counts[1]) == 20
    assert batches[0] == [batch] * 4  # 150 samples: two full batches and a padded one; then 20
    assert batches[1] == [64, 64, 22, 20]


def test_static_batch_certify_sees_one_shape_only():
    shape = (1, 4, 4)
    f = ShapeRecorder(shape)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    Smooth(f, 3, 0.5, static_batch=True).certify(x, n0=10, n=300, alpha=0.01, batch_size=128,
                                                 generator=torch.Generator().manual_seed(0))
    assert set(f.batches) == {128}


def test_sequential_static_batch_gives_the_same_results():
    """Sequential noise is drawn per image, whatever the batching: full batches change nothing."""
    shape, sigma = (1, 4, 4), 0.5
    xs = [torch.rand(shape, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    results, batches = [], []
    for static in (False, True):
        f = ShapeRecorder(shape, classes=2, seed=3)
        smooth = SequentialSmooth(f, 2, sigma, radii=(0.1, 0.2), first_round=64, static_batch=static)
        pairs = ((x, torch.Generator().manual_seed(10 + i)) for i, x in enumerate(xs))
        results.append([(r.prediction, r.radius, r.samples)
                        for r in smooth.certify_stream(pairs, 16, 2000, 0.01, 100)])
        batches.append(f.batches)
    assert results[0] == results[1]
    assert set(batches[1]) == {100}
    assert min(batches[0]) < 100  # the test would prove nothing if no batch was short


def test_channels_last_and_compile_match_the_plain_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net.eval()
    x = torch.randn(8, 1, 8, 8)
    expected = net(x)
    fast = fast_classifier(make_copy(net), channels_last=True)
    assert isinstance(fast, ChannelsLast)
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    compiled = fast_classifier(make_copy(net), compile_mode="default")
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="compile mode"):
        fast_classifier(net, compile_mode="fastest")


def make_copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


@pytest.mark.parametrize("method", ["cohen", "sequential", "predict"])
def test_cli_channels_last_writes_the_plain_rows_and_records_it(method, tmp_path, fake_fmnist):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(width=4, hidden=16), ckpt)
    common = ["--data-dir", fake_fmnist, "--n", "200", "--batch", "64", "--quiet", "--seed", "3",
              "--method", method]
    if method != "predict":
        common += ["--n0", "20"]
    plain, fast = tmp_path / "plain.tsv", tmp_path / "fast.tsv"
    assert cli("run", ckpt, "--out", plain, *common) == 0
    assert cli("run", ckpt, "--out", fast, *common, "--channels-last") == 0
    assert rows_without_time(fast) == rows_without_time(plain)
    settings = read_sidecar(fast)
    assert settings["channels_last"] is True and settings["compile"] == "off"
    assert read_sidecar(plain)["channels_last"] is False


def test_cli_compile_writes_the_plain_rows(tmp_path, fake_fmnist):
    """cohen under --compile draws the same noise as without it (full batches are padded, not
    filled with extra draws), so a compiled small CNN on the CPU writes the same rows."""
    ckpt = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(width=4, hidden=16), ckpt)
    common = ["--data-dir", fake_fmnist, "--n0", "20", "--n", "200", "--batch", "64", "--quiet", "--seed", "3"]
    plain, fast = tmp_path / "plain.tsv", tmp_path / "fast.tsv"
    assert cli("run", ckpt, "--out", plain, *common) == 0
    assert cli("run", ckpt, "--out", fast, *common, "--compile", "default") == 0
    assert rows_without_time(fast) == rows_without_time(plain)
    assert read_sidecar(fast)["compile"] == "default"


def test_cli_rejects_an_unknown_compile_mode(tmp_path, fake_fmnist, capsys):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(width=4, hidden=16), ckpt)
    assert cli("run", ckpt, "--out", tmp_path / "r.tsv", "--data-dir", fake_fmnist, "--compile", "fastest") != 0
    assert "fastest" in capsys.readouterr().err


def test_a_compiler_failure_is_one_user_error(monkeypatch):
    """Compilation happens at the first call; its failure names --compile, not a traceback."""
    from certify.errors import UserError

    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong details")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    fast = fast_classifier(nn.Linear(4, 2), compile_mode="default")
    with pytest.raises(UserError, match=r"^--compile default: torch.compile failed \(InvalidCxxCompiler: "
                                        r"No working C\+\+ compiler found\); run without --compile$"):
        fast(torch.zeros(3, 4))
