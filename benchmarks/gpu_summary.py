"""Environment probe and summary writer for benchmarks/gpu_check.sh.

  python benchmarks/gpu_summary.py env --json WORK/env.json
      the card (or the CPU), torch / triton / CUDA versions, nvidia-smi's view, the date.
  python benchmarks/gpu_summary.py summarize --work WORK --out OUT --mode gpu|quick
      reads what gpu_check.sh left in WORK (steps.tsv, logs/, the JSON / TSV / JSON-lines files of
      each step) and writes OUT/summary.md (the card, the versions, every target with its measured
      value and verdict, the step table), OUT/results.json (every number) and OUT/logs.txt (the
      head and tail of each step's log).

Every step's numbers are read independently: a step that failed or timed out leaves "no data" in
its rows and the others are still reported. The functions below are pure where they can be
(``pytest_counts``, ``lp_dist_metrics``, ``evaluate``, ``render_markdown``, ...), so the unit test
feeds them canned results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGET_FWD_BWD_VS_CDIST = 2.0  # ours ≥ 2× torch.cdist, forward+backward, at every p
TARGET_P8_PEAK = 0.30  # ours ≥ 30 % of the FP32 peak at p = 8, forward
TARGET_S_PER_IMAGE = 0.2  # certification at N = 100,000, seconds per image
TARGET_SPEEDUP = 5.0  # over the reference certify loop on the same card
PRECISION_RADII = (0.0, 0.25, 0.5, 0.75)
LINF_EPS = 0.1  # fmnist-linf-v2-short's eps_test
LOG_HEAD, LOG_TAIL = 5, 40  # lines of each step's log kept in logs.txt


@dataclass
class Step:
    """One row of steps.tsv: how a step of gpu_check.sh ended."""

    name: str
    rc: int | None
    seconds: float
    limit_s: float
    status: str  # ok, failed, timeout, skipped
    command: str = ""


@dataclass
class Target:
    """One line of the targets table."""

    name: str
    measured: str
    target: str
    verdict: str  # met, not met, no data, skipped, info, n/a
    value: float | None = None


# ---------------------------------------------------------------- environment

def _cpu_name() -> str:
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """The card (or CPU), library versions and the date; never raises for a missing piece."""
    env: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "python": sys.version.split()[0], "platform": platform.platform(),
                           "cpu": _cpu_name(), "cpu_count": os.cpu_count()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_available"] = torch.cuda.is_available()
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["device_name"] = torch.cuda.get_device_name(0)
            env["device_memory_gib"] = round(props.total_memory / 2**30, 1)
            env["device_sms"] = props.multi_processor_count
            env["device_capability"] = f"{props.major}.{props.minor}"
            env["cudnn"] = torch.backends.cudnn.version()
        else:
            env["device_name"] = f"CPU: {env['cpu']} ({torch.get_num_threads()} threads)"
    except Exception as error:  # the summary must still be written
        env["torch"] = f"unavailable ({type(error).__name__}: {error})"
        env.setdefault("device_name", f"CPU: {env['cpu']}")
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = "absent"
    try:
        import certify

        env["certify"] = getattr(certify, "__version__", "importable")
    except Exception as error:
        env["certify"] = f"import failed ({type(error).__name__}: {error})"
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.SubprocessError) as error:
            env["nvidia_smi"] = f"failed: {error}"
    return env


# ---------------------------------------------------------------- reading the steps' output

def read_steps(path: Path) -> list[Step]:
    """steps.tsv as written by gpu_check.sh's run_step (a header, then one row per step)."""
    steps = []
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        name, rc, seconds, limit, status = fields[:5]
        steps.append(Step(name=name, rc=int(rc) if rc.strip().lstrip("-").isdigit() else None,
                          seconds=float(seconds or 0), limit_s=float(limit or 0), status=status,
                          command=fields[5] if len(fields) > 5 else ""))
    return steps


def pytest_counts(text: str) -> dict[str, int]:
    """Outcome counts of a pytest run: from its final summary line, or, when a timeout killed it
    before that line, by counting the verbose per-test lines (``path::test[id] PASSED``)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "deselected": 0}
    summary_re = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b")
    final = [line for line in text.splitlines()
             if summary_re.search(line) and re.search(r"\bin [\d.]+s", line)]
    if final:
        for number, word in summary_re.findall(final[-1]):
            key = "errors" if word.startswith("error") else word
            counts[key] = counts.get(key, 0) + int(number)
        counts["complete"] = 1
        return counts
    for outcome in re.findall(r"^\S+::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", text, re.M):
        key = {"ERROR": "errors", "XFAIL": "xfailed", "XPASS": "xpassed"}.get(outcome, outcome.lower())
        counts[key] = counts.get(key, 0) + 1
    counts["complete"] = 0
    return counts


def _p_label(p: Any) -> str:
    if p in ("inf", None) or (isinstance(p, float) and math.isinf(p)):
        return "inf"
    return f"{float(p):g}"


def lp_dist_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """The rows of benchmarks/lp_dist.py's JSON that the targets need, per p and implementation."""
    config = payload.get("config", {})
    rows = []
    for record in payload.get("results", []):
        fwd, fb = record.get("forward", {}), record.get("fwd+bwd", {})
        rows.append({"p": _p_label(record.get("p")), "impl": record.get("impl"),
                     "fwd_gops": fwd.get("gops"), "fwd_vs_cdist": fwd.get("vs_cdist"),
                     "fwd_peak": fwd.get("peak_fraction"), "fwd_first_s": fwd.get("first_s"),
                     "fwdbwd_gops": fb.get("gops"), "fwdbwd_vs_cdist": fb.get("vs_cdist"),
                     "fwdbwd_peak": fb.get("peak_fraction"), "fwdbwd_first_s": fb.get("first_s")})
    return {"device": config.get("device"), "batch": config.get("batch"),
            "in_features": config.get("in_features"), "out_features": config.get("out_features"),
            "peak_tflops": config.get("peak_tflops"), "rows": rows}


