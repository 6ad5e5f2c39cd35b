"""``python benchmarks/import_order.py``: does ``import numpy`` before ``import xpnet`` still cost speed?

Each variant runs in a fresh interpreter (import order acts at load time): LeNet-5 training steps at batch 64 on
the Numba backend, median of ``--steps`` after a warm-up. ``xpnet first`` sets OPENBLAS_THREAD_TIMEOUT before
OpenBLAS loads; ``numpy first`` relies on xpnet making the loaded OpenBLAS re-read it (``threads.reapply_openblas_env``);
``numpy first, OpenBLAS default spin`` sets OpenBLAS's own default (2^28 cycles, about 0.1 s) as a user could, which
xpnet respects: the cost the re-read avoids. Recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STEPS = """
import time, statistics
import numpy as np
import xpnet
from xpnet import nn, optim
xpnet.use("numba")
xpnet.manual_seed(0)
model = xpnet.build_model("lenet5")
opt = optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
rng = np.random.default_rng(0)
x = rng.random((64, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, 64)
times = []
for i in range({warmup} + {steps}):
    started = time.perf_counter()
    opt.zero_grad()
    loss = loss_fn(model(xpnet.tensor(x)), y)
    loss.backward()
    opt.step()
    if i >= {warmup}:
        times.append(time.perf_counter() - started)
print(statistics.median(times) * 1e3)
"""

VARIANTS = {
    "xpnet first": ("", {}),
    "numpy first": ("import numpy\n", {}),
    "numpy first, OpenBLAS default spin": ("import numpy\n", {"OPENBLAS_THREAD_TIMEOUT": "28"}),
}


def median_step_ms(prefix: str, env: dict[str, str], steps: int) -> float:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "XPNET_BACKEND")}
    code = prefix + STEPS.format(warmup=20, steps=steps)
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median of each variant's rounds")
    args = p.parse_args()
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (prefix, env) in VARIANTS.items():
            results[name].append(median_step_ms(prefix, env, args.steps))
    base = sorted(results["xpnet first"])[len(results["xpnet first"]) // 2]
    print("| import order | ms per LeNet-5 step, batch 64 (median of rounds) | vs xpnet first |")
    print("|---|---:|---:|")
    for name, values in results.items():
        median = sorted(values)[len(values) // 2]
        print(f"| {name} | {median:.2f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
