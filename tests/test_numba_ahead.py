"""The Numba backend's cold start helper (``backends/numba_ahead.py``): on an empty cache the backward kernels are
compiled by the helper while the forward runs, and the main process loads them; on a filled cache no helper starts.

Each check runs in a fresh interpreter, since which signatures a kernel has compiled (or loaded) is per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba", reason="the numba backend needs numba")

from xpnet.backends import numba_ahead  # noqa: E402

pytestmark = pytest.mark.skipif(not numba_ahead.CACHE, reason="the helper is off when kernels are not cached "
                                "(NUMBA_BOUNDSCHECK=1)")

RELU_STEP = """
import json
import numpy as np
import xpnet
from xpnet.backends import numba as nb, numba_ahead
xpnet.use("numba")
x = xpnet.tensor(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8), requires_grad=True)
xpnet.functional.relu(x).sum().backward()
stats = nb._relu_backward.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "helper": numba_ahead.AHEAD._starts > 0, "grad": x.grad.data.tolist()}))
"""


def run_child(code: str, cache_dir: str | None, **env: str) -> dict:
    """The last line of ``code``'s output, as JSON, run with ``cache_dir`` as Numba's cache (None: the user's)."""
    cache = {} if cache_dir is None else {"NUMBA_CACHE_DIR": cache_dir}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **cache, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cold_step_loads_its_backward_kernel_from_the_helper(tmp_path):
    cold = run_child(RELU_STEP, str(tmp_path))
    assert cold["helper"] and (cold["hits"], cold["misses"]) == (1, 0)
    warm = run_child(RELU_STEP, str(tmp_path))
    assert not warm["helper"] and (warm["hits"], warm["misses"]) == (1, 0)
    assert warm["grad"] == cold["grad"]


def test_without_the_helper_the_main_process_compiles_the_backward(tmp_path):
    off = run_child(RELU_STEP, str(tmp_path), XPNET_NUMBA_AHEAD="0")
    assert not off["helper"] and (off["hits"], off["misses"]) == (0, 1)


SIGNATURES = """
import json
import numpy as np
import xpnet
from xpnet import nn
from xpnet.backends import numba as nb

def signatures():
    return {op: [sorted(map(str, k.signatures)) for k in kernels] for op, kernels in nb.BACKWARD_KERNELS.items()}

xpnet.use("numba")
for dtype in ("float32", "float64"):
    for op in nb.BACKWARD_KERNELS:
        nb.NumbaBackend.compile_backward(op, dtype)
tiny = signatures()
for dtype in ("float32", "float64"):
    xpnet.set_default_dtype(dtype)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.MaxPool2d(3, stride=1, padding=1),
                          nn.AvgPool2d(3, stride=1, padding=1), nn.MaxPool2d(2), nn.MaxPool2d(3, padding=1))
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(dtype)
    model(xpnet.tensor(x, requires_grad=True)).sum().backward()
print(json.dumps({"tiny": tiny, "real": signatures()}))
"""


def test_the_helpers_tiny_calls_compile_what_real_layers_use(tmp_path):
    """A real forward and backward of every op in both dtypes adds no signature to what ``compile_backward``
    compiled: the helper's work is exactly what the main process would have compiled (the user's cache is used,
    so this is quick once filled)."""
    result = run_child(SIGNATURES, None, XPNET_NUMBA_AHEAD="0")
    assert result["real"] == result["tiny"]
    assert all(len(sigs) == 2 for kernels in result["tiny"].values() for sigs in kernels)


def test_an_unknown_op_is_refused_by_name():
    from xpnet.backends.numba import NumbaBackend

    with pytest.raises(ValueError, match="'conv_fancy'"):
        NumbaBackend.compile_backward("conv_fancy", "float32")


IDLE_THEN_POOL = """
import json, time
import numpy as np
import xpnet
from xpnet.backends import numba as nb, numba_ahead
xpnet.use("numba")
x = xpnet.tensor(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8), requires_grad=True)
xpnet.functional.relu(x).sum().backward()
first = numba_ahead.AHEAD._helper
deadline = time.monotonic() + numba_ahead.IDLE_EXIT_S + 60
while numba_ahead.AHEAD._helper is not None and time.monotonic() < deadline:
    time.sleep(0.1)
exited = numba_ahead.AHEAD._helper is None and first is not None and first.poll() == 0
xpnet.functional.max_pool2d(x, 2).sum().backward()
stats = nb._max_pool_backward_2x2.stats
print(json.dumps({"exited": exited, "starts": numba_ahead.AHEAD._starts, "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def test_an_idle_helper_exits_and_the_next_cold_op_starts_another(tmp_path):
    """The helper that compiled ReLU's backward exits on its own once idle (it holds about 150 MB), with status 0;
    a later cold op (max pooling) starts a second helper, whose kernel the main process then loads."""
    result = run_child(IDLE_THEN_POOL, str(tmp_path))
    assert result == {"exited": True, "starts": 2, "hits": 1, "misses": 0}


def test_the_helper_exits_when_its_input_closes():
    """A main process that ends closes the helper's input: an idle helper then exits at once, with status 0."""
    helper = subprocess.Popen([sys.executable, "-m", "xpnet.backends.numba_ahead"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = helper.communicate("", timeout=60)
    assert (helper.returncode, out) == (0, ""), err
