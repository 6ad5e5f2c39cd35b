"""The README's Python examples run as written: its model module and its training loop, on a tiny dataset in
Fashion-MNIST's format found through XPNET_DATA (as a user's own copy would be)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from xpnet.data import write_idx

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_model_module_and_training_loop_run(tmp_path):
    module, loop = python_blocks()[:2]
    assert module.startswith("# my_models.py") and "from my_models import build" in loop
    (tmp_path / "my_models.py").write_text(module)
    data = tmp_path / "fashion"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    script = tmp_path / "loop.py"
    script.write_text(loop + "\nprint('trained', loss.item())\n")
    env = {**os.environ, "XPNET_DATA": str(data), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained" in done.stdout
