"""Long-tailed evaluation: many/medium/few-shot groups by training count, certified accuracy per
class from a results table, its bar chart, and ``certify eval``'s report of both."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint
from test_cli import cli

from certify.checkpoint import file_sha256, save_checkpoint
from certify.errors import UserError
from certify.evaluation import (
    Predictions,
    default_class_radii,
    format_report,
    per_class_certified_accuracy,
    report,
    shot_accuracy,
    shot_groups,
)
from certify.plot import plot_per_class_certified
from certify.results import Results, ResultWriter, write_sidecar

FMNIST_LT_100 = [6000, 3597, 2155, 1292, 774, 464, 278, 166, 99, 60]  # n_max 6000, ρ = 100


def results(label, predict, radius, correct) -> Results:
    n = len(label)
    return Results(idx=np.arange(n), label=np.asarray(label), predict=np.asarray(predict),
                   radius=np.asarray(radius, dtype=float), correct=np.asarray(correct),
                   time=np.ones(n))


# ------------------------------------------------------------------------------ shot groups


def test_default_thresholds_scale_oltr_to_the_dataset():
    g = shot_groups(FMNIST_LT_100)
    assert g["thresholds"] == {"many": 1200, "few": 240}
    assert g["classes"] == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    # CIFAR-100-LT (n_max 500): exactly OLTR's 100/20 and the 35/35/30 classes at ρ = 100
    # (docs/long_tail_noisy.md#shot-groups)
    cifar = shot_groups([int(500 * 0.01 ** (i / 99)) for i in range(100)])
    assert cifar["thresholds"] == {"many": 100, "few": 20}
    assert [len(cifar["classes"][s]) for s in ("many", "medium", "few")] == [35, 35, 30]


def test_explicit_thresholds_put_boundary_counts_in_medium():
    g = shot_groups([101, 100, 50, 20, 19, 0], many=100, few=20)
    assert g["classes"] == {"many": [0], "medium": [1, 2, 3], "few": [4, 5]}
    assert g["default"] == {"many": False, "few": False}
    half = shot_groups(FMNIST_LT_100, many=3000)  # few still defaults to n_max/25
    assert half["thresholds"] == {"many": 3000, "few": 240}
    assert half["classes"]["many"] == [0, 1] and half["classes"]["medium"] == [2, 3, 4, 5, 6]
    with pytest.raises(UserError, match="must not exceed"):
        shot_groups(FMNIST_LT_100, many=10, few=20)


def test_shot_accuracy_skips_nan_classes_and_empty_groups_are_nan():
    groups = {"many": [0, 1], "medium": [2, 3], "few": []}
    acc = shot_accuracy([0.5, math.nan, 0.2, 0.4], groups)
    assert acc["many"] == 0.5 and acc["medium"] == pytest.approx(0.3) and math.isnan(acc["few"])
    # the shot_groups dict works as well; a group whose every class is nan is nan too
    acc = shot_accuracy([1.0, 0.0, math.nan], shot_groups([10, 5, 1], many=6, few=2))
    assert acc["many"] == 1.0 and acc["medium"] == 0.0 and math.isnan(acc["few"])


def test_report_adds_shots_from_training_counts():
    # 4 classes; class 3 has no test example. Predictions: class 0 right twice, class 1 right
    # once of two, class 2 wrong.
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    predicted = torch.tensor([0, 0, 1, 0, 1, 0])
    probs = torch.full((6, 4), 0.1).scatter(1, predicted[:, None], 0.7)
    metrics = report(Predictions(probs, labels), k=1, class_counts=[500, 120, 30, 10])
    assert metrics["class_counts"] == [500, 120, 30, 10]
    assert metrics["shot_thresholds"]["many"] == 100 and metrics["shot_thresholds"]["few"] == 20
    shots = metrics["shots"]
    assert shots["many"] == {"threshold": ">100", "classes": [0, 1], "accuracy": 0.75}
    assert shots["medium"] == {"threshold": "20-100", "classes": [2], "accuracy": 0.0}
    assert shots["few"]["classes"] == [3] and math.isnan(shots["few"]["accuracy"])
    text = format_report(metrics, ("a", "b", "c", "d"))
    assert ">100" in text and "2 classes: 0 1" in text and "Prior-LT" in text
    assert any(line.split()[:3] == ["a", "1.0000", "500"] for line in text.splitlines())
    assert "shots" not in report(Predictions(probs, labels), k=1)
    with pytest.raises(UserError, match="3 training class counts for a 4-class model"):
        report(Predictions(probs, labels), k=1, class_counts=[5, 4, 3])


# ------------------------------------------------------------------ per-class certified accuracy


HAND = results(label=[0, 0, 0, 1, 1, 1],
               predict=[0, 0, -1, 1, 0, 1],  # row 2 abstains, row 4 is wrong
               radius=[0.5, 0.2, 0.0, 0.3, 0.1, 0.0],
               correct=[1, 1, 0, 1, 0, 1])


def test_per_class_certified_accuracy_by_hand():
    table = per_class_certified_accuracy(HAND, 3, [0.0, 0.25, 0.5])
    np.testing.assert_allclose(table[:2], [[2 / 3, 1 / 3, 1 / 3],  # radius 0.5 ≥ 0.5 counts
                                           [2 / 3, 1 / 3, 0.0]])  # the radius-0 correct row counts at 0
    assert table.shape == (3, 3) and np.isnan(table[2]).all()  # class 2 has no rows
    # the rows of every class together give the usual certified accuracy
    rows = np.bincount(HAND.label, minlength=3)
    np.testing.assert_allclose(np.nansum(table * rows[:, None], 0) / len(HAND),
                               HAND.certified_accuracy([0.0, 0.25, 0.5]))


def test_labels_outside_the_classes_are_a_user_error():
    with pytest.raises(UserError, match=r"idx 3 has label 1, outside the model's classes 0\.\.0"):
        per_class_certified_accuracy(HAND, 1, [0.0])
    with pytest.raises(UserError, match="label -1"):
        per_class_certified_accuracy(results([0, -1], [0, 0], [0.1, 0.1], [1, 0]), 2, [0.0])


def test_default_class_radii():
    assert default_class_radii(HAND) == [0.0, 0.25, 0.5]  # grid 0..0.75, largest radius 0.5
    big = results([0, 1], [0, 1], [1.6, 0.3], [1, 1])  # positive grid 0.25..1.5 (6 points)
    assert default_class_radii(big) == [0.0, 0.5, 1.0]
    assert default_class_radii(results([0], [-1], [0.0], [0])) == [0.0, 0.25]
    assert default_class_radii(results([0], [0], [0.03], [1]), "linf") == [0.0, 0.01, 0.02]


# ------------------------------------------------------------------------------ plot


def test_per_class_plot(tmp_path: Path):
    table = per_class_certified_accuracy(HAND, 3, [0.0, 0.25])
    out = plot_per_class_certified([table, table / 2], ["a", "b"], [0.0, 0.25], tmp_path / "c.png",
                                   class_names=["x", "y", "z"], class_counts=[50, 10, 2],
                                   title="t")
    assert out == tmp_path / "c.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 1000
    pdf = plot_per_class_certified([table], ["a"], [0.0, 0.25], tmp_path / "c.pdf", norm="linf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(UserError, match=r"unsupported extension '\.txt'"):
        plot_per_class_certified([table], ["a"], [0.0, 0.25], tmp_path / "c.txt")
    with pytest.raises(ValueError, match="one column per radius"):
        plot_per_class_certified([table], ["a"], [0.0], tmp_path / "d.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pdf", "c.png"]


# ------------------------------------------------------------------------------ certify eval

# The fake test split's labels are (3i + 1) mod 10: idx 0..5 are classes 1 4 7 0 3 6.
ROWS = [(0, 1, 1, 0.4, 1), (1, 4, 4, 0.1, 1), (2, 7, -1, 0.0, 0), (3, 0, 0, 0.3, 1),
        (4, 3, 5, 0.2, 0), (5, 6, 6, 0.6, 1)]


@pytest.fixture
def lt_checkpoint(tmp_path: Path) -> Path:
    ckpt = make_checkpoint(width=4, hidden=16)
    ckpt.training["class_counts"] = list(FMNIST_LT_100)
    return save_checkpoint(ckpt, tmp_path / "lt.pt")


def write_tsv(path: Path, rows=ROWS, sidecar: dict | None = None) -> Path:
    with ResultWriter(path) as w:
        for idx, label, predict, radius, correct in rows:
            w.write(idx, label, predict, radius, correct, 0.1)
    if sidecar is not None:
        write_sidecar(path, sidecar)
    return path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_eval_reports_shot_groups_from_the_checkpoint(lt_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert cli("eval", lt_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines() if "-shot" in line.split()[0]}
    assert lines["many-shot"].split()[1] == ">1200" and lines["many-shot"].endswith("4 classes: 0 1 2 3")
    assert lines["medium-shot"].split()[1] == "240-1200" and lines["medium-shot"].endswith("classes: 4 5 6")
    assert lines["few-shot"].split()[1] == "<240" and lines["few-shot"].endswith("classes: 7 8 9")
    assert any(line.split()[0] == "Sneaker" and line.split()[-1] == "166" for line in text.splitlines())
    metrics = json.loads(out.read_text())
    assert metrics["class_counts"] == FMNIST_LT_100
    assert metrics["shot_thresholds"]["many"] == 1200 and metrics["shot_thresholds"]["few"] == 240
    per_class = metrics["per_class_accuracy"]
    for shot, classes in (("many", [0, 1, 2, 3]), ("medium", [4, 5, 6]), ("few", [7, 8, 9])):
        assert metrics["shots"][shot]["classes"] == classes
        assert metrics["shots"][shot]["accuracy"] == pytest.approx(np.mean([per_class[c] for c in classes]))
    assert "certified" not in metrics

    assert cli("eval", lt_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out,
               "--many", "3000", "--few", "100") == 0
    shots = json.loads(out.read_text())["shots"]
    assert [shots[s]["classes"] for s in ("many", "medium", "few")] == [[0, 1], [2, 3, 4, 5, 6, 7], [8, 9]]
    assert shots["many"]["threshold"] == ">3000"


def test_eval_without_counts_says_groups_are_skipped(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert cli("eval", small_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out) == 0
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if "shot" in line] == [
        "shot groups: skipped (training class counts not recorded in the checkpoint)"]
    metrics = json.loads(out.read_text())
    assert metrics["shots"] is None and metrics["class_counts"] is None


def test_eval_with_results_adds_certified_accuracy_per_class(lt_checkpoint, fake_fmnist, tmp_path,
                                                             capsys):
    tsv = write_tsv(tmp_path / "r.tsv", sidecar={"checkpoint_sha256": file_sha256(lt_checkpoint),
                                                 "norm": "l2", "split": "test"})
    out, png = tmp_path / "e.json", tmp_path / "classes.png"
    assert cli("eval", lt_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out,
               "--results", tsv, "--radius", "0.25", "--radius", "0", "--class-plot", png) == 0
    text = capsys.readouterr().out
    cert = json.loads(out.read_text())["certified"]
    assert cert["radii"] == [0.0, 0.25] and cert["norm"] == "l2" and cert["rows"] == 6
    assert cert["results"] == str(tsv) and cert["split"] == "test"
    expected = {0: [1, 1], 1: [1, 1], 3: [0, 0], 4: [1, 0], 6: [1, 1], 7: [0, 0]}
    for c, row in enumerate(cert["per_class"]):
        if c in expected:
            assert row == expected[c], c
        else:
            assert row == [None, None], c  # no rows: strict JSON writes null, not NaN
    assert cert["overall"] == pytest.approx([4 / 6, 3 / 6])
    assert cert["shots"]["many"]["accuracy"] == pytest.approx([2 / 3, 2 / 3])  # classes 0 1 3 (2: no rows)
    assert cert["shots"]["medium"]["accuracy"] == pytest.approx([1.0, 0.5])  # classes 4 6
    assert cert["shots"]["few"]["accuracy"] == [0.0, 0.0]  # class 7 only
    table = {line.split()[0]: line.split() for line in text.splitlines()
             if line.startswith("  ") and len(line.split()) == 5}
    assert table["Sneaker"] == ["Sneaker", "166", "1", "0.0000", "0.0000"]
    assert table["Coat"] == ["Coat", "774", "1", "1.0000", "0.0000"]
    assert table["Bag"] == ["Bag", "99", "0", "n/a", "n/a"]
    assert "ℓ2=0.25" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # default radii: 0 and grid points a third and two thirds of the way to 0.6
    assert cli("eval", lt_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu", "--json", out,
               "--results", tsv) == 0
    assert json.loads(out.read_text())["certified"]["radii"] == [0.0, 0.25, 0.5]


def test_run_evaluation_is_what_the_command_prints_and_writes(lt_checkpoint, fake_fmnist, tmp_path,
                                                              capsys):
    from certify.evaluation import EvalSpec, format_evaluation, run_evaluation

    tsv = write_tsv(tmp_path / "r.tsv", sidecar={"checkpoint_sha256": file_sha256(lt_checkpoint),
                                                 "norm": "l2", "split": "test"})
    spec = EvalSpec(checkpoint=lt_checkpoint, results=tsv, radii=(0.0, 0.25),
                    json_out=tmp_path / "lib.json", data_dir=str(fake_fmnist))
    evaluation = run_evaluation(spec)
    assert evaluation.class_counts == FMNIST_LT_100 and evaluation.classes[7] == "Sneaker"
    assert evaluation.certified["per_class"][4] == [1, 0]  # Coat: correct at 0.1 only
    assert cli("eval", lt_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu", "--results", tsv,
               "--radius", "0", "--radius", "0.25", "--json", tmp_path / "cli.json") == 0
    assert capsys.readouterr().out == format_evaluation(evaluation) + "\n"
    library, command = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("lib", "cli"))
    assert library.pop("checkpoint") == command.pop("checkpoint") == str(lt_checkpoint)
    assert json.dumps(library) == json.dumps(command)  # nan-safe equality
    with pytest.raises(UserError, match="--k must be below the number of classes"):
        run_evaluation(EvalSpec(checkpoint=lt_checkpoint, k=10))
    with pytest.raises(UserError, match=r"cannot write .*o\.json: directory .* does not exist"):
        run_evaluation(EvalSpec(checkpoint=lt_checkpoint, json_out=tmp_path / "no" / "o.json"))


@pytest.mark.parametrize("case", ["hash", "plot_without_results", "label"])
def test_eval_errors(case, lt_checkpoint, fake_fmnist, tmp_path, capsys):
    args = ["eval", lt_checkpoint, "--data-dir", fake_fmnist, "--device", "cpu"]
    if case == "hash":
        tsv = write_tsv(tmp_path / "r.tsv", sidecar={"checkpoint_sha256": "0" * 64, "norm": "l2"})
        args += ["--results", tsv]
        expect = "certified with another checkpoint"
    elif case == "plot_without_results":
        args += ["--class-plot", tmp_path / "c.png"]
        expect = "--class-plot"
    else:
        tsv = write_tsv(tmp_path / "r.tsv", rows=ROWS + [(6, 10, 10, 0.2, 1)])  # no sidecar
        args += ["--results", tsv]
        expect = "idx 6 has label 10, outside the model's classes 0..9"
    capsys.readouterr()
    assert cli(*args) == 2
    captured = capsys.readouterr()
    assert expect in one_error_line(captured.err) and captured.out == ""
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------------ certify plot --per-class

def test_plot_per_class_compares_runs_class_by_class(lt_checkpoint, tmp_path, capsys):
    side = {"dataset": "fashion-mnist", "norm": "l2"}
    a = write_tsv(tmp_path / "a.tsv", sidecar=side)
    b = write_tsv(tmp_path / "b.tsv", rows=[(0, 1, 1, 0.9, 1), (1, 4, 2, 0.0, 0)], sidecar=side)
    out = tmp_path / "classes.png"
    assert cli("plot", a, b, "--label", "A", "--label", "B", "--per-class", "--radii", "0,0.35",
               "--counts-from", lt_checkpoint, "--out", out) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| class | training images | A r=0 | B r=0 | A r=0.35 | B r=0.35 |"
    rows = {line.split(" | ")[0][2:]: line for line in table[2:]}
    # class 1 (Trouser): A certifies its one row at 0.4, B at 0.9; class 4 (Coat): A right at 0.1, B wrong
    assert rows["Trouser"] == f"| Trouser | {FMNIST_LT_100[1]} | 1.000 | 1.000 | 1.000 | 1.000 |"
    assert rows["Coat"] == f"| Coat | {FMNIST_LT_100[4]} | 1.000 | 0.000 | 0.000 | 0.000 |"
    assert rows["Dress"].endswith("| 0.000 | nan | 0.000 | nan |")  # class 3: wrong in A, absent in B
    assert rows["Sandal"].endswith("| nan | nan | nan | nan |")  # class 5: in neither
    assert out.stat().st_size > 0


def test_plot_per_class_errors(lt_checkpoint, tmp_path, capsys):
    bare = write_tsv(tmp_path / "bare.tsv")  # no sidecar: no dataset to name the classes
    assert cli("plot", bare, "--per-class", "--out", tmp_path / "x.png") == 2
    assert "sidecars" in one_error_line(capsys.readouterr().err)
    good = write_tsv(tmp_path / "good.tsv", sidecar={"dataset": "fashion-mnist"})
    assert cli("plot", good, "--counts-from", lt_checkpoint, "--out", tmp_path / "y.png") == 2
    assert "--per-class" in one_error_line(capsys.readouterr().err)


def test_make_plot_returns_the_per_class_table(lt_checkpoint, tmp_path):
    from certify.plot import PlotSpec, make_plot

    side = {"dataset": "fashion-mnist", "norm": "l2"}
    a = write_tsv(tmp_path / "a.tsv", sidecar=side)
    table = make_plot(PlotSpec(results=[a], out=tmp_path / "c.png", radii=[0.0, 0.35],
                               per_class=True, counts_from=lt_checkpoint, table_out=tmp_path / "t.md"))
    assert (tmp_path / "t.md").read_text() == table
    assert f"| Trouser | {FMNIST_LT_100[1]} | 1.000 | 1.000 |" in table.splitlines()
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="1 --label for 2 files"):
        make_plot(PlotSpec(results=[a, a], out=tmp_path / "d.png", labels=["x"]))
