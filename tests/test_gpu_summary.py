"""benchmarks/gpu_summary.py on canned step results: verdicts, the card's name, partial logs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest


def _load_gpu_summary() -> Any:
    """benchmarks/gpu_summary.py as a module, without putting benchmarks/ on sys.path."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_summary.py"
    spec = importlib.util.spec_from_file_location("gpu_summary", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gs = _load_gpu_summary()

CARD = "NVIDIA H100 80GB HBM3"


def _lp(ratio_inf: float, peak_p8: float) -> dict[str, Any]:
    rows = []
    for p, ratio in (("8", 3.0), ("8.5", 4.0), ("inf", ratio_inf)):
        rows.append({"p": p, "impl": "ours", "fwd_gops": 4000.0, "fwd_vs_cdist": 10.0,
                     "fwd_peak": peak_p8 if p == "8" else 0.2, "fwd_first_s": 1.0, "fwdbwd_gops": 900.0,
                     "fwdbwd_vs_cdist": ratio, "fwdbwd_peak": 0.1, "fwdbwd_first_s": 1.0})
        rows.append({"p": p, "impl": "cdist", "fwd_gops": 400.0, "fwd_vs_cdist": 1.0, "fwd_peak": 0.02,
                     "fwd_first_s": 0.1, "fwdbwd_gops": 300.0, "fwdbwd_vs_cdist": 1.0,
                     "fwdbwd_peak": 0.01, "fwdbwd_first_s": 0.1})
    return {"device": "cuda", "batch": 512, "in_features": 5120, "out_features": 5120,
            "peak_tflops": 67.0, "rows": rows}


def _table(predict: list[int], radius: list[float], correct: list[int]) -> dict[str, list[float]]:
    return {"idx": [float(i) for i in range(len(predict))], "predict": [float(p) for p in predict],
            "radius": radius, "correct": [float(c) for c in correct]}


def _results() -> dict[str, Any]:
    """What collect() would return after a GPU run with some targets met and some not."""
    steps = [gs.Step("tests_gpu", 0, 20.0, 45, "ok"), gs.Step("tests_triton", 1, 30.0, 60, "failed"),
             gs.Step("certify_throughput", 0, 120.0, 170, "ok"), gs.Step("linf_train", 124, 90.0, 90, "timeout")]
    same = _table([1, 2, 3, -1], [0.5, 0.3, 0.7, 0.0], [1, 1, 0, 0])
    methods = {"reference": {"s_per_example": 10.0, "samples_per_s": 1e4, "median_s": 20.0},
               "smooth[fp32]": {"s_per_example": 3.0, "samples_per_s": 3e4, "median_s": 6.0},
               "smooth[bf16+channels_last]": {"s_per_example": 1.0, "samples_per_s": 1e5, "median_s": 2.0},
               "forward[bf16]": {"s_per_example": 0.1, "samples_per_s": 1e6, "median_s": 0.2}}
    return {
        "mode": "gpu", "env": {"device_name": CARD, "torch": "2.11.0", "triton": "3.6.0", "date": "2026-11-27"},
        "steps_parsed": steps,
        "tests": {"gpu": {"passed": 11, "failed": 0, "errors": 0, "skipped": 0, "complete": 1},
                  "triton": {"passed": 47, "failed": 2, "errors": 0, "skipped": 0, "complete": 1}},
        "lp_dist": {"small": _lp(ratio_inf=2.5, peak_p8=0.35), "large": _lp(ratio_inf=1.5, peak_p8=0.25)},
        "certification": {"source": "json", "device": CARD, "arch": "cifar_resnet110", "n": 100_000,
                          "examples": 2, "repeats": 2, "methods": methods, "speedup": gs._speedups(methods)},
        "precision": gs.precision_metrics(same, same, sigma=0.25, n=10_000),
        "linf": gs.linf_metrics([{"p": 8.0, "seconds": 9.0}, {"p": 8.0, "seconds": 3.0},
                                 {"p": 37.5, "seconds": 6.0}, {"p": None, "seconds": 2.0, "test_cert_acc": 0.7}]),
        "nccl": gs.nccl_metrics("epoch 1/1 ...\nwrote sm.pt", "NCCL INFO Init COMPLETE\nprobe: backend nccl "
                                "world 1 all_reduce [1.0] ddp backward ok", True, 20, "gpu"),
    }


def _verdicts(targets: list[gs.Target]) -> dict[str, str]:
    return {t.name: t.verdict for t in targets}


def _find(targets: list[gs.Target], prefix: str) -> list[gs.Target]:
    found = [t for t in targets if t.name.startswith(prefix)]
    assert found, f"no target starting with {prefix!r} in {[t.name for t in targets]}"
    return found


def test_verdicts_and_card_name_appear() -> None:
    results = _results()
    targets = gs.evaluate(results)
    assert _find(targets, "GPU-marked tests")[0].verdict == "met"
    assert _find(targets, "Triton kernels")[0].verdict == "not met"  # 2 failures
    ratio_small, ratio_large = _find(targets, "lp_dist fwd+bwd vs cdist")
    assert (ratio_small.verdict, ratio_large.verdict) == ("met", "not met")  # 2.5× and 1.5× at p = ∞
    assert "p=inf" in ratio_large.measured
    peak_small, peak_large = _find(targets, "lp_dist p=8 forward")
    assert (peak_small.verdict, peak_large.verdict) == ("met", "not met")  # 35 % and 25 %
    s_per_image = _find(targets, "certification, s per image")[0]
    assert s_per_image.verdict == "not met" and s_per_image.value == pytest.approx(1.0)
    assert "smooth[bf16+channels_last]" in s_per_image.measured
    speedup = _find(targets, "certification speed-up")[0]
    assert speedup.verdict == "met" and speedup.value == pytest.approx(10.0)
    assert _find(targets, "bf16 vs fp32")[0].verdict == "met"
    assert _find(targets, "ℓ∞-dist training")[0].verdict == "info"
    assert _find(targets, "NCCL initialised by the trainer")[0].verdict == "not met"
    assert _find(targets, "torchrun checkpoint")[0].verdict == "met"
    assert _find(targets, "NCCL all_reduce")[0].verdict == "met"

    text = gs.render_markdown(results, targets)
    assert CARD in text.splitlines()[0]
    assert "**met**" in text and "**not met**" in text
    assert "| linf_train | timeout | 124 |" in text
    section = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(targets)
    for line in rows:  # four cells each: a bare | inside a cell would add one
        assert line.replace("\\|", "").count("|") == 5, line


def test_missing_steps_give_no_data() -> None:
    targets = gs.evaluate({"mode": "gpu", "env": {"device_name": CARD}, "steps_parsed": []})
    verdicts = set(_verdicts(targets).values())
    assert verdicts == {"no data"}
    assert CARD in gs.render_markdown({"env": {"device_name": CARD}}, targets)


def test_quick_mode_marks_skipped_and_not_applicable() -> None:
    results = _results()
    results["mode"] = "quick"
    results["tests"]["gpu"] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 11, "complete": 1}
    results["nccl"] = gs.nccl_metrics("", "probe: backend gloo world 1 all_reduce [1.0] ddp backward ok",
                                      True, 5, "quick")
    targets = gs.evaluate(results)
    assert _find(targets, "GPU-marked tests")[0].verdict == "skipped"
    assert _find(targets, "NCCL initialised by the trainer")[0].verdict == "n/a"
    assert _find(targets, "NCCL all_reduce")[0].verdict == "met"  # gloo expected on the CPU
    assert "QUICK mode" in gs.render_markdown(results, targets)


