"""The command line: bad input gives one line and no output; resume and shards reproduce a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint

from certify.cli import main
from certify.results import read_results, read_sidecar


def cli(*args: str) -> int:
    """Run ``certify ARGS`` in-process and return its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code


def run_args(ckpt: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return ["run", ckpt, "--out", out, "--data-dir", data, "--n0", "20", "--n", "200",
            "--batch", "64", "--quiet", "--seed", "3", *extra]


def rows_without_time(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [line.split("\t")[:5] for line in lines]


def test_run_writes_rows_and_sidecar(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--skip", "2")) == 0
    res = read_results(out)
    assert res.idx.tolist() == [0, 2, 4, 6, 8, 10]
    assert set(res.predict.tolist()) <= set(range(-1, 10))
    assert ((res.predict == -1) <= (res.radius == 0)).all()
    side = read_sidecar(out)
    assert side["complete"] is True and side["examples"] == 6
    assert (side["sigma"], side["n0"], side["n"], side["alpha"], side["norm"]) == (0.25, 20, 200, 0.001, "l2")
    assert side["dataset"] == "fashion-mnist" and len(side["checkpoint_sha256"]) == 64


def test_count_counts_certified_examples(small_checkpoint, fake_fmnist, tmp_path):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--skip", "3", "--count", "3")) == 0
    assert read_results(out).idx.tolist() == [0, 3, 6]  # the reference's --max would give [0]


def test_resume_after_interruption_gives_the_same_rows(small_checkpoint, fake_fmnist, tmp_path,
                                                       monkeypatch):
    full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
    assert cli(*run_args(small_checkpoint, full, fake_fmnist)) == 0

    from certify.smoothing import Smooth

    original = Smooth.certify
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Smooth, "certify", interrupted)
    assert cli(*run_args(small_checkpoint, part, fake_fmnist)) == 130
    assert len(read_results(part)) == 4
    with open(part, "a") as f:
        f.write("4\t3\t")  # and a torn last line, as a crash mid-write leaves
    monkeypatch.setattr(Smooth, "certify", original)
    assert cli(*run_args(small_checkpoint, part, fake_fmnist, "--resume")) == 0
    assert rows_without_time(part) == rows_without_time(full)
    assert read_sidecar(part)["complete"] is True


def test_resume_with_other_settings_is_refused(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2")) == 0
    before = out.read_text()
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2", "--resume",
                         "--alpha", "0.01")) == 2
    assert "cannot --resume" in capsys.readouterr().err
    assert out.read_text() == before


def test_existing_output_needs_resume_or_force(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2")) == 0
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2")) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2", "--force")) == 0


def test_shards_merge_into_the_rows_of_one_run(small_checkpoint, fake_fmnist, tmp_path, capsys):
    full = tmp_path / "full.tsv"
    assert cli(*run_args(small_checkpoint, full, fake_fmnist, "--batch", "200")) == 0
    shards = [tmp_path / f"s{i}.tsv" for i in range(3)]
    for i, shard in enumerate(shards):
        assert cli(*run_args(small_checkpoint, shard, fake_fmnist, "--shard", f"{i}/3")) == 0
    assert read_results(shards[1]).idx.tolist() == [1, 4, 7, 10]
    merged = tmp_path / "merged.tsv"
    assert cli("merge", *shards, "--out", merged) == 0
    assert rows_without_time(merged) == rows_without_time(full)
    assert "ACR" in capsys.readouterr().out


def test_plot_command(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist)) == 0
    ref = tmp_path / "reference.tsv"  # a file in the format of the public smoothing repos
    ref.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.378\t1\t0:00:01.5\n"
                   "20\t1\t-1\t0.0\t0\t15.4\n")
    png = tmp_path / "curve.png"
    capsys.readouterr()
    assert cli("plot", out, ref, "--label", "ours", "--label", "reference", "--out", png,
               "--table", tmp_path / "t.md") == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| reference | 0.500" in table and "0.189" in table  # ACR = 0.378 / 2
    assert (tmp_path / "t.md").read_text() == table


def test_info_command(small_checkpoint, capsys):
    assert cli("info", small_checkpoint) == 0
    out = capsys.readouterr().out
    assert "small_cnn" in out and "sigma=0.25" in out and "made by the test suite" in out


