"""The certification-method registry and ``certify run --method``: options, errors, determinism.

Sequential rows must be a function of (seed, index) alone: the same across --batch, across how
images were grouped into forward batches, after kill-and-resume and across shards + merge.
``cohen`` must write the rows it wrote before methods existed.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_checkpoint
from test_cli import cli, rows_without_time

from certify.checkpoint import save_checkpoint
from certify.errors import UserError
from certify.methods import (
    METHODS,
    CertificationMethod,
    Cohen,
    RunContext,
    Sequential,
    all_options,
    example_generator,
    method_for,
)
from certify.results import read_results, read_sidecar
from certify.smoothing import SequentialSmooth, Smooth

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def seq_args(ckpt: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return ["run", ckpt, "--out", out, "--data-dir", data, "--method", "sequential", "--n0", "20",
            "--n", "3000", "--first-round", "64", "--radii", "0.1,0.2", "--quiet", "--seed", "3",
            *extra]


@pytest.fixture
def confident_checkpoint(tmp_path: Path) -> Path:
    """A small_cnn whose last bias favours class 3 by a varying margin: rounds stop at different sizes."""
    ckpt = make_checkpoint(width=4, hidden=16, sigma=0.25)
    bias_key = [k for k in ckpt.state_dict if k.endswith("bias")][-1]
    ckpt.state_dict[bias_key] = torch.zeros(10)
    ckpt.state_dict[bias_key][3] = 0.05
    path = tmp_path / "confident.pt"
    save_checkpoint(ckpt, path)
    return path


# ------------------------------------------------------------------------------------- registry

def test_shared_options_are_declared_once():
    for name, (option, methods) in all_options().items():
        for method in methods:
            (same,) = [o for o in METHODS[method].options if o.name == name]
            assert same == option, (name, method)
    shared = {n for n, (_, ms) in all_options().items() if {"cohen", "sequential"} <= set(ms)}
    assert shared == {"n0", "n", "alpha", "precision", "channels_last", "compile"}


def test_each_method_records_its_resume_keys_in_the_sidecar():
    ckpt = SimpleNamespace(certification={"kind": "smoothing", "sigma": 0.25}, num_classes=10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    for name in ("cohen", "sequential"):
        method = METHODS[name](ckpt, model, METHODS[name].resolve({}), RunContext())
        described = method.describe()
        assert set(METHODS[name].resume_keys) <= set(described), name
        assert (described["method"], described["certifier"]) == (name, "smoothing")


def test_default_methods_and_refusals():
    smoothing = SimpleNamespace(certification={"kind": "smoothing"}, path="m.pt")
    linf = SimpleNamespace(certification={"kind": "linf_dist"}, path="l.pt")
    assert method_for(smoothing).name == "cohen"
    assert method_for(linf).name == "linf-bounds"
    assert method_for(smoothing, "sequential") is Sequential
    with pytest.raises(UserError, match="certifies smoothing checkpoints.*use linf-bounds"):
        method_for(linf, "sequential")
    with pytest.raises(UserError, match="unknown certification method"):
        method_for(smoothing, "nope")


def test_a_new_method_is_one_class_and_one_registry_line(small_checkpoint, fake_fmnist, tmp_path,
                                                          monkeypatch):
    """A method the runner has never heard of certifies through certify run, with its own column."""

    class Constant(CertificationMethod):
        name = "constant"
        summary = "always class 3 at radius 0.5"
        kinds = ("smoothing",)
        norm = "l2"
        columns = ("note",)

        def certify_stream(self, examples):
            from certify.methods import Row
            for idx, _ in examples:
                yield Row(3, 0.5, 0.0, {"note": idx * 2})

    monkeypatch.setitem(METHODS, "constant", Constant)
    from certify.runner import RunSpec, run_certification

    out = tmp_path / "c.tsv"
    run_certification(RunSpec(checkpoint=small_checkpoint, out=out, data_dir=fake_fmnist,
                              method="constant", count=4), progress=False)
    res = read_results(out)
    assert res.predict.tolist() == [3] * 4 and res.columns["note"].tolist() == [0, 2, 4, 6]
    assert read_sidecar(out)["method"] == "constant"


# ------------------------------------------------------------------------------------ CLI errors

@pytest.mark.parametrize("extra, message", [
    (["--radii", "0.5"], "--radii: does not apply to method cohen (its options: --n0, --n, "
                         "--alpha, --precision, --channels-last, --compile)"),
    (["--bound", "interval"], "--bound: does not apply to method cohen"),
    (["--method", "sequential", "--radii", "0.5,x"], "--radii: expected numbers"),
    (["--method", "sequential", "--radii", "-1"], "--radii: expected positive numbers"),
    (["--method", "sequential", "--futility", "1.5"], "--futility: must be in (0, 1)"),
    (["--method", "sequential", "--n", "0"], "--n: must be at least 1"),
    (["--method", "linf-bounds"], "method linf-bounds certifies linf_dist checkpoints"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(small_checkpoint, fake_fmnist, tmp_path,
                                                           capsys, extra, message):
    out = tmp_path / "r.tsv"
    assert cli("run", small_checkpoint, "--out", out, "--data-dir", fake_fmnist, "--quiet",
               *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------------- sequential, the CLI

def test_sequential_rows_do_not_depend_on_batch_size(confident_checkpoint, fake_fmnist, tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert cli(*seq_args(confident_checkpoint, a, fake_fmnist, "--batch", "1000")) == 0
    assert cli(*seq_args(confident_checkpoint, b, fake_fmnist, "--batch", "37")) == 0
    assert rows_without_time(a) == rows_without_time(b)
    res = read_results(a)
    samples = res.columns["samples"]
    assert len(set(samples.tolist())) > 1  # rounds stopped at different sizes: a real test
    side = read_sidecar(a)
    assert side["estimation_samples"] == int(samples.sum())
    assert side["selection_samples"] == 20 * len(res)
    assert open(a).readline().split() == ["idx", "label", "predict", "radius", "correct", "time",
                                          "samples"]


def test_sequential_rows_do_not_depend_on_grouping(confident_checkpoint, fake_fmnist):
    """Images certified together (sharing batches) give what each gives alone."""
    from certify.checkpoint import load_checkpoint
    from certify.data import load_dataset

    ckpt = load_checkpoint(confident_checkpoint)
    model = ckpt.build_model(torch.device("cpu"))
    data = load_dataset("fashion-mnist", "test", data_dir=fake_fmnist)
    ctx = RunContext(batch_size=300, seed=3)
    smooth = SequentialSmooth(model, 10, 0.25, radii=(0.1, 0.2), first_round=64)
    together = list(smooth.certify_stream(
        ((data[i][0], example_generator(ctx, i)) for i in range(8)), 20, 3000, 0.001, 300))
    alone = []
    for i in range(8):
        c, r = smooth.certify(data[i][0], np.int64(20), np.int64(3000), 0.001, np.int32(300),
                              generator=example_generator(ctx, i))
        alone.append((c, r, smooth.last_num_samples))
    assert [(t.prediction, t.radius, t.samples) for t in together] == alone


def test_sequential_resume_after_interruption_gives_the_same_rows(confident_checkpoint, fake_fmnist,
                                                                  tmp_path, monkeypatch):
    full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
    assert cli(*seq_args(confident_checkpoint, full, fake_fmnist)) == 0
    from certify.smoothing.sequential import SequentialSmooth as S

    original = S._end_round
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(S, "_end_round", interrupted)
    # a small batch keeps few images in flight, so some rows are written before the interruption
    assert cli(*seq_args(confident_checkpoint, part, fake_fmnist, "--batch", "40")) == 130
    written = len(read_results(part))
    assert 0 < written < 12
    monkeypatch.setattr(S, "_end_round", original)
    assert cli(*seq_args(confident_checkpoint, part, fake_fmnist, "--resume", "--batch", "77")) == 0
    assert rows_without_time(part) == rows_without_time(full)
    side = read_sidecar(part)
    assert side["complete"] is True
    assert side["estimation_samples"] == read_sidecar(full)["estimation_samples"]


def test_sequential_resume_with_other_radii_is_refused(confident_checkpoint, fake_fmnist, tmp_path,
                                                       capsys):
    out = tmp_path / "r.tsv"
    assert cli(*seq_args(confident_checkpoint, out, fake_fmnist, "--count", "2")) == 0
    assert cli(*seq_args(confident_checkpoint, out, fake_fmnist, "--count", "2", "--resume",
                         "--radii", "0.3")) == 2
    assert "radii" in capsys.readouterr().err


def test_sequential_shards_merge_to_the_same_rows_and_totals(confident_checkpoint, fake_fmnist,
                                                             tmp_path):
    full = tmp_path / "full.tsv"
    assert cli(*seq_args(confident_checkpoint, full, fake_fmnist)) == 0
    parts = [tmp_path / f"p{i}.tsv" for i in range(3)]
    for i, part in enumerate(parts):
        assert cli(*seq_args(confident_checkpoint, part, fake_fmnist, "--shard", f"{i}/3",
                             "--batch", str(50 + i))) == 0
    merged = tmp_path / "merged.tsv"
    assert cli("merge", *parts, "--out", merged) == 0
    assert rows_without_time(merged) == rows_without_time(full)
    assert read_sidecar(merged)["estimation_samples"] == read_sidecar(full)["estimation_samples"]


# ----------------------------------------------------------------------------- cohen unchanged

def test_cohen_method_gives_the_rows_of_smooth_certify(small_checkpoint, fake_fmnist, tmp_path):
    """--method cohen is Smooth.certify with each example's generator, nothing else."""
    from certify.checkpoint import load_checkpoint
    from certify.data import load_dataset

    out = tmp_path / "c.tsv"
    assert cli("run", small_checkpoint, "--out", out, "--data-dir", fake_fmnist, "--method", "cohen",
               "--n0", "20", "--n", "300", "--batch", "64", "--seed", "3", "--quiet") == 0
    ckpt = load_checkpoint(small_checkpoint)
    smooth = Smooth(ckpt.build_model(torch.device("cpu")), 10, 0.25)
    data = load_dataset("fashion-mnist", "test", data_dir=fake_fmnist)
    ctx = RunContext(seed=3)
    res = read_results(out)
    for i, (prediction, radius) in zip(res.idx, zip(res.predict, res.radius, strict=True),
                                       strict=True):
        c, r = smooth.certify(data[i][0], 20, 300, 0.001, 64, generator=example_generator(ctx, i))
        assert (c, f"{r:.6g}") == (prediction, f"{radius:.6g}")


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_cohen_reproduces_the_committed_quickstart_rows_and_resumes_its_file(tmp_path):
    """The rows committed before methods had names come out again, and that old file (its sidecar
    has no 'method') resumes under --method cohen's defaults."""
    committed = REPO / "results/quickstart/certify.tsv"
    old = tmp_path / "old.tsv"
    lines = committed.read_text().splitlines(keepends=True)
    old.write_text("".join(lines[:3]))  # header and two rows
    sidecar = json.loads(Path(str(committed) + ".json").read_text())
    assert "method" not in sidecar
    sidecar["count"] = 3  # the same run, cut to three images
    Path(str(old) + ".json").write_text(json.dumps(sidecar))
    assert cli("run", REPO / "models/fashion-mnist-lenet-sigma0.25.pt", "--out", old, "--skip", "33",
               "--count", "3", "--n", "10000", "--resume", "--quiet") == 0
    assert rows_without_time(old) == [line.split("\t")[:5] for line in
                                      committed.read_text().splitlines()[:4]]


