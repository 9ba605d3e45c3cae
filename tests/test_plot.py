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


def drawn_curves(monkeypatch) -> list[dict]:
    """Record every saved figure's curves (label, x, y, x range) as the plot draws them."""
    import certify.plot as plot

    figures: list[dict] = []
    save = plot._save

    def recording_save(fig, out, fmt):
        ax = fig.axes[0]
        figures.append({"lines": [(ln.get_label(), np.asarray(ln.get_xdata()), np.asarray(ln.get_ydata()))
                                  for ln in ax.lines], "xlim": ax.get_xlim(), "xlabel": ax.get_xlabel()})
        save(fig, out, fmt)

    monkeypatch.setattr(plot, "_save", recording_save)
    return figures


def test_curves_are_the_certified_accuracy_of_each_run(tmp_path: Path, monkeypatch) -> None:
    figures = drawn_curves(monkeypatch)
    plot_certified_accuracy(RUNS, ["a", "b"], tmp_path / "curve.png", max_radius=1.0, norm="linf")
    (fig,) = figures
    assert fig["xlim"] == (0.0, 1.0) and fig["xlabel"] == "ℓ∞ radius"
    assert [label for label, _, _ in fig["lines"]] == ["a", "b"]
    for (_, x, y), correct_radii in zip(fig["lines"], ([0.1, 0.5, 0.9], [0.3, 1.2, 0.7])):
        assert x[0] == 0.0 and x[-1] == 1.0
        # by hand: the share of the 4 rows that are correct with radius ≥ r
        assert np.array_equal(y, [sum(r >= t for r in correct_radii) / 4 for t in x])
    assert fig["lines"][0][2][0] == 0.75 and fig["lines"][0][2][-1] == 0.0  # 3 of 4, none at 1.0
    assert fig["lines"][1][2][-1] == 0.25  # only the radius-1.2 row reaches 1.0


def test_all_abstain_still_plots(tmp_path: Path, monkeypatch) -> None:
    figures = drawn_curves(monkeypatch)
    out = plot_certified_accuracy([make([0.0, 0.0], [0, 0])], ["none"], tmp_path / "z.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    (label, x, y), = fig["lines"]
    assert label == "none" and not y.any()  # a flat line at 0, not a missing one
    assert fig["xlim"] == (0.0, 0.01)  # nothing certified beyond 0: the minimal x range


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


def test_plot_warns_on_runs_that_do_not_compare_and_refuses_an_empty_file(tmp_path, capsys):
    """An interrupted run, different image sets or different N each get a warning line on stderr;
    an empty results file is refused."""
    from certify.plot import PlotSpec, make_plot
    from certify.results import write_sidecar

    def results(name: str, indices: list[int], **sidecar: object) -> Path:
        path = tmp_path / name
        path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "".join(
            f"{i}\t0\t0\t0.5\t1\t0.1\n" for i in indices))
        write_sidecar(path, {"norm": "l2", **sidecar})
        return path

    a = results("a.tsv", [0, 20, 40], n=100000, complete=True, examples=3)
    b = results("b.tsv", [0, 20], n=10000, complete=False, examples=3)
    make_plot(PlotSpec(results=(a, b), out=tmp_path / "p.png"))
    err = capsys.readouterr().err.splitlines()
    assert any("b.tsv is an interrupted run (2 of 3 images)" in line for line in err)
    assert any("different images" in line for line in err)
    assert any("different numbers of samples N (10000, 100000)" in line for line in err)
    make_plot(PlotSpec(results=(a, a), out=tmp_path / "q.png"))
    assert capsys.readouterr().err == ""  # nothing to say about comparable runs
    empty = results("e.tsv", [], complete=True)
    with pytest.raises(UserError, match="no rows"):
        make_plot(PlotSpec(results=(empty,), out=tmp_path / "r.png"))


