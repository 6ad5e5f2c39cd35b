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


def tiny_idx(folder, n_train=40, n_test=10):
    """Random images in the four IDX files of MNIST and Fashion-MNIST (the same names)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder


def test_readme_train_save_load_predict_runs(tmp_path):
    example = python_blocks()[0]
    assert "save_checkpoint" in example and "xpnet.predict" in example
    script = tmp_path / "example.py"
    script.write_text(example)
    env = {**os.environ, "XPNET_DATA": str(tiny_idx(tmp_path / "mnist")), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted_by_model, predicted_from_file = done.stdout.splitlines()
    assert predicted_by_model.startswith("[") and predicted_by_model.split("]")[0] + "]" == predicted_from_file
    assert (tmp_path / "lenet5.npz").is_file()


def test_readme_model_module_and_training_loop_run(tmp_path):
    module, loop = python_blocks()[1:3]
    assert module.startswith("# my_models.py") and "from my_models import build" in loop
    (tmp_path / "my_models.py").write_text(module)
    data = tiny_idx(tmp_path / "fashion")
    script = tmp_path / "loop.py"
    script.write_text(loop + "\nprint('trained', loss.item())\n")
    env = {**os.environ, "XPNET_DATA": str(data), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained" in done.stdout