# ------------------------------------------------------------------------------ bad input

def _truncated(tmp_path: Path, ckpt: Path) -> Path:
    path = tmp_path / "cut.pt"
    path.write_bytes(ckpt.read_bytes()[:1000])
    return path


def _evil(tmp_path: Path, ckpt: Path) -> Path:
    from test_checkpoint import Payload

    path = tmp_path / "evil.pt"
    torch.save({"arch": "lenet", "state_dict": {}, "x": Payload(str(tmp_path / "pwned"))}, path)
    return path


def _cifar(tmp_path: Path, ckpt: Path) -> Path:
    from certify.checkpoint import save_checkpoint

    return save_checkpoint(make_checkpoint("small_cnn", dataset="cifar10", input_shape=(3, 32, 32),
                                           width=4, hidden=16), tmp_path / "cifar.pt")


def _reference_cifar(tmp_path: Path, ckpt: Path) -> Path:
    path = tmp_path / "ref.pth.tar"
    state = make_checkpoint("cifar_resnet20", dataset="cifar10", input_shape=(3, 32, 32)).state_dict
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, path)
    return path


BAD_INPUTS = {
    "missing checkpoint": (lambda t, c: t / "nope.pt", [], "checkpoint not found"),
    "truncated checkpoint": (_truncated, [], "truncated"),
    "pickled code": (_evil, ["--dataset", "fashion-mnist", "--sigma", "0.25"], "pickled Python objects"),
    "other dataset": (_cifar, ["--dataset", "fashion-mnist"], "trained on cifar10"),
    "reference for another dataset": (_reference_cifar, ["--dataset", "fashion-mnist", "--sigma", "0.5"],
                                      "do not fit"),
    "sigma zero": (lambda t, c: c, ["--sigma", "0"], "--sigma"),
    "sigma negative": (lambda t, c: c, ["--sigma", "-0.5"], "--sigma"),
    "alpha zero": (lambda t, c: c, ["--alpha", "0"], "--alpha"),
    "alpha one": (lambda t, c: c, ["--alpha", "1"], "--alpha"),
    "alpha above one": (lambda t, c: c, ["--alpha", "1.5"], "--alpha"),
    "n0 zero": (lambda t, c: c, ["--n0", "0"], "--n0"),
    "n zero": (lambda t, c: c, ["--n", "0"], "--n"),
    "bad shard": (lambda t, c: c, ["--shard", "3/3"], "--shard"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_one_line_no_output(case, small_checkpoint, fake_fmnist, tmp_path, capsys):
    make, extra, message = BAD_INPUTS[case]
    ckpt = make(tmp_path, small_checkpoint)
    out = tmp_path / "out" / "r.tsv"
    out.parent.mkdir()
    code = cli(*run_args(ckpt, out, fake_fmnist), *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # no partial results, no sidecar
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("out", ["missing_dir/r.tsv", "file.txt/r.tsv"])
def test_unwritable_out(out, small_checkpoint, fake_fmnist, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a directory")
    assert cli(*run_args(small_checkpoint, tmp_path / out, fake_fmnist)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write" in err
    assert not (tmp_path / "missing_dir").exists()


def test_missing_dataset_says_how_to_get_it(small_checkpoint, tmp_path, capsys):
    assert cli(*run_args(small_checkpoint, tmp_path / "r.tsv", tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dataset-fashion-mnist" in err
    assert not (tmp_path / "r.tsv").exists()


def test_console_script_error_has_no_traceback(tmp_path):
    """The installed entry point, in a real process: stderr is one line, exit code 2."""
    proc = subprocess.run([sys.executable, "-c", "from certify.cli import main; main()", "run",
                           str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r.tsv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'nope.pt'}"]


def test_help_teaches(capsys):
    assert cli("run", "--help") == 0
    text = capsys.readouterr().out
    for word in ("--resume", "--shard", "--count", "--n0", "Examples"):
        assert word in text


def test_resuming_a_finished_run_changes_nothing(small_checkpoint, fake_fmnist, tmp_path):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2")) == 0
    files = {p: p.read_bytes() for p in (out, tmp_path / "r.tsv.json")}
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2", "--resume")) == 0
    assert {p: p.read_bytes() for p in files} == files


def test_merge_refuses_an_incomplete_set_of_shards(small_checkpoint, fake_fmnist, tmp_path, capsys):
    shards = [tmp_path / f"s{i}.tsv" for i in range(3)]
    for i, shard in enumerate(shards[:2]):
        assert cli(*run_args(small_checkpoint, shard, fake_fmnist, "--shard", f"{i}/3", "--count", "6")) == 0
    assert cli("merge", *shards[:2], "--out", tmp_path / "m.tsv") == 2
    assert "0/N .. N-1/N" in capsys.readouterr().err
    assert not (tmp_path / "m.tsv").exists()


def test_resume_without_sidecar_is_refused(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "2")) == 0
    (tmp_path / "r.tsv.json").unlink()
    before = out.read_text()
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "3", "--resume")) == 2
    assert "sidecar" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize("extra, message", [
    (["--force", "--seed", "-1"], "--seed"),
    (["--force", "--device", "mps"], "cpu or cuda"),
    (["--resume", "--n", "300"], "n=200"),
])
def test_more_bad_run_options(extra, message, small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "1")) == 0
    before = out.read_text()
    capsys.readouterr()
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "1"), *extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert out.read_text() == before


def test_top_level_help_imports_no_torch():
    """'certify --help' lists the commands from a table, importing none of their modules."""
    code = ("import sys\nfrom certify.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
            " or m.startswith('certify.cli.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Commands:" in done.stdout and "train" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_command_table_matches_the_commands():
    """The lazy listing names every command once, with the first paragraph of its own help."""
    import importlib

    from certify.cli import COMMAND_MODULES

    modules = {module for module, _ in COMMAND_MODULES.values()}
    commands = {c.name: c for m in modules for c in importlib.import_module(m).COMMANDS}
    assert set(commands) == set(COMMAND_MODULES)
    for name, (_, summary) in COMMAND_MODULES.items():
        assert summary == " ".join(commands[name].help.strip().split("\n\n")[0].split()), name


@pytest.mark.slow
def test_ctrl_c_ends_in_one_line_and_exit_130(tmp_path):
    """An interrupt at any moment of a run is one line on stderr and exit code 130, no traceback."""
    import signal
    import time

    ckpt = Path(__file__).parents[1] / "models" / "fashion-mnist-lenet-sigma0.25.pt"
    proc = subprocess.Popen([sys.executable, "-m", "certify.cli", "run", str(ckpt), "--out",
                             str(tmp_path / "r.tsv"), "--n", "100000", "--count", "50", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # torch imported, certifying
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")


def _hold_lock(out: Path) -> subprocess.Popen:
    """A process that holds OUT's lock until killed (it prints once it does)."""
    code = (f"import sys, time\nfrom certify.locks import output_lock\nwith output_lock({str(out)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_of_the_same_output_is_refused(tmp_path, capsys, fake_fmnist):
    """train, run, merge and ladc each hold their output's lock: while another process holds it,
    they stop at once with its PID, and write nothing."""
    out = tmp_path / "m.pt"
    holder = _hold_lock(out)
    try:
        assert cli("train", "--epochs", "1", "--train-count", "16", "--device", "cpu",
                   "--data-dir", fake_fmnist, "--quiet", "--out", out) == 2
        err = capsys.readouterr().err
        assert f"is in use by PID {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
        ckpt = Path(__file__).parents[1] / "models" / "fashion-mnist-lenet-sigma0.25.pt"
        assert cli("ladc", ckpt, "--out", out) == 2
        assert f"is in use by PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_concurrent_runs_on_one_file(tmp_path):
    """The second 'certify run --resume' on a file another run is writing exits 2 with the first
    one's PID; the first one's rows are untouched and its lock file goes when it ends."""
    import signal
    import time

    from certify.locks import lock_path

    ckpt = Path(__file__).parents[1] / "models" / "fashion-mnist-lenet-sigma0.25.pt"
    out = tmp_path / "r.tsv"
    command = [sys.executable, "-m", "certify.cli", "run", str(ckpt), "--out", str(out), "--n", "100000",
               "--count", "40", "--quiet"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not lock_path(out).exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is in use by PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert not lock_path(out).exists()
    indices = [line.split("\t")[0] for line in out.read_text().splitlines()[1:]]
    assert len(indices) == len(set(indices))


def test_cohen_resume_on_the_cpu_accepts_another_batch(small_checkpoint, fake_fmnist, tmp_path):
    """On the CPU cohen's rows do not depend on --batch (28×28 inputs), so --resume accepts a new
    one, and the resumed file has the rows of a straight run."""
    straight, resumed = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert cli(*run_args(small_checkpoint, straight, fake_fmnist, "--count", "4")) == 0
    assert cli(*run_args(small_checkpoint, resumed, fake_fmnist, "--count", "4")) == 0
    lines = resumed.read_text().splitlines(keepends=True)
    resumed.write_text("".join(lines[:3]))  # as if interrupted after two images
    assert cli(*run_args(small_checkpoint, resumed, fake_fmnist, "--count", "4", "--resume",
                         "--batch", "100")) == 0
    assert rows_without_time(resumed) == rows_without_time(straight)


def test_options_that_cannot_work_are_refused_before_any_work(small_checkpoint, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    # N = 9 votes of 9 bound p_A by 0.001^(1/9) = 0.46 < ½: nothing can be certified
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "1"), "--n", "9") == 2
    err = capsys.readouterr().err
    assert "--n: 9 samples certify no image at alpha 0.001" in err and "at least 10" in err
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--count", "1"), "--n", "10",
               "--method", "sequential") == 2  # its last round has ¾α: 10 is not enough there
    assert "at least 11" in capsys.readouterr().err
    assert not out.exists()
    linf = Path(__file__).parents[1] / "models" / "fmnist-linf-v2-short.pt"
    assert cli("run", linf, "--out", out, "--data-dir", fake_fmnist, "--count", "1", "--sigma", "0.5",
               "--quiet") == 2
    assert "--sigma applies to randomized-smoothing checkpoints" in capsys.readouterr().err


def test_sigma_other_than_the_trained_one_is_noted_and_recorded(small_checkpoint, fake_fmnist, tmp_path, capsys):
    from certify.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(small_checkpoint)
    ckpt.training = {"config": {"objective": "gaussian", "objective_params": {"sigma": 0.25}}}
    save_checkpoint(ckpt, tmp_path / "trained.pt")
    out = tmp_path / "r.tsv"
    assert cli(*run_args(tmp_path / "trained.pt", out, fake_fmnist, "--count", "1"), "--sigma", "0.5") == 0
    assert "was trained at σ = 0.25; certifying it at σ = 0.5" in capsys.readouterr().err
    sidecar = read_sidecar(out)
    assert sidecar["sigma"] == 0.5 and sidecar["trained_sigma"] == 0.25


def test_info_json_reference_and_resolved_options(tmp_path, capsys):
    import json

    from certify.checkpoint import load_checkpoint

    model = Path(__file__).parents[1] / "models" / "fmnist-lenet-smoothmix-s0.5-short.pt"
    assert cli("info", model) == 0
    text = capsys.readouterr().out
    # the recipe's m, T and step, and the defaults it did not set (maxnorm, the loss)
    assert "num_noise_vec=2, num_steps=2, step_size=2" in text and "loss=ce" in text
    assert "lr=0.0005," in text and "0.0005000000000000001" not in text  # floats rounded
    assert cli("info", model, "--json") == 0
    record = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert record["certification"] == {"kind": "smoothing", "sigma": 0.5}
    assert record["objective_options"]["num_steps"] == 2 and record["values"] == 431080
    # a reference checkpoint without --dataset/--sigma: what the file says, and what is missing
    ckpt = load_checkpoint(model)
    torch.save({"arch": "lenet", "state_dict": ckpt.state_dict, "epoch": 7}, tmp_path / "ref.pth.tar")
    assert cli("info", tmp_path / "ref.pth.tar") == 0
    text = capsys.readouterr().out
    assert "reference" in text and "lenet (431,080 values)" in text and "--dataset and --sigma" in text


def test_run_sh_names_an_unknown_command():
    done = subprocess.run(["bash", str(Path(__file__).parents[1] / "run.sh"), "foo"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "unknown command 'foo'" in done.stderr and "./run.sh test" in done.stdout