def test_table_as_csv_and_latex_by_suffix(tmp_path):
    """--table t.csv / t.tex: the same numbers as the Markdown table, the best value unmarked in
    CSV and bold in LaTeX, TeX's special characters escaped."""
    import csv

    from certify.plot import PlotSpec, make_plot
    from certify.results import write_sidecar

    paths = []
    for name, radius in (("run_a.tsv", 0.5), ("run_b.tsv", 0.1)):
        path = tmp_path / name
        path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                        f"0\t0\t0\t{radius}\t1\t0.1\n1\t1\t1\t{radius}\t1\t0.1\n")
        write_sidecar(path, {"norm": "l2", "complete": True, "examples": 2})
        paths.append(path)
    markdown = make_plot(PlotSpec(results=tuple(paths), out=tmp_path / "p.png", radii=(0.0, 0.25),
                                  table_out=tmp_path / "t.csv"))
    rows = list(csv.reader((tmp_path / "t.csv").open()))
    assert rows[0] == ["run", "r=0.00", "r=0.25", "ACR", "abstain", "s/example"]
    assert rows[1][:4] == ["run_a", "1.000", "1.000", "0.500"] and rows[2][2] == "0.000"
    assert "| run_a | 1.000 | 1.000* | 0.500* |" in markdown
    make_plot(PlotSpec(results=tuple(paths), out=tmp_path / "p.png", radii=(0.0, 0.25),
                       table_out=tmp_path / "t.tex"))
    tex = (tmp_path / "t.tex").read_text()
    assert tex.startswith("\\begin{tabular}{lrrrrr}\n\\toprule\n")
    assert "run\\_a & 1.000 & \\textbf{1.000} & \\textbf{0.500} & 0.0\\% & 0.10 \\\\" in tex


def test_figure_style_groups_and_formats(tmp_path: Path, monkeypatch) -> None:
    """Size, font, legend place; a colour and a line style per run beyond ten; seeds grouped into
    a mean curve with a ± std band; SVG and EPS; a curve at accuracy 1 stays inside the axes."""
    import matplotlib.pyplot as plt

    import certify.plot as plot
    from certify.plot_style import FigureStyle, line_style

    looks = {(line_style(k)["color"], line_style(k)["linestyle"]) for k in range(40)}
    assert len(looks) == 40 and line_style(10) == {"color": "C0", "linestyle": "--"}
    seen: list[dict] = []

    def recording_save(fig, out, fmt):
        ax = fig.axes[0]
        legend = ax.get_legend()
        seen.append({"size": tuple(fig.get_size_inches()), "ylim": ax.get_ylim(),
                     "lines": [(ln.get_label(), ln.get_linestyle(), np.asarray(ln.get_ydata())) for ln in ax.lines],
                     "bands": len(ax.collections), "legend": legend,
                     "font": legend.get_texts()[0].get_fontsize() if legend else None})
        plt.close(fig)

    monkeypatch.setattr(plot, "_save", recording_save)
    perfect = make([0.5, 0.5], [1, 1])
    runs = [perfect] * 12
    plot_certified_accuracy(runs, [f"r{k}" for k in range(12)], tmp_path / "a.png", max_radius=1.0,
                            style=FigureStyle(figsize=(5.0, 3.0), font_size=7.0, legend="outside"))
    fig = seen[-1]
    assert fig["size"] == (5.0, 3.0) and fig["font"] == 7.0 and fig["ylim"][1] > 1.0
    assert fig["lines"][10][1] == "--" and fig["lines"][0][1] == "-"
    assert fig["legend"].get_bbox_to_anchor().x0 > 0  # anchored right of the axes
    # two seeds of one setting, one of another: two curves, the first the mean with a band
    half = make([0.5, 0.0], [1, 0])
    plot_certified_accuracy([perfect, half, perfect], ["a", "b", "c"], tmp_path / "g.png",
                            max_radius=1.0, groups=["CE", "CE", "LDAM"])
    fig = seen[-1]
    assert [label for label, _, _ in fig["lines"]] == ["CE", "LDAM"] and fig["bands"] == 1
    assert fig["lines"][0][2][0] == 0.75  # mean of 1.0 and 0.5 at r = 0
    plot_certified_accuracy([perfect], ["x"], tmp_path / "n.png", style=FigureStyle(legend="none"))
    assert seen[-1]["legend"] is None
    with pytest.raises(UserError, match="--group for 2 files"):
        plot_certified_accuracy([perfect, half], ["a", "b"], tmp_path / "e.png", groups=["CE"])
    monkeypatch.undo()
    for suffix, magic in ((".svg", b"<?xml"), (".eps", b"%!PS-Adobe")):
        out = plot_certified_accuracy([perfect], ["x"], tmp_path / f"f{suffix}")
        assert out.read_bytes().startswith(magic)


def test_reliability_diagram_keeps_its_legend_off_the_bars(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.figure
    import torch

    from certify.calibration import reliability_diagram

    seen = []
    real = matplotlib.figure.Figure.savefig

    def recording(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen.append((ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted()).y1,
                     ax.get_ylim(), kwargs.get("bbox_inches")))
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)
    conf = torch.linspace(0.5, 1.0, 200)
    reliability_diagram(conf, torch.ones(200, dtype=torch.bool), tmp_path / "r.png", title="a long title " * 3)
    ((legend_top, ylim, bbox),) = seen
    assert legend_top < 0 and ylim[1] > 1.0 and bbox == "tight"  # below the axes; bars at 1 visible
