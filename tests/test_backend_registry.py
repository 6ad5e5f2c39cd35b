"""Backend selection: XPNET_BACKEND, xpnet.use, entry points, and clear errors instead of silent fallbacks."""

import os
import subprocess
import sys

import pytest

import xpnet
from xpnet.backend import BackendUnavailable


def run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_unknown_backend_from_env_names_valid_choices():
    result = run_python("import xpnet; xpnet.get_backend()", XPNET_BACKEND="nonsense")
    assert result.returncode != 0
    assert "unknown xpnet backend 'nonsense'" in result.stderr
    for name in ("numpy", "numba", "cupy"):
        assert name in result.stderr.splitlines()[-1]


def test_import_never_imports_cupy_or_numba():
    code = ("import sys, xpnet; xpnet.get_backend(); import xpnet.backends.numpy; "
            "print('cupy' in sys.modules, 'numba' in sys.modules)")
    result = run_python(code, XPNET_BACKEND="numpy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_env_var_picks_backend_at_first_use():
    result = run_python("import xpnet; print(xpnet.get_backend().name)", XPNET_BACKEND="numpy")
    assert result.stdout.strip() == "numpy"


def run_unset(code):
    env = {k: v for k, v in os.environ.items() if k != "XPNET_BACKEND"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_unset_env_picks_numba_when_installed():
    pytest.importorskip("numba", reason="the numba backend needs numba: pip install 'xpnet[numba]'")
    result = run_unset("import xpnet; print(xpnet.get_backend().name)")
    assert result.returncode == 0 and result.stdout.strip() == "numba", result.stderr


def test_unset_env_falls_back_to_numpy_without_numba():
    result = run_unset("import sys; sys.modules['numba'] = None\n"  # as if numba were not installed
                       "import xpnet; print(xpnet.get_backend().name)")
    assert result.returncode == 0 and result.stdout.strip() == "numpy", result.stderr


def test_use_switches_and_returns_backend():
    backend = xpnet.use("numpy")
    assert backend is xpnet.get_backend() and backend.name == "numpy"


def test_use_unknown_name_raises_and_keeps_current():
    before = xpnet.get_backend()
    with pytest.raises(BackendUnavailable, match="valid backends: .*numpy"):
        xpnet.use("tensorflow")
    assert xpnet.get_backend() is before


def test_backends_available_lists_numpy():
    available = xpnet.backends_available()
    assert "numpy" in available
    assert set(available) <= set(xpnet.backend_names())


def test_missing_library_gives_install_hint(monkeypatch):
    """A backend whose module cannot import is reported with what to install, not silently replaced."""
    from xpnet import backend as registry

    monkeypatch.setitem(registry._BUILTIN, "ghost", "xpnet_no_such_module:GhostBackend")
    monkeypatch.setitem(registry._INSTALL_HINTS, "ghost", "pip install ghost")
    with pytest.raises(BackendUnavailable, match="pip install ghost"):
        xpnet.get_backend("ghost")
