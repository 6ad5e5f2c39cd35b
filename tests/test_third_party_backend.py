"""A third-party backend installed with pip is found through the ``xpnet.backends`` entry point and selected."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "xpnet-tiny-backend"

SCRIPT = """
import numpy as np, xpnet, xpnet_tiny_backend
backend = xpnet.get_backend()
xpnet.manual_seed(0)
model = xpnet.build_model("lenet5")
x = xpnet.tensor(np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32))
xpnet.nn.CrossEntropyLoss()(model(x), np.array([0, 1, 2, 3])).backward()
print(backend.name, "tiny" in xpnet.backends_available(), xpnet_tiny_backend.TinyBackend.col2im_calls)
"""


def test_pip_installed_backend_is_selected_by_env_var(tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "XPNET_BACKEND": "tiny"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    name, listed, calls = run.stdout.split()
    assert (name, listed) == ("tiny", "True")
    assert int(calls) == 1  # LeNet-5's second conv needs col2im; the first conv's input needs no gradient


def test_without_the_install_the_name_is_unknown():
    env = {**os.environ, "XPNET_BACKEND": "tiny"}
    run = subprocess.run([sys.executable, "-c", "import xpnet; xpnet.get_backend()"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode != 0 and "unknown xpnet backend 'tiny'" in run.stderr
