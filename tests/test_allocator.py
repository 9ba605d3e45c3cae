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


def test_tuning_is_idempotent():
    assert tune_malloc() == tune_malloc()
