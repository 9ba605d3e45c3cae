"""Certified-accuracy plots: formats, atomic writing, input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from certify.errors import UserError
from certify.plot import plot_certified_accuracy
from certify.results import Results


def make(radius, correct) -> Results:
    n = len(radius)
    return Results(
        idx=np.arange(n),
        label=np.zeros(n, dtype=np.int64),
        predict=np.where(np.asarray(correct) == 1, 0, -1),
        radius=np.asarray(radius, dtype=float),
        correct=np.asarray(correct),
        time=np.ones(n),
    )


RUNS = [make([0.1, 0.5, 0.9, 0.0], [1, 1, 1, 0]), make([0.3, 1.2, 0.0, 0.7], [1, 1, 0, 1])]


def test_png_and_pdf(tmp_path: Path) -> None:
    png = plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "curve.png", title="CIFAR-10")
    assert png == tmp_path / "curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "curve.pdf", norm="linf",
                                  max_radius=0.5)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.pdf", "curve.png"]


def test_pdf_is_reproducible(tmp_path: Path) -> None:
    a = plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "a.pdf").read_bytes()
    b = plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "b.pdf").read_bytes()
    assert a == b


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unsupported extension '\.jpg'"):
        plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "curve.jpg")
    with pytest.raises(UserError, match="does not exist"):
        plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "missing" / "curve.png")
    with pytest.raises(UserError, match="positive"):
        plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "curve.png", max_radius=0.0)
    with pytest.raises(ValueError):
        plot_certified_accuracy(RUNS, ["a"], tmp_path / "curve.png")
    assert list(tmp_path.iterdir()) == []


def test_all_abstain_still_plots(tmp_path: Path) -> None:
    out = plot_certified_accuracy([make([0.0, 0.0], [0, 0])], ["none"], tmp_path / "z.png")
    assert out.stat().st_size > 0


def test_run_names_keep_the_whole_file_name_and_tell_equal_names_apart() -> None:
    from certify.cli.plot import run_names

    reference = [Path("noise_0.25/test/sigma_0.25"), Path("noise_0.50/test/sigma_0.50"),
                 Path("noise_1.00/test/sigma_1.00")]
    assert run_names(reference) == ["sigma_0.25", "sigma_0.50", "sigma_1.00"]  # not 3× "sigma_0"
    assert run_names([Path("r/seed0/ce.tsv"), Path("r/seed1/ce.tsv"), Path("r/seed1/ldam.tsv")]) \
        == ["seed0/ce", "seed1/ce", "ldam"]
    assert run_names([Path("a.tsv"), Path("a.tsv")]) == ["a", "a"]  # nothing left to tell apart


def test_certify_without_arguments_prints_the_help(capsys) -> None:
    import pytest

    from certify.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == ""
    assert out.startswith("Usage: certify") and "\n  run " in out
