"""ℓ∞-dist nets through the pipeline: train (Adam, cosine lr, per-minibatch p schedule), resume
exactly, certify with `certify run` (deterministic ℓ∞ radii, sidecar norm linf) and plot."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_cli import cli

from certify.checkpoint import load_checkpoint
from certify.linf_dist import cpu_kernels, native
from certify.linf_dist.certifier import interval_radii, lipschitz_radii
from certify.linf_dist.layers import INF, get_p
from certify.results import read_results
from certify.training import TrainConfig, train


def config(data_dir, **changes) -> TrainConfig:
    base = dict(dataset="fashion-mnist", arch="linf_dist_net",
                arch_kwargs={"depth": 3, "width": 16, "scalar": 1}, objective="linf_mixture",
                objective_params={"eps_train": 0.1, "eps_test": 0.05, "p_start_epoch": 0,
                                  "p_end_epoch": 1.5},
                epochs=2, batch_size=8, lr=0.03, scalar_lr=0.006, optimizer="adam", adam_beta2=0.99,
                adam_eps=1e-10, weight_decay=0.0, lr_schedule="cosine", augment="crop-edge",
                data_dir=str(data_dir), seed=3)
    return TrainConfig(**(base | changes))


def quiet(_line):
    pass


def test_training_follows_the_schedules_and_resumes_exactly(fake_fmnist, tmp_path):
    straight = train(config(fake_fmnist), tmp_path / "a.pt", progress=False, log=quiet)
    history = straight.training["history"]
    # 40 images at batch 8: 5 steps per epoch; p reaches ∞ at step 7.5, so epoch 2 ends at p = ∞
    assert history[0]["p"] == 8 * 125 ** (4 / 7.5) and history[1]["p"] == INF
    assert history[0]["lr"] == 0.03 and history[1]["lr"] == 0.03 * 0.5 * (1 + math.cos(math.pi / 2))
    assert "test_cert_acc" in history[1] and "test_cert_acc" not in history[0]
    # which lp_dist backend ran, per epoch and in the checkpoint: at p ≠ 8 the native kernels on
    # this CPU (the compiled ones without a C compiler), never a silent fall back to eager
    compiled = cpu_kernels.available(torch.zeros(1))
    ran = "native" if compiled and native.available(torch.zeros(1)) else "compiled" if compiled else "eager"
    assert ran in history[0]["lp_dist_backend"].split("+") and history[1]["lp_dist_backend"] == ran
    assert ran == "eager" or "eager" not in history[0]["lp_dist_backend"]
    assert straight.metrics["lp_dist_backend"] == ran
    assert straight.certification == {"kind": "linf_dist", "eps": 0.05}
    assert straight.std == (0.3520,) and straight.mean == (0.2860,)  # the reference's statistics

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise Interrupt  # before epoch 2's checkpoint is written, as a crash would

    with pytest.raises(Interrupt):
        train(config(fake_fmnist), tmp_path / "b.pt", progress=False, log=stop_in_epoch_2)
    assert load_checkpoint(tmp_path / "b.pt").epoch == 1
    torch.manual_seed(999)
    resumed = train(config(fake_fmnist), tmp_path / "b.pt", resume=True, progress=False, log=quiet)
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    scale = straight.state_dict["1.logit_scale"]
    assert scale.item() != 1.0  # the v2 scale s was trained (in its own lr group)
    assert get_p(load_checkpoint(tmp_path / "b.pt").build_model()) == INF  # ready to certify


def test_linf_mixture_without_ramp_flags_follows_the_reference_ramp(fake_fmnist, tmp_path):
    params = {"eps_train": 0.1, "eps_test": 0.05}  # no --p-start-epoch / --p-end-epoch
    ckpt = train(config(fake_fmnist, objective_params=params, epochs=3), tmp_path / "a.pt",
                 progress=False, log=quiet)
    # 5 steps per epoch; the v2 reference's 100/1300 and 1250/1300 of 3 epochs: the ramp runs
    # from step 1.15 to step 14.4, so the last steps of the epochs (4, 9, 14) are all in it
    start, end = 3 * 100 / 1300 * 5, 3 * 1250 / 1300 * 5
    want = [8 * 125 ** ((step - start) / (end - start)) for step in (4, 9, 14)]
    got = [h["p"] for h in ckpt.training["history"]]
    assert got == pytest.approx(want, rel=1e-12)
    assert "p_start_epoch" not in ckpt.training["config"]["objective_params"]  # recorded as given
    assert ckpt.resume_state["objective"] == {"p_epochs": [3 / 13, 3 * 25 / 26]}


def test_certify_run_and_plot_an_linf_checkpoint(fake_fmnist, tmp_path, capsys):
    model_path = tmp_path / "m.pt"
    assert cli("train", "--dataset", "fashion-mnist", "--arch", "linf_dist_net", "--arch-opt", "depth=3",
               "--arch-opt", "width=16", "--objective", "linf_hinge", "--eps-train", "0.1",
               "--eps-test", "0.05", "--p-end-epoch", "0.5", "--optimizer", "adam", "--lr", "0.02",
               "--lr-schedule", "cosine", "--augment", "crop-zero", "--epochs", "1", "--batch", "8",
               "--data-dir", fake_fmnist, "--out", model_path, "-q") == 0
    out = tmp_path / "r.tsv"
    assert cli("run", model_path, "--out", out, "--data-dir", fake_fmnist, "--batch", "5",
               "--bound", "lipschitz") == 0
    printed = capsys.readouterr().out
    assert "ℓ∞" in printed or "linf" in printed
    sidecar = json.loads(out.with_name("r.tsv.json").read_text())
    assert (sidecar["norm"], sidecar["certifier"], sidecar["bound"]) == ("linf", "linf_dist", "lipschitz")
    rows = read_results(out)
    assert len(rows.idx) == 12
    # the rows are the certificate of the p = ∞ model (as the checkpoint builds it), recomputed
    # here in one batch
    ckpt = load_checkpoint(model_path)
    model = ckpt.build_model().eval()
    assert get_p(model) == INF
    from certify.data import load_dataset

    data = load_dataset("fashion-mnist", "test", data_dir=fake_fmnist)
    x = torch.stack([data[i][0] for i in range(12)])
    logits = model(x)
    assert rows.predict.tolist() == logits.argmax(1).tolist()
    lipschitz = lipschitz_radii(model, logits)
    torch.testing.assert_close(torch.tensor(rows.radius, dtype=torch.float32), lipschitz,
                               atol=1e-3, rtol=0)
    # the default: interval bounds, never below the Lipschitz radius
    interval = tmp_path / "i.tsv"
    assert cli("run", model_path, "--out", interval, "--data-dir", fake_fmnist, "--batch", "5", "-q") == 0
    assert json.loads(interval.with_name("i.tsv.json").read_text())["bound"] == "interval"
    radii = torch.tensor(read_results(interval).radius, dtype=torch.float64)
    # (up to float32 rounding: the logits here come from one batch of 12, the run's from batches of 5)
    assert (radii >= lipschitz.double() - 1e-6).all()
    assert (radii > lipschitz.double() + 1e-3).any()  # clipping to [0, 1] helps some
    want = interval_radii(model, x, logits.argmax(1), floor=lipschitz.clamp_min(0))
    torch.testing.assert_close(radii, torch.maximum(want, lipschitz).double(), atol=2e-6, rtol=0)
    png = tmp_path / "p.png"
    assert cli("plot", out, interval, "--out", png) == 0
    assert png.stat().st_size > 1000


def test_a_file_of_the_old_default_bound_resumes_only_with_it(fake_fmnist, tmp_path, capsys):
    """Files made when the pure net's default was the Lipschitz bound record bound: lipschitz;
    --resume under the new default says which flag continues them."""
    model_path = tmp_path / "m.pt"
    train(config(fake_fmnist, epochs=1), model_path, progress=False, log=quiet)
    out = tmp_path / "r.tsv"
    assert cli("run", model_path, "--out", out, "--data-dir", fake_fmnist, "--bound", "lipschitz",
               "--count", "6", "-q") == 0
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:4]) + "\n")  # interrupted after 3 rows
    sidecar = json.loads(out.with_name("r.tsv.json").read_text())
    sidecar["bound"], sidecar["complete"] = "lipschitz", False  # what 'auto' recorded then
    out.with_name("r.tsv.json").write_text(json.dumps(sidecar))
    capsys.readouterr()
    assert cli("run", model_path, "--out", out, "--data-dir", fake_fmnist, "--count", "6",
               "--resume", "-q") != 0
    error = capsys.readouterr().err
    assert "bound='lipschitz'" in error and "pass --bound lipschitz to continue it" in error
    assert cli("run", model_path, "--out", out, "--data-dir", fake_fmnist, "--count", "6",
               "--resume", "--bound", "lipschitz", "-q") == 0
    resumed = read_results(out)
    assert resumed.idx.tolist() == list(range(6)) and json.loads(
        out.with_name("r.tsv.json").read_text())["complete"]
    torch.testing.assert_close(torch.tensor(resumed.radius[3:], dtype=torch.float64),  # Lipschitz again
                               torch.tensor([float(line.split("\t")[3]) for line in full[4:]],
                                            dtype=torch.float64),
                               atol=1e-6, rtol=0)
