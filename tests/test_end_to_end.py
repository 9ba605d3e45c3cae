"""The whole pipeline on real Fashion-MNIST (Debian package dataset-fashion-mnist): train, certify, plot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from certify.cli import main
from certify.results import read_results

FMNIST = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("CI"),
                       reason="needs the Debian package dataset-fashion-mnist"),
]


def cli(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def test_train_certify_plot_on_real_data(tmp_path, capsys):
    ckpt, tsv, png = tmp_path / "m.pt", tmp_path / "r.tsv", tmp_path / "curve.png"
    assert cli("train", "--arch", "lenet", "--sigma", "0.25", "--epochs", "1", "--train-count", "12000",
               "--eval-count", "2000", "--lr", "0.05", "--quiet", "--out", ckpt) == 0
    assert cli("run", ckpt, "--out", tsv, "--skip", "250", "--n", "500", "--batch", "500", "--quiet") == 0
    assert cli("plot", tsv, "--out", png) == 0
    table = capsys.readouterr().out
    results = read_results(tsv)
    assert len(results) == 40
    from certify.checkpoint import load_checkpoint

    assert load_checkpoint(ckpt).metrics["test_acc"] > 0.6  # chance is 0.1
    assert results.clean_accuracy() > 0.5
    assert results.certified_accuracy([0.1])[0] > 0.3
    assert results.acr() > 0.05
    assert png.stat().st_size > 10_000 and "| r |" in table and "ACR" in table
