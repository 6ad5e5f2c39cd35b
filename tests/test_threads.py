"""xpnet's thread-pool environment settings: set only when the user has not, reversible, and applied after all
when NumPy was loaded before xpnet could set them. Each case runs in a new interpreter, as the settings act at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = ("import os, xpnet\n"
         "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), xpnet.threads.openblas_spin_limited())\n")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True)


def test_importing_xpnet_first_limits_openblas_spinning():
    assert _python(CHECK).stdout.split() == ["4", "True"]


def test_the_users_own_setting_is_kept():
    assert _python(CHECK, OPENBLAS_THREAD_TIMEOUT="10").stdout.split() == ["10", "True"]


def test_numpy_imported_first_is_detected():
    assert _python("import numpy\n" + CHECK).stdout.split() == ["4", "False"]


def test_numpy_imported_first_gets_the_spin_limit_without_a_warning():
    """Issue 14's import-order check: the Numba backend makes an early OpenBLAS re-read its environment."""
    pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")
    code = ("import numpy, xpnet, ctypes\n"
            "from xpnet import threads\n"
            "lib = ctypes.CDLL(threads._loaded_openblas())\n"
            "before = lib.openblas_thread_timeout()\n"
            "xpnet.use('numba')\n"
            "a = numpy.arange(40000.0).reshape(200, 200) / 4e4\n"
            "ok = numpy.array_equal(a @ a, numpy.einsum('ij,jk->ik', a, a)) or numpy.allclose(a @ a, "
            "numpy.einsum('ij,jk->ik', a, a), rtol=1e-13)\n"
            "print(before, lib.openblas_thread_timeout(), threads.openblas_spin_limited(), ok)\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.split() == ["0", "4", "True", "True"]


def test_restore_removes_only_what_xpnet_set():
    code = ("import os, xpnet\n"
            "from xpnet import threads\n"
            "threads.set_default('OMP_WAIT_POLICY', 'passive')\n"
            "threads.restore_user_environment()\n"
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('OMP_WAIT_POLICY'))\n")
    assert _python(code).stdout.split() == ["None", "None"]
    assert _python(code, OMP_WAIT_POLICY="active").stdout.split() == ["None", "active"]


def test_user_environment_leaves_out_what_xpnet_set():
    code = ("import xpnet\n"
            "xpnet.threads.set_default('OMP_WAIT_POLICY', 'passive')\n"
            "env = xpnet.threads.user_environment()\n"
            "print(env.get('OPENBLAS_THREAD_TIMEOUT'), env.get('OMP_WAIT_POLICY'))\n")
    assert _python(code).stdout.split() == ["None", "None"]
    assert _python(code, OPENBLAS_THREAD_TIMEOUT="6").stdout.split() == ["6", "None"]


def test_the_numba_backend_sets_a_short_openmp_spin():
    pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")
    code = "import os, xpnet\nxpnet.use('numba')\nprint(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])\n"
    assert _python(code).stdout.split() == ["passive", "10000"]
    assert _python(code, GOMP_SPINCOUNT="0").stdout.split() == ["passive", "0"]
