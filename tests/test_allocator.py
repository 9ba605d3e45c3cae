"""glibc malloc tuning: large freed blocks are reused instead of re-mapped (and re-faulted)."""

import os
import subprocess
import sys

import pytest

from certify.allocator import tune_malloc

# Fresh processes, so nothing else in the test session has shaped the heap.
PROBE = """
import resource, torch
from certify.allocator import tune_malloc
from certify.nets import build_model
print(tune_malloc())
model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28), mean=(0.0,), std=(1.0,)).eval()
x = torch.rand(1000, 1, 28, 28)  # a certification batch: activations of ~46 MB
with torch.inference_mode():
    model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_extra: dict) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "CERTIFY_NO_MALLOC_TUNING"} | env_extra
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuning_stops_page_faults_on_large_batches():
    tuned_flag, tuned = _faults({})
    plain_flag, plain = _faults({"CERTIFY_NO_MALLOC_TUNING": "1"})
    assert (tuned_flag, plain_flag) == ("True", "False")
    # untuned, every pass maps its large activations afresh: measured ~180,000 faults a pass
    assert plain > 100_000, plain
    assert tuned * 4 < plain, (tuned, plain)


class FakeMallopt:
    """Records mallopt calls instead of changing this test process's heap."""

    def __init__(self, result: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


class FakeLibc:
    def __init__(self, result: int = 1):
        self.mallopt = FakeMallopt(result)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("result", [1, 0])
def test_tuning_sets_both_thresholds_once_and_caches_the_outcome(monkeypatch, result):
    import certify.allocator as allocator

    libc = FakeLibc(result)
    monkeypatch.setattr(allocator, "_tuned", None)
    monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _name: libc)
    first = tune_malloc()
    assert first is bool(result)
    # mallopt returns 0 on failure: the trim threshold is then not attempted
    both = [(allocator.M_MMAP_THRESHOLD, 1 << 30), (allocator.M_TRIM_THRESHOLD, (1 << 31) - 1)]
    expected = both if result else both[:1]
    assert libc.mallopt.calls == expected
    assert tune_malloc() is first and libc.mallopt.calls == expected  # cached: no second mallopt


def test_opt_out_leaves_malloc_alone(monkeypatch):
    import certify.allocator as allocator

    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_tuned", None)
    monkeypatch.setenv(allocator.OPT_OUT, "1")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _name: libc)
    assert tune_malloc() is False and tune_malloc() is False
    assert libc.mallopt.calls == []