def certify_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """Seconds per image and speed-up over the reference of each method in certify_throughput's JSON."""
    config = payload.get("config", {})
    methods = {name: {"s_per_example": m["s_per_example"], "samples_per_s": m["samples_per_s"],
                      "median_s": m["median_s"]}
               for name, m in payload.get("methods", {}).items()}
    model = Path(config["checkpoint"]).name if config.get("checkpoint") else config.get("arch")
    out = {"source": "json", "device": payload.get("device"), "arch": model,
           "n": config.get("n"), "examples": config.get("examples"), "repeats": config.get("repeats"),
           "methods": methods, "speedup": _speedups(methods),
           "paired_speedup": {k[len("b/a["):-1]: v.get("paired_median")
                              for k, v in payload.get("ratios", {}).items() if k.startswith("b/a[")},
           "same_class_everywhere": payload.get("same_class_everywhere")}
    if "compile" in payload:
        out["compile_mode"] = payload["compile"].get("mode")
        out["compile_s"] = payload["compile"].get("compile_s")
    return out


def _speedups(methods: dict[str, dict[str, float]]) -> dict[str, float]:
    """Throughput of every non-reference method over the reference's (ratio of median times)."""
    ref = methods.get("reference", {}).get("median_s")
    if not ref:
        return {}
    return {name: ref / m["median_s"] for name, m in methods.items()
            if name != "reference" and m.get("median_s")}


def certify_from_log(text: str) -> dict[str, Any]:
    """The same numbers from certify_throughput's printed repetitions, for a run that a timeout
    stopped before it wrote its JSON (only the repetitions that finished count)."""
    header = re.search(r"(?:arch|model) (\S+) .*?\| n0 (\d+) n (\d+) .*?examples (\d+) repeats (\d+)", text)
    if header is None:
        return {}
    arch, n0, n, examples = header.group(1), int(header.group(2)), int(header.group(3)), int(header.group(4))
    per_method: dict[str, list[float]] = {}
    for line in re.findall(r"^rep \d+/\d+: (.*)$", text, re.M):
        for name, seconds in re.findall(r"(\S+) ([0-9.]+)s\b", line):
            per_method.setdefault(name, []).append(float(seconds))
    methods = {}
    for name, sums in per_method.items():
        median = statistics.median(sums)
        methods[name] = {"s_per_example": median / examples, "median_s": median,
                         "samples_per_s": (n0 + n) * examples / median if median else float("nan")}
    device = re.search(r"^torch \S+ \| ([^|]+) \|", text, re.M)
    return {"source": "log", "device": device.group(1).strip() if device else None, "arch": arch,
            "n": n, "examples": examples, "repeats": len(next(iter(per_method.values()), [])),
            "methods": methods, "speedup": _speedups(methods)}


def merge_certification(main: dict[str, Any] | None, compiled: dict[str, Any] | None) -> dict[str, Any] | None:
    """The main run's methods plus the compile run's new ones (its speed-ups against its own
    reference loop, timed in the same process); the compile run stays whole under "compile_run"."""
    if not compiled or not compiled.get("methods"):
        return main
    if not main or not main.get("methods"):
        return dict(compiled, compile_run=compiled)
    merged = dict(main, methods=dict(main["methods"]), speedup=dict(main.get("speedup", {})),
                  compile_run=compiled)
    for name, method in compiled["methods"].items():
        if name not in merged["methods"]:
            merged["methods"][name] = method
            if name in compiled.get("speedup", {}):
                merged["speedup"][name] = compiled["speedup"][name]
    for key in ("compile_mode", "compile_s"):
        if key in compiled:
            merged[key] = compiled[key]
    return merged