# ----------------------------------------------------------------------------------- quickstart

def test_quickstart_certifies_sequentially_and_states_the_saving(small_checkpoint, fake_fmnist,
                                                                  tmp_path, capsys):
    out_dir = tmp_path / "qs"
    args = ["quickstart", "--model", small_checkpoint, "--data-dir", fake_fmnist, "--out-dir",
            out_dir, "--count", "4", "--n", "2000"]
    assert cli(*args) == 0
    printed = capsys.readouterr().out
    side = read_sidecar(out_dir / "certify.tsv")
    assert side["method"] == "sequential" and side["n"] == 2000 and side["complete"] is True
    passes = 100 + side["estimation_samples"] / 4
    assert f"forward passes per image: {passes:,.0f} on average" in printed
    assert (out_dir / "certified_accuracy.png").stat().st_size > 0
    # cohen over the same directory: other settings, so it starts afresh instead of resuming
    assert cli(*args, "--method", "cohen") == 0
    assert read_sidecar(out_dir / "certify.tsv")["method"] == "cohen"
    assert "starting it afresh" in capsys.readouterr().err


def test_both_classes_accept_numpy_integer_counts():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(1, 2, 2)
    for cls in (Smooth, SequentialSmooth):
        smooth = cls(model, 3, 0.5)
        a = smooth.certify(x, np.int64(10), np.int32(600), 0.01, np.int64(128),
                           generator=torch.Generator().manual_seed(0))
        b = smooth.certify(x, 10, 600, 0.01, 128, generator=torch.Generator().manual_seed(0))
        assert a == b
        with pytest.raises(ValueError, match="n must be a positive integer"):
            smooth.certify(x, 10, 600.0, 0.01, 128)