def test_pytest_counts_from_summary_line_and_from_a_killed_run() -> None:
    full = "tests/a.py::test_x[1] PASSED [ 50%]\n==== 3 passed, 1 failed, 2 skipped, 9 deselected in 4.2s ===="
    counts = gs.pytest_counts(full)
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["complete"]) == (3, 1, 2, 1)
    killed = ("tests/a.py::test_x[1] PASSED [ 10%]\ntests/a.py::test_x[2] FAILED [ 20%]\n"
              "tests/a.py::test_y SKIPPED (needs a CUDA device) [ 30%]\n")
    counts = gs.pytest_counts(killed)
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["complete"]) == (1, 1, 1, 0)
    target = gs._tests_target("t", counts, gs.Step("t", 124, 60.0, 60, "timeout"))
    assert target.verdict == "not met" and "stopped: timeout" in target.measured


def test_precision_disagreement_is_not_met() -> None:
    fp32 = _table([1, 2, 3, 4], [0.5, 0.3, 0.7, 0.6], [1, 1, 1, 1])
    bf16 = _table([1, 5, 6, 4], [0.1, 0.3, 0.7, 0.2], [1, 0, 0, 1])
    metrics = gs.precision_metrics(fp32, bf16, sigma=0.25, n=10_000)
    assert metrics["differing_predictions"] == 2 and not metrics["agree"]
    assert metrics["mean_abs_radius_diff"] == pytest.approx(0.4)


def test_linf_epochs_are_grouped_by_p() -> None:
    metrics = gs.linf_metrics([{"p": 8.0, "seconds": 9.0}, {"p": 8.0, "seconds": 3.0},
                               {"p": 37.5, "seconds": 6.0}, {"p": None, "seconds": 2.0, "test_cert_acc": 0.7}])
    assert metrics["per_p"]["p=8"]["median_s"] == 3.0  # the first epoch (compilation) left out
    assert metrics["per_p"]["p=8"]["first_run_epoch"] == 9.0
    assert metrics["per_p"]["ramp"]["median_s"] == 6.0 and metrics["per_p"]["inf"]["median_s"] == 2.0
    assert metrics["last_test_cert_acc"] == 0.7