def _phi(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def precision_metrics(fp32: dict[str, list[float]], bf16: dict[str, list[float]], sigma: float,
                      n: int) -> dict[str, Any]:
    """Agreement of two certify runs (columns idx, predict, radius, correct), same seed and images.

    The Monte-Carlo scale of a radius r = σ Φ⁻¹(p) estimated from n samples is about
    σ √(p(1−p)/n) / φ(Φ⁻¹(p)); its mean over the rows certified by both runs is the yardstick for the
    mean |Δr|. A certified accuracy's yardstick is twice its binomial standard error over the images.
    """
    rows = min(len(fp32["idx"]), len(bf16["idx"]))
    differing = sum(1 for i in range(rows) if fp32["predict"][i] != bf16["predict"][i])
    both = [i for i in range(rows) if fp32["predict"][i] >= 0 and bf16["predict"][i] >= 0
            and fp32["predict"][i] == bf16["predict"][i]]
    diffs = [abs(fp32["radius"][i] - bf16["radius"][i]) for i in both]
    sds = []
    for i in both:
        z = fp32["radius"][i] / sigma
        p = min(max(_cdf(z), 0.5), 1 - 1 / (2 * n))
        sds.append(sigma * math.sqrt(p * (1 - p) / n) / max(_phi(z), 1e-300))
    acc = {}
    for r in PRECISION_RADII:
        a = sum(1 for i in range(rows) if fp32["correct"][i] == 1 and fp32["radius"][i] >= r) / max(rows, 1)
        b = sum(1 for i in range(rows) if bf16["correct"][i] == 1 and bf16["radius"][i] >= r) / max(rows, 1)
        tolerance = max(2 * math.sqrt(a * (1 - a) / max(rows, 1)), 1 / max(rows, 1))
        acc[f"{r:g}"] = {"fp32": a, "bf16": b, "tolerance": tolerance}
    mean_diff = statistics.fmean(diffs) if diffs else float("nan")
    mc = statistics.fmean(sds) if sds else float("nan")
    agree = (rows > 0 and (not diffs or mean_diff <= mc)
             and all(abs(v["fp32"] - v["bf16"]) <= v["tolerance"] + 1e-12 for v in acc.values())
             and differing <= max(1, round(0.02 * rows)))
    return {"rows": rows, "sigma": sigma, "n": n, "differing_predictions": differing,
            "mean_abs_radius_diff": mean_diff, "max_abs_radius_diff": max(diffs) if diffs else float("nan"),
            "mc_radius_sd": mc, "cert_acc": acc, "agree": agree}


def read_tsv(path: Path) -> dict[str, list[float]]:
    """A certify results TSV as columns of floats (idx, label, predict, radius, correct, time)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    names = lines[0].split("\t")
    columns: dict[str, list[float]] = {name: [] for name in names}
    for line in lines[1:]:
        for name, value in zip(names, line.split("\t")):
            try:
                columns[name].append(float(value))
            except ValueError:
                columns[name].append(float("nan"))
    return columns


def certified_accuracy(table: dict[str, list[float]], radius: float) -> float:
    """Fraction of all rows correct with a radius ≥ ``radius`` (NaN for an empty table)."""
    rows = len(table.get("idx", []))
    if rows == 0:
        return float("nan")
    return sum(1 for c, r in zip(table["correct"], table["radius"]) if c == 1 and r >= radius) / rows


def p_category(p: Any) -> str:
    """Which part of the p schedule an epoch's logged p belongs to: p=8, ramp or inf."""
    if p is None or (isinstance(p, float) and math.isinf(p)) or p == "inf":
        return "inf"
    return "p=8" if float(p) == 8.0 else "ramp"


def linf_metrics(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per epoch in each part of the p schedule, and the last logged accuracies.

    An epoch's p is the one the trainer logs for it (null: ∞). The first epoch of the run also
    compiles kernels, so it is reported apart and left out of its part's median when the part has
    other epochs.
    """
    per_p: dict[str, dict[str, Any]] = {}
    for i, epoch in enumerate(epochs):
        part = per_p.setdefault(p_category(epoch.get("p")), {"epochs": 0, "seconds": [], "first_run_epoch": None})
        part["epochs"] += 1
        if i == 0:
            part["first_run_epoch"] = epoch.get("seconds")
        else:
            part["seconds"].append(epoch.get("seconds"))
    for part in per_p.values():
        values = [s for s in part["seconds"] if s is not None] or (
            [part["first_run_epoch"]] if part["first_run_epoch"] is not None else [])
        part["median_s"] = statistics.median(values) if values else None
    cert = [e["test_cert_acc"] for e in epochs if e.get("test_cert_acc") is not None]
    return {"epochs_done": len(epochs), "per_p": per_p,
            "p_values": [e.get("p") for e in epochs],
            "train_seconds": sum(e.get("seconds") or 0 for e in epochs),
            "last_test_acc": epochs[-1].get("test_acc") if epochs else None,
            "last_test_cert_acc": cert[-1] if cert else None,
            "lp_dist_backend": sorted({str(e.get("lp_dist_backend")) for e in epochs})}


def nccl_metrics(train_log: str, probe_log: str, checkpoint: bool, certified_rows: int,
                 mode: str, train_ran: bool = True, probe_ran: bool = True) -> dict[str, Any]:
    """What the torchrun steps show: NCCL's own log lines (NCCL_DEBUG=INFO), the trainer's
    data-parallel line, the checkpoint, and the probe's backend. ``*_ran``: False for a step
    that was skipped (its rows then read "no data")."""
    probe = re.search(r"probe: backend (\S+) world (\d+).*ddp backward ok", probe_log)
    return {"expected_backend": "nccl" if mode == "gpu" else "gloo",
            "train_ran": train_ran, "probe_ran": probe_ran,
            "trainer_nccl_lines": len(re.findall(r"NCCL INFO", train_log)),
            "trainer_data_parallel": "data-parallel over" in train_log,
            "checkpoint_written": checkpoint, "certified_rows": certified_rows,
            "probe_backend": probe.group(1) if probe else None,
            "probe_nccl_lines": len(re.findall(r"NCCL INFO", probe_log))}


# ---------------------------------------------------------------- verdicts

def _why(steps: dict[str, Step], *names: str) -> str:
    """Why a row has no numbers: the status of the steps that should have produced them."""
    seen = [f"{n} {steps[n].status}" + (f" (exit {steps[n].rc})" if steps[n].rc not in (0, None) else "")
            for n in names if n in steps]
    return "no numbers: " + ", ".join(seen) if seen else "not run"


def _verdict(ok: bool | None) -> str:
    return "no data" if ok is None else ("met" if ok else "not met")


def _tests_target(name: str, counts: dict[str, int] | None, step: Step | None) -> Target:
    if not counts or step is None or step.status == "skipped":
        return Target(name, _why({step.name: step}, step.name) if step else "not run", "all pass", "no data")
    text = (f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
            f"{counts.get('errors', 0)} errors, {counts.get('skipped', 0)} skipped")
    if not counts.get("complete"):
        text += f" (stopped: {step.status})"
    bad = counts.get("failed", 0) + counts.get("errors", 0)
    if bad == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0) > 0:
        return Target(name, text, "all pass", "skipped")
    return Target(name, text, "all pass",
                  _verdict(bad == 0 and counts.get("passed", 0) > 0 and bool(counts.get("complete"))))


def _ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the default backend ('ours'; 'triton' if ours is missing)."""
    mine = [r for r in rows if r["impl"] == "ours"]
    return mine or [r for r in rows if r["impl"] == "triton"]


def _lp_targets(label: str, lp: dict[str, Any] | None, why: str = "not run") -> list[Target]:
    if not lp or not lp.get("rows"):
        return [Target(f"lp_dist {label}: fwd+bwd vs cdist, every p", why, "≥ 2×", "no data"),
                Target(f"lp_dist {label}: p=8 forward, FP32 peak", why, "≥ 30 %", "no data")]
    shape = f"B={lp['batch']}, CI=CO={lp['in_features']}"
    ours = _ours(lp["rows"])
    ratios = {r["p"]: r["fwdbwd_vs_cdist"] for r in ours if r["fwdbwd_vs_cdist"] is not None}
    if ratios:
        worst = min(ratios, key=lambda p: ratios[p])
        measured = (f"min {ratios[worst]:.2f}× (p={worst}); "
                    + ", ".join(f"p={p}: {v:.2f}×" for p, v in ratios.items()))
        ratio_target = Target(f"lp_dist fwd+bwd vs cdist, every p ({shape})", measured, "≥ 2×",
                              _verdict(ratios[worst] >= TARGET_FWD_BWD_VS_CDIST), ratios[worst])
    else:
        ratio_target = Target(f"lp_dist fwd+bwd vs cdist, every p ({shape})", "no cdist rows", "≥ 2×",
                              "no data")
    p8 = next((r for r in ours if r["p"] == "8"), None)
    name = f"lp_dist p=8 forward, fraction of FP32 peak ({shape})"
    if p8 is None:
        peak_target = Target(name, "no p=8 row", "≥ 30 %", "no data")
    elif p8.get("fwd_peak") is None:
        peak_target = Target(name, f"{p8['fwd_gops']:.2f} G el-ops/s (no peak on {lp['device']})",
                             "≥ 30 %", "n/a")
    else:
        peak_target = Target(name, f"{p8['fwd_peak']:.1%} ({p8['fwd_gops']:.0f} G el-ops/s, peak "
                                   f"{lp['peak_tflops']:g} TFLOP/s)", "≥ 30 %",
                             _verdict(p8["fwd_peak"] >= TARGET_P8_PEAK), p8["fwd_peak"])
    return [ratio_target, peak_target]


def _certification_targets(cert: dict[str, Any] | None, kind: str, why: str) -> list[Target]:
    """The s-per-image and speed-up targets of one certify_throughput run (its best method: Smooth's
    or the sequential method's, whichever was timed)."""
    if not cert or not cert.get("methods"):
        return [Target(f"certification ({kind}s per image)", why, "≤ 0.2 s", "no data"),
                Target(f"certification ({kind}speed-up over the reference loop)", why, "≥ 5×", "no data")]
    n_text = f"N = {cert['n']:,}" if cert.get("n") else "N = ?"
    ours = {k: v for k, v in cert["methods"].items() if k.startswith(("smooth", "sequential"))}
    targets = []
    if ours:
        best = min(ours, key=lambda k: ours[k]["s_per_example"])
        s = ours[best]["s_per_example"]
        targets.append(Target(f"certification, s per image ({kind}{cert['arch']}, {n_text}, best method)",
                              f"{s:.3f} s ({best})", "≤ 0.2 s", _verdict(s <= TARGET_S_PER_IMAGE), s))
    speedups = {k: v for k, v in cert.get("speedup", {}).items() if k.startswith(("smooth", "sequential"))}
    if speedups:
        fastest = max(speedups, key=lambda k: speedups[k])
        targets.append(Target(f"certification speed-up over the reference loop ({kind}{n_text}, best)",
                              f"{speedups[fastest]:.2f}× ({fastest})", "≥ 5×",
                              _verdict(speedups[fastest] >= TARGET_SPEEDUP), speedups[fastest]))
    else:
        targets.append(Target(f"certification speed-up over the reference loop ({kind.rstrip(', ')})",
                              "no reference timing", "≥ 5×", "no data"))
    return targets


def evaluate(results: dict[str, Any]) -> list[Target]:
    """Every target of the issue with its measured value and verdict, from the collected metrics."""
    steps = {s.name: s for s in results.get("steps_parsed", [])}
    tests = results.get("tests", {})
    targets = [
        _tests_target("GPU-marked tests (pytest -m gpu)", tests.get("gpu"), steps.get("tests_gpu")),
        _tests_target("Triton kernels vs float64 reference (test_lp_dist_triton.py)", tests.get("triton"),
                      steps.get("tests_triton")),
    ]
    for label in ("small", "large"):
        targets += _lp_targets(label, results.get("lp_dist", {}).get(label), _why(steps, f"lp_dist_{label}"))

    targets += _certification_targets(results.get("certification"), "",
                                      _why(steps, "certify_throughput", "certify_compile"))
    if "certify_trained" in steps:
        targets += _certification_targets(results.get("certification_trained"), "trained, ",
                                          _why(steps, "r110_train", "certify_trained"))

    prec = results.get("precision")
    if prec and prec.get("rows"):
        worst_acc = max(abs(v["fp32"] - v["bf16"]) for v in prec["cert_acc"].values())
        measured = (f"mean |Δr| {prec['mean_abs_radius_diff']:.4f} (MC sd {prec['mc_radius_sd']:.4f}), "
                    f"{prec['differing_predictions']}/{prec['rows']} predictions differ, "
                    f"max |Δ cert. acc| {worst_acc:.3f}")
        targets.append(Target(f"bf16 vs fp32 certified results (trained LeNet, {prec['rows']} images, "
                              f"N = {prec['n']:,})", measured, "within Monte-Carlo noise",
                              _verdict(prec["agree"]), prec["mean_abs_radius_diff"]))
    else:
        targets.append(Target("bf16 vs fp32 certified results", _why(steps, "precision_fp32", "precision_bf16"),
                              "within Monte-Carlo noise",
                              "no data"))

    linf = results.get("linf")
    if linf and linf.get("epochs_done"):
        parts = "; ".join(f"{k} {v['median_s']:.1f} s ({v['epochs']} ep.)"
                          for k, v in linf["per_p"].items() if v.get("median_s") is not None)
        cert_run = linf.get("certify") or {}
        acc = cert_run.get("cert_acc")
        acc_text = (f"; certify run: {acc:.3f} certified at ε = {LINF_EPS} on {cert_run['rows']} images"
                    if acc is not None else "")
        logged = linf.get("last_test_cert_acc")
        targets.append(Target("ℓ∞-dist training, s per epoch by p and certified accuracy",
                              f"{parts}; {linf['epochs_done']} epochs; logged cert. acc "
                              f"{logged if logged is not None else '-'}{acc_text}",
                              "report", "info"))
    else:
        targets.append(Target("ℓ∞-dist training", _why(steps, "linf_train"), "report", "no data"))

    nccl = results.get("nccl") or {}
    trainer_name = "NCCL initialised by the trainer under torchrun --nproc-per-node 1"
    checkpoint_name = "torchrun checkpoint written and accepted by certify run"
    probe_name = "NCCL all_reduce + certify's DDP wrapper (probe, 1 process)"
    if nccl.get("train_ran"):
        gpu = nccl["expected_backend"] == "nccl"
        measured = (f"{nccl['trainer_nccl_lines']} NCCL INFO lines; data-parallel path "
                    f"{'taken' if nccl['trainer_data_parallel'] else 'not taken (world size 1)'}")
        targets.append(Target(trainer_name, measured, "yes",
                              _verdict(nccl["trainer_nccl_lines"] > 0) if gpu else "n/a"))
        targets.append(Target(checkpoint_name,
                              f"checkpoint {'written' if nccl['checkpoint_written'] else 'missing'}, "
                              f"{nccl['certified_rows']} rows certified", "yes",
                              _verdict(nccl["checkpoint_written"] and nccl["certified_rows"] > 0)))
    else:
        why = _why(steps, "nccl_train")
        targets += [Target(trainer_name, why, "yes", "no data"), Target(checkpoint_name, why, "yes", "no data")]
    if nccl.get("probe_ran"):
        probe = nccl.get("probe_backend")
        targets.append(Target(probe_name, f"backend {probe or 'none'}; {nccl['probe_nccl_lines']} NCCL INFO lines",
                              f"backend {nccl['expected_backend']}", _verdict(probe == nccl["expected_backend"])))
    else:
        targets.append(Target(probe_name, _why(steps, "nccl_probe"), "backend nccl (gloo in QUICK mode)", "no data"))

    seq = results.get("sequential")
    if seq:
        targets.append(Target(f"sequential vs cohen (LeNet, N = {seq['n']:,}, {seq['rows']} images)",
                              f"sequential {seq['sequential_s']:.4f} s, cohen {seq['cohen_s']:.4f} s per "
                              f"image ({seq['speedup']:.1f}× faster)", "report (optional)", "info"))
    return targets


# ---------------------------------------------------------------- rendering

def _fmt(value: Any, spec: str = ".3f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a bare | would end the cell)."""
    return text.replace("|", "\\|")


def _certification_lines(cert: dict[str, Any] | None, title: str) -> list[str]:
    """The Markdown section of one certify_throughput run (and its compile run, if merged)."""
    lines: list[str] = []
    if cert and cert.get("methods"):
        lines += ["", f"## {title}: {cert.get('arch')}, N = {cert.get('n')}, {cert.get('examples')} "
                      f"images, {cert.get('repeats')} repeats ({cert.get('device')}; from the {cert['source']})",
                  "", "| method | s per image | samples/s | vs reference |", "|---|---:|---:|---:|"]
        for name, m in cert["methods"].items():
            lines.append(f"| {name} | {_fmt(m['s_per_example'], '.4f')} | {_fmt(m['samples_per_s'], '.0f')} | "
                         f"{_fmt(cert['speedup'].get(name), '.2f')} |")
        run = cert.get("compile_run")
        if run and run is not cert:
            lines.append("")
            lines.append(f"compile run (separate process, {run.get('repeats')} repeat(s), from the {run['source']}): "
                         + ", ".join(f"{k} {v['s_per_example']:.4f} s/image" for k, v in run["methods"].items())
                         + "; its speed-ups are against its own reference loop.")
        if cert.get("compile_s"):
            lines.append("")
            lines.append(f"torch.compile mode {cert.get('compile_mode')}: compile (first warm-up call) "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in cert["compile_s"].items())
                         + "; not in the timed part.")
    return lines


def render_markdown(results: dict[str, Any], targets: list[Target]) -> str:
    """summary.md: header with card / versions / date, the targets, details, the step table."""
    env = results.get("env", {})
    quick = results.get("mode") == "quick"
    lines = [f"# GPU check: {env.get('device_name', 'unknown device')}", ""]
    if quick:
        lines += ["**QUICK mode**: a CPU dry run with tiny sizes. The numbers exercise the script; they "
                  "are not comparable to the targets.", ""]
    card = env.get("device_name", "unknown")
    if env.get("device_memory_gib"):
        card += f" ({env['device_sms']} SMs, {env['device_memory_gib']} GiB, sm_{env['device_capability']})"
    lines += [f"- Card: {card}",
              f"- torch {env.get('torch', '?')} (CUDA {env.get('cuda') or '-'}), triton {env.get('triton', '?')}, "
              f"Python {env.get('python', '?')}, certify {env.get('certify', '?')}",
              f"- Date: {env.get('date', '?')}; total {results.get('elapsed_s', '?')} s of a "
              f"{results.get('budget_s', '?')} s budget"]
    if env.get("nvidia_smi"):
        lines.append(f"- nvidia-smi: {env['nvidia_smi']}")
    lines += ["", "## Targets", "", "| check | measured | target | verdict |", "|---|---|---|---|"]
    for t in targets:
        verdict = f"**{t.verdict}**" if t.verdict in ("met", "not met") else t.verdict
        lines.append(f"| {_cell(t.name)} | {_cell(t.measured)} | {_cell(t.target)} | {verdict} |")

    for label, lp in results.get("lp_dist", {}).items():
        if not lp or not lp.get("rows"):
            continue
        lines += ["", f"## lp_dist {label}: B={lp['batch']}, CI={lp['in_features']}, CO={lp['out_features']} "
                      f"({lp['device']}), G element-ops/s", "",
                  "| p | impl | fwd | vs cdist | fwd peak | fwd+bwd | vs cdist | f+b peak |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in lp["rows"]:
            lines.append(f"| {r['p']} | {r['impl']} | {_fmt(r['fwd_gops'], '.1f')} | "
                         f"{_fmt(r['fwd_vs_cdist'], '.2f')} | {_fmt(r['fwd_peak'], '.1%')} | "
                         f"{_fmt(r['fwdbwd_gops'], '.1f')} | {_fmt(r['fwdbwd_vs_cdist'], '.2f')} | "
                         f"{_fmt(r['fwdbwd_peak'], '.1%')} |")

    lines += _certification_lines(results.get("certification"), "Certification")
    lines += _certification_lines(results.get("certification_trained"), "Certification of a trained model")

    prec = results.get("precision")
    if prec and prec.get("rows"):
        lines += ["", "## bf16 vs fp32 (certified accuracy at radius r)", "",
                  "| r | fp32 | bf16 | tolerance (2 SE) |", "|---|---:|---:|---:|"]
        for r, v in prec["cert_acc"].items():
            lines.append(f"| {r} | {v['fp32']:.3f} | {v['bf16']:.3f} | {v['tolerance']:.3f} |")

    linf = results.get("linf")
    if linf and linf.get("epochs_done"):
        lines += ["", "## ℓ∞-dist training (seconds per epoch)", "",
                  "| part of the p schedule | epochs | median s/epoch | first epoch of the run (compiles) |",
                  "|---|---:|---:|---:|"]
        for part, v in linf["per_p"].items():
            lines.append(f"| {part} | {v['epochs']} | {_fmt(v['median_s'], '.2f')} | "
                         f"{_fmt(v['first_run_epoch'], '.2f')} |")

    lines += ["", "## Steps", "", "| step | status | exit | seconds | limit s |", "|---|---|---:|---:|---:|"]
    for s in results.get("steps_parsed", []):
        lines.append(f"| {s.name} | {s.status} | {'' if s.rc is None else s.rc} | {s.seconds:.1f} | "
                     f"{s.limit_s:.0f} |")
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def log_excerpts(logs: Path, steps: list[Step]) -> str:
    """The head and tail of each step's log (progress-bar redraws collapsed), in step order."""
    parts = []
    for step in steps:
        path = logs / f"{step.name}.log"
        if not path.exists():
            continue
        raw = path.read_text(errors="replace").splitlines()
        text = [line.rsplit("\r", 1)[-1] for line in raw]  # a tqdm bar keeps its last state
        if len(text) > LOG_HEAD + LOG_TAIL:
            text = text[:LOG_HEAD] + [f"... ({len(text) - LOG_HEAD - LOG_TAIL} lines) ..."] + text[-LOG_TAIL:]
        parts.append(f"==== {step.name}: {step.status}, exit {step.rc}, {step.seconds:.1f} s\n"
                     + "\n".join(line[:400] for line in text))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- collecting WORK

def _read_log(work: Path, name: str) -> str:
    path = work / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def collect(work: Path, mode: str) -> dict[str, Any]:
    """Every metric from gpu_check.sh's work folder; a part that cannot be read records its error."""
    steps = read_steps(work / "steps.tsv")
    status = {s.name: s for s in steps}

    def ran(name: str) -> bool:
        return name in status and status[name].status != "skipped"

    results: dict[str, Any] = {"mode": mode, "steps_parsed": steps, "errors": {}, "notes": []}
    env_path = work / "env.json"
    results["env"] = json.loads(env_path.read_text()) if env_path.exists() else environment()

    def attempt(key: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as error:  # one unreadable artifact must not hide the others
            results["errors"][key] = f"{type(error).__name__}: {error}"
            return None

    results["tests"] = {kind: pytest_counts(_read_log(work, f"tests_{kind}"))
                        for kind in ("gpu", "triton") if ran(f"tests_{kind}")}
    results["lp_dist"] = {}
    raw: dict[str, Any] = {}
    for label in ("small", "large"):
        path = work / f"lp_dist_{label}.json"
        if path.exists():
            payload = attempt(f"lp_dist_{label}", lambda path=path: json.loads(path.read_text()))
            if payload:
                raw[f"lp_dist_{label}"] = payload
                results["lp_dist"][label] = attempt(f"lp_dist_{label}", lambda p=payload: lp_dist_metrics(p))

    runs: dict[str, Any] = {}
    for name in ("certify_throughput", "certify_compile"):
        path = work / f"{name}.json"
        if path.exists():
            payload = attempt(name, lambda path=path: json.loads(path.read_text()))
            if payload:
                raw[name] = payload
                runs[name] = attempt(name, lambda payload=payload: certify_metrics(payload))
        elif ran(name):  # stopped before writing its JSON: the repetitions it printed
            runs[name] = attempt(name, lambda name=name: certify_from_log(_read_log(work, name))) or None
    results["certification"] = merge_certification(runs.get("certify_throughput"), runs.get("certify_compile"))
    trained = work / "certify_trained.json"
    if trained.exists():
        payload = attempt("certify_trained", lambda: json.loads(trained.read_text()))
        if payload:
            raw["certify_trained"] = payload
            results["certification_trained"] = attempt("certify_trained", lambda: certify_metrics(payload))
    elif ran("certify_trained"):
        results["certification_trained"] = attempt(
            "certify_trained", lambda: certify_from_log(_read_log(work, "certify_trained"))) or None

    def precision() -> dict[str, Any] | None:
        fp32, bf16 = work / "precision_fp32.tsv", work / "precision_bf16.tsv"
        if not (fp32.exists() and bf16.exists()):
            return None
        side = json.loads((work / "precision_fp32.tsv.json").read_text())
        return precision_metrics(read_tsv(fp32), read_tsv(bf16), float(side["sigma"]), int(side["n"]))
    results["precision"] = attempt("precision", precision)

    def linf() -> dict[str, Any] | None:
        path = work / "linf.jsonl"
        if not path.exists():
            return None
        epochs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        metrics = linf_metrics(epochs)
        tsv = work / "linf.tsv"
        if tsv.exists():
            table = read_tsv(tsv)
            metrics["certify"] = {"rows": len(table["idx"]), "eps": LINF_EPS,
                                  "clean_acc": certified_accuracy(table, 0.0),
                                  "cert_acc": certified_accuracy(table, LINF_EPS)}
        return metrics
    results["linf"] = attempt("linf", linf)

    def nccl() -> dict[str, Any] | None:
        if not (ran("nccl_train") or ran("nccl_probe")):
            return None
        tsv = work / "sm.tsv"
        rows = len(read_tsv(tsv)["idx"]) if tsv.exists() else 0
        ok = ran("nccl_train") and status["nccl_train"].status == "ok"
        return nccl_metrics(_read_log(work, "nccl_train"), _read_log(work, "nccl_probe"),
                            ok and (work / "sm.pt").exists(), rows, mode,
                            train_ran=ran("nccl_train"), probe_ran=ran("nccl_probe"))
    results["nccl"] = attempt("nccl", nccl)
    if results["nccl"] and results["nccl"]["expected_backend"] == "nccl" and results["nccl"]["train_ran"] \
            and not results["nccl"]["trainer_data_parallel"]:
        results["notes"].append("under torchrun --nproc-per-node 1 the trainer saw world size 1 and ran as "
                                "one process (certify.training.distributed treats world size 1 as "
                                "not distributed), so its NCCL branch did not run; the probe row shows "
                                "NCCL and certify's DDP wrapper on this card.")

    def sequential() -> dict[str, Any] | None:
        cohen, seq = work / "seq_cohen.tsv", work / "seq_sequential.tsv"
        if not (cohen.exists() and seq.exists()):
            return None
        a, b = read_tsv(cohen), read_tsv(seq)
        side = json.loads((work / "seq_cohen.tsv.json").read_text())
        cohen_s, seq_s = statistics.fmean(a["time"]), statistics.fmean(b["time"])
        return {"rows": len(a["idx"]), "n": int(side["n"]), "cohen_s": cohen_s, "sequential_s": seq_s,
                "speedup": cohen_s / seq_s if seq_s else float("nan"),
                "cohen_cert_acc": {f"{r:g}": certified_accuracy(a, r) for r in PRECISION_RADII},
                "sequential_cert_acc": {f"{r:g}": certified_accuracy(b, r) for r in PRECISION_RADII}}
    results["sequential"] = attempt("sequential", sequential)
    results["raw"] = raw
    return results


def _json_ready(value: Any) -> Any:
    """NaN and infinity as strings (JSON has neither), dataclasses as dicts."""
    if isinstance(value, Step | Target):
        return _json_ready(asdict(value))
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def summarize(work: Path, out: Path, mode: str, budget: float | None, elapsed: float | None) -> list[Target]:
    """Write summary.md, results.json and logs.txt into ``out``; return the targets."""
    results = collect(work, mode)
    results["budget_s"], results["elapsed_s"] = budget, elapsed
    targets = evaluate(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(render_markdown(results, targets))
    steps = results.pop("steps_parsed")
    payload = dict(results, steps=steps, targets=targets)
    (out / "results.json").write_text(json.dumps(_json_ready(payload), indent=1))
    (out / "logs.txt").write_text(log_excerpts(work / "logs", steps))
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env_p = sub.add_parser("env", help="write the environment as JSON")
    env_p.add_argument("--json", type=Path, required=True)
    sum_p = sub.add_parser("summarize", help="write summary.md, results.json and logs.txt")
    sum_p.add_argument("--work", type=Path, required=True)
    sum_p.add_argument("--out", type=Path, required=True)
    sum_p.add_argument("--mode", choices=["gpu", "quick"], default="gpu")
    sum_p.add_argument("--budget", type=float, default=None)
    sum_p.add_argument("--elapsed", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "env":
        env = environment()
        args.json.write_text(json.dumps(env, indent=1))
        print(json.dumps(env, indent=1))
        return 0
    targets = summarize(args.work, args.out, args.mode, args.budget, args.elapsed)
    for t in targets:
        print(f"{t.verdict:>8}  {t.name}: {t.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