# ------------------------------------------------------------------------ review regressions

def test_sequential_refuses_a_classifier_with_more_outputs_than_classes():
    """Votes of class ≥ num_classes would be counted for the next input in the batch."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="3 outputs, but num_classes is 2"):
        SequentialSmooth(model, 2, 0.5).certify(torch.rand(1, 2, 2), 10, 600, 0.01, 128)


def test_default_radii_are_reachable_by_the_last_round():
    from certify.smoothing.stopping import StoppingRule

    # σ·Φ⁻¹((¾α)^(1/N)) = 0.998 at σ = 0.2625: radius 1.0 would be a column of zeros
    assert StoppingRule(0.2625, 0.001, 100_000).radii == (0.25, 0.5, 0.75)
    assert StoppingRule(0.5, 0.001, 100_000).radii == (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def test_cohen_keeps_batch_for_resume_where_its_noise_depends_on_it():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    settings = Cohen.resolve({})
    cert = {"kind": "smoothing", "sigma": 0.25}
    mnist = SimpleNamespace(certification=cert, num_classes=10, input_shape=(1, 28, 28))
    odd = SimpleNamespace(certification=cert, num_classes=10, input_shape=(1, 5, 5))
    assert "batch" not in Cohen(mnist, model, settings, RunContext()).must_match()
    assert "batch" in Cohen(odd, model, settings, RunContext()).must_match()
    gpu = RunContext(device=torch.device("cuda"))
    assert "batch" in Cohen(mnist, model, settings, gpu).must_match()


def test_sequential_keeps_batch_on_a_gpu_for_resume():
    ckpt = SimpleNamespace(certification={"kind": "smoothing", "sigma": 0.25}, num_classes=10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    settings = Sequential.resolve({})
    assert "batch" not in Sequential(ckpt, model, settings, RunContext()).must_match()
    gpu = RunContext(device=torch.device("cuda"))
    assert "batch" in Sequential(ckpt, model, settings, gpu).must_match()


def test_merge_of_an_interrupted_shard_drops_the_totals(confident_checkpoint, fake_fmnist, tmp_path):
    parts = [tmp_path / f"p{i}.tsv" for i in range(2)]
    for i, part in enumerate(parts):
        assert cli(*seq_args(confident_checkpoint, part, fake_fmnist, "--shard", f"{i}/2")) == 0
    side = read_sidecar(parts[1])
    for key in ("estimation_samples", "selection_samples"):
        del side[key]
    side["complete"] = False
    Path(str(parts[1]) + ".json").write_text(json.dumps(side))
    merged = tmp_path / "m.tsv"
    assert cli("merge", *parts, "--out", merged) == 2  # an interrupted shard needs the flag
    assert not merged.exists()
    assert cli("merge", *parts, "--out", merged, "--allow-incomplete") == 0
    assert "estimation_samples" not in read_sidecar(merged)  # not shard 0's total alone
    assert read_sidecar(merged)["complete"] is False


def test_merge_accepts_a_shard_written_before_methods_had_names(small_checkpoint, fake_fmnist,
                                                               tmp_path):
    from test_cli import run_args

    parts = [tmp_path / f"p{i}.tsv" for i in range(2)]
    for i, part in enumerate(parts):
        assert cli(*run_args(small_checkpoint, part, fake_fmnist, "--shard", f"{i}/2")) == 0
    old = read_sidecar(parts[0])
    del old["method"]
    Path(str(parts[0]) + ".json").write_text(json.dumps(old))
    assert cli("merge", *parts, "--out", tmp_path / "m.tsv") == 0