def test_summarize_writes_three_files(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    (work / "env.json").write_text(json.dumps({"device_name": CARD, "torch": "2.11.0"}))
    (work / "steps.tsv").write_text("name\trc\tseconds\tlimit_s\tstatus\tcommand\n"
                                    "tests_gpu\t0\t5.0\t45\tok\tpython3 -m pytest -m gpu tests/\n"
                                    "certify_throughput\t124\t170.0\t170\ttimeout\tpython3 ...\n")
    (work / "logs" / "tests_gpu.log").write_text("==== 11 passed in 3.0s ====\n")
    (work / "logs" / "certify_throughput.log").write_text(
        "torch 2.11 | NVIDIA H100 | threads 16 | arch cifar_resnet110 3x32x32 | n0 100 n 100000 batch 1000 | "
        "sigma 0.25 alpha 0.001 | examples 2 repeats 2 | malloc tuning on\n"
        "rep 1/2: reference 20.00s  smooth[bf16] 4.00s  forward[fp32] 8.00s  forward[bf16] 3.00s\n")
    targets = gs.summarize(work, out, "gpu", budget=420, elapsed=400)
    assert sorted(p.name for p in out.iterdir()) == ["logs.txt", "results.json", "summary.md"]
    assert CARD in (out / "summary.md").read_text()
    payload = json.loads((out / "results.json").read_text())
    assert payload["certification"]["source"] == "log"  # the JSON was never written: read the log
    assert payload["certification"]["methods"]["smooth[bf16]"]["s_per_example"] == pytest.approx(2.0)
    assert _find(targets, "certification speed-up")[0].value == pytest.approx(5.0)
    assert "==== certify_throughput: timeout" in (out / "logs.txt").read_text()


def test_compile_run_is_merged_with_its_own_speedup() -> None:
    main_methods = {"reference": {"s_per_example": 10.0, "samples_per_s": 1e4, "median_s": 20.0},
                    "smooth[bf16]": {"s_per_example": 2.0, "samples_per_s": 5e4, "median_s": 4.0}}
    compile_methods = {"reference": {"s_per_example": 12.0, "samples_per_s": 1e4, "median_s": 24.0},
                       "smooth[compile:bf16]": {"s_per_example": 0.15, "samples_per_s": 7e5, "median_s": 0.3}}
    main = {"source": "json", "arch": "cifar_resnet110", "n": 100_000, "methods": main_methods,
            "speedup": gs._speedups(main_methods)}
    compiled = {"source": "json", "arch": "cifar_resnet110", "n": 100_000, "methods": compile_methods,
                "speedup": gs._speedups(compile_methods), "compile_mode": "reduce-overhead",
                "compile_s": {"smooth[compile:bf16]": 42.0}}
    merged = gs.merge_certification(main, compiled)
    assert merged["methods"]["reference"]["median_s"] == 20.0  # the main run's reference is kept
    assert merged["speedup"]["smooth[compile:bf16]"] == pytest.approx(80.0)  # 24 / 0.3, same process
    targets = gs.evaluate({"mode": "gpu", "env": {"device_name": CARD}, "certification": merged})
    best = _find(targets, "certification, s per image")[0]
    assert best.verdict == "met" and "smooth[compile:bf16]" in best.measured
    assert "reduce-overhead" in gs.render_markdown({"env": {}, "certification": merged}, targets)
    assert gs.merge_certification(None, compiled)["methods"] == compile_methods
    assert gs.merge_certification(main, None) is main


def test_trained_model_targets_count_the_sequential_method() -> None:
    """The trained-model run's best method may be the sequential one; its speed-up is against the
    reference loop timed on the same model, and a run without that step adds no such target."""
    methods = {"reference": {"s_per_example": 2.0, "samples_per_s": 5e4, "median_s": 8.0},
               "smooth[bf16+channels_last]": {"s_per_example": 1.2, "samples_per_s": 8e4, "median_s": 4.8},
               "sequential+compile[bf16+channels_last]": {"s_per_example": 0.1, "samples_per_s": 9e4,
                                                          "median_s": 0.4},
               "forward[bf16]": {"s_per_example": 0.05, "samples_per_s": 2e6, "median_s": 0.2}}
    trained = {"source": "json", "arch": "r110.pt", "n": 100_000, "methods": methods,
               "speedup": gs._speedups(methods)}
    step = gs.Step("certify_trained", 0, 90.0, 150, "ok")
    targets = gs.evaluate({"mode": "gpu", "env": {"device_name": CARD}, "steps_parsed": [step],
                           "certification_trained": trained})
    per_image = _find(targets, "certification, s per image (trained")[0]
    assert per_image.verdict == "met" and "sequential+compile" in per_image.measured  # not forward[bf16]
    speedup = _find(targets, "certification speed-up over the reference loop (trained")[0]
    assert speedup.value == pytest.approx(20.0) and speedup.verdict == "met"
    assert "Certification of a trained model: r110.pt" in gs.render_markdown(
        {"env": {}, "certification_trained": trained}, targets)
    without = gs.evaluate({"mode": "gpu", "env": {"device_name": CARD}, "steps_parsed": []})
    assert not [t for t in without if "trained" in t.name]
