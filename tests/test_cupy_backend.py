"""The CuPy backend: on a GPU, its kernels against NumPy; everywhere, clear failures and no stray CUDA imports."""

import os
import subprocess
import sys
import time
import types
from importlib.util import find_spec

import numpy as np
import pytest
from gpu_emulator import EmulatedModule, gather_reference, gxx

import xpnet
from xpnet import backend as registry
from xpnet import functional as F
from xpnet.backend import BackendUnavailable
from xpnet.backends import cupy as cupy_backend_module
from xpnet.backends.cuda_launch import COL2IM_SOURCE, MAX_GRID, col2im_launch
from xpnet.backends.cuda_probe import probe
from xpnet.kernels import out_size

needs_cupy = pytest.mark.skipif(find_spec("cupy") is None, reason="cupy is not installed")


def bits(a):
    return a.view({4: np.uint32, 8: np.uint64}[a.itemsize])


@pytest.fixture(scope="module")
def cupy_backend():
    reason = probe()
    if reason is not None:
        pytest.skip(f"no usable GPU for the CuPy backend: {reason}")
    return xpnet.get_backend("cupy")


# --- layer 3: on a GPU ----------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_arrays_round_trip(cupy_backend):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    on_device = cupy_backend.asarray(a)
    assert cupy_backend.is_array(on_device) and not cupy_backend.is_array(a)
    cupy_backend.synchronize()
    np.testing.assert_array_equal(cupy_backend.to_numpy(on_device), a)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel, stride, padding, dilation, dtype", [
    ((1, 1), (1, 1), (0, 0), (1, 1), np.float32), ((3, 3), (1, 1), (1, 1), (1, 1), np.float32),
    ((3, 3), (2, 2), (1, 1), (1, 1), np.float64), ((5, 5), (3, 3), (2, 2), (1, 1), np.float32),
    ((2, 5), (3, 1), (2, 0), (1, 1), np.float64), ((3, 1), (1, 2), (0, 1), (1, 1), np.float32),
    ((3, 3), (1, 1), (2, 2), (2, 2), np.float32), ((3, 2), (2, 1), (1, 2), (3, 2), np.float64),
])
def test_col2im_kernel_is_bit_identical_to_numpy_and_deterministic(cupy_backend, kernel, stride, padding,
                                                                   dilation, dtype):
    rng = np.random.default_rng(0)
    x_shape = (3, 4, 13, 9)
    cols_shape = (3, 4, *kernel, *(out_size(size, k, s, p, d) for size, k, s, p, d in
                                   zip(x_shape[2:], kernel, stride, padding, dilation)))
    cols = rng.standard_normal(cols_shape).astype(dtype)
    on_device = cupy_backend.asarray(cols)
    first = cupy_backend.to_numpy(cupy_backend.col2im(on_device, x_shape, stride, padding, dilation))
    again = cupy_backend.to_numpy(cupy_backend.col2im(on_device, x_shape, stride, padding, dilation))
    np.testing.assert_array_equal(bits(first), bits(gather_reference(cols, x_shape, stride, padding, dilation)))
    numpy_col2im = xpnet.get_backend("numpy").col2im(cols, x_shape, stride, padding, dilation)
    np.testing.assert_array_equal(bits(first), bits(numpy_col2im))
    np.testing.assert_array_equal(bits(first), bits(again))


@pytest.mark.gpu
def test_col2im_kernel_on_an_image_larger_than_the_grid(cupy_backend):
    x_shape = (4, 64, 70, 70)
    assert np.prod(x_shape) > MAX_GRID * 256  # the default launch must take the grid-stride loop
    cols = np.random.default_rng(1).standard_normal((4, 64, 3, 3, 70, 70)).astype(np.float32)
    got = cupy_backend.to_numpy(cupy_backend.col2im(cupy_backend.asarray(cols), x_shape, (1, 1), (1, 1)))
    np.testing.assert_array_equal(bits(got), bits(xpnet.get_backend("numpy").col2im(cols, x_shape, (1, 1), (1, 1))))


@pytest.mark.gpu
def test_col2im_rejects_unsupported_dtypes(cupy_backend):
    cols = cupy_backend.asarray(np.zeros((1, 1, 2, 2, 2, 2), np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        cupy_backend.col2im(cols, (1, 1, 3, 3), (1, 1), (0, 0))


@pytest.mark.gpu
@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
def test_im2col_matches_numpy(cupy_backend, dilation):
    x = np.random.default_rng(2).standard_normal((2, 3, 11, 8)).astype(np.float32)
    got = cupy_backend.to_numpy(cupy_backend.im2col(cupy_backend.asarray(x), (3, 2), (2, 1), (1, 2), dilation))
    np.testing.assert_array_equal(got, xpnet.get_backend("numpy").im2col(x, (3, 2), (2, 1), (1, 2), dilation))


@pytest.mark.gpu
@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 4),
                                                               (1, 1, 1, 8)])
def test_conv2d_matches_numpy(cupy_backend, stride, padding, dilation, groups):
    """Grouped, depthwise and dilated convolution: forward and all three gradients, through autograd."""
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(s) for s in ((2, 8, 9, 10), (8, 8 // groups, 3, 3), (8,))]
    results = {}
    for name in ("numpy", "cupy"):
        xpnet.use(name)
        backend = xpnet.get_backend()
        ts = [xpnet.tensor(backend.asarray(a), requires_grad=True) for a in arrays]
        out = F.conv2d(*ts, stride=stride, padding=padding, dilation=dilation, groups=groups)
        out.backward(backend.asarray(np.random.default_rng(7).standard_normal(out.shape)))
        results[name] = [out.numpy()] + [backend.to_numpy(t.grad) for t in ts]
    xpnet.use("numpy")
    for got, want in zip(results["cupy"], results["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.gpu
def test_max_pool_matches_numpy(cupy_backend):
    reference = xpnet.get_backend("numpy")
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 10)).astype(np.float32)
    out, argmax = cupy_backend.max_pool_forward(cupy_backend.asarray(x), (3, 3), (2, 2))
    ref_out, ref_argmax = reference.max_pool_forward(x, (3, 3), (2, 2))
    np.testing.assert_array_equal(cupy_backend.to_numpy(out), ref_out)
    np.testing.assert_array_equal(cupy_backend.to_numpy(argmax), ref_argmax)
    gout = np.random.default_rng(4).standard_normal(ref_out.shape).astype(np.float32)
    gx = cupy_backend.max_pool_backward(cupy_backend.asarray(gout), argmax, x.shape, (3, 3), (2, 2))
    np.testing.assert_allclose(cupy_backend.to_numpy(gx),
                               reference.max_pool_backward(gout, ref_argmax, x.shape, (3, 3), (2, 2)), rtol=1e-6)


# --- everywhere: the backend's own col2im code, with the emulator standing in for the GPU -------------------------

def emulated_cupy(emulator, launches):
    """A stand-in ``cupy`` module: NumPy arrays, and a RawModule whose kernels run on the emulator."""
    def raw_module(code):
        assert code == COL2IM_SOURCE.read_text()  # the unchanged .cu is what CuPy would compile

        def get_function(name):
            def kernel(grid, block, args):
                launches.append((name, grid, block, args))
                emulator.launch(name, grid, block, args)
            return kernel
        return types.SimpleNamespace(get_function=get_function)

    return types.SimpleNamespace(ndarray=np.ndarray, ascontiguousarray=np.ascontiguousarray, empty=np.empty,
                                 RawModule=raw_module)


def test_backend_col2im_path_on_the_emulator(monkeypatch, tmp_path):
    """CupyBackend.col2im hands the kernel exactly col2im_launch's grid, block and checked arguments."""
    if gxx() is None:
        pytest.skip("g++ is not on PATH, so the CUDA emulator cannot be built")
    launches = []
    monkeypatch.setitem(sys.modules, "cupy", emulated_cupy(EmulatedModule(COL2IM_SOURCE, tmp_path), launches))
    monkeypatch.setattr(cupy_backend_module, "probe", lambda: None)
    backend = cupy_backend_module.CupyBackend()
    for dtype, kernel in ((np.float32, "col2im_gather_f32"), (np.float64, "col2im_gather_f64")):
        for dilation, cols_shape in (((1, 1), (2, 3, 3, 2, 5, 7)), ((2, 3), (2, 3, 3, 2, 4, 5))):
            cols = np.random.default_rng(5).standard_normal(cols_shape).astype(dtype)
            got = backend.col2im(cols, (2, 3, 10, 8), (2, 1), (1, 0), dilation)
            expected_img = gather_reference(cols, (2, 3, 10, 8), (2, 1), (1, 0), dilation)
            np.testing.assert_array_equal(bits(got), bits(expected_img))
            expected = col2im_launch(cols.shape, (2, 3, 10, 8), (2, 1), (1, 0), dilation, dtype)
            name, grid, block, args = launches[-1]
            assert (name, grid, block) == (kernel, expected.grid, expected.block)
            assert args[0] is cols and args[1] is got and args[2:] == expected.scalars


# --- everywhere: selection fails fast and clearly, and CUDA stays untouched unless asked for --------------------

def usable_device_reason():
    """The probe's reason on a machine without a usable device; skip where there is one (nothing to report)."""
    reason = probe()
    if reason is None:
        pytest.skip("a usable CUDA device is present, so the CuPy backend does not fail here")
    return reason


@needs_cupy
def test_selecting_cupy_without_a_device_fails_fast_with_the_probe_reason():
    reason = usable_device_reason()
    assert reason.startswith("cupy is installed but no usable CUDA device: ")
    with pytest.raises(BackendUnavailable) as info:
        xpnet.use("cupy")
    assert reason in str(info.value)
    assert xpnet.get_backend().name == "numpy"


@needs_cupy
def test_cupy_from_the_environment_fails_fast_with_the_probe_reason():
    reason = usable_device_reason()
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", "import xpnet; xpnet.get_backend()"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "XPNET_BACKEND": "cupy"})
    assert time.perf_counter() - start < 60
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("xpnet.backend.BackendUnavailable: ") and reason in last_line


def test_missing_cupy_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    monkeypatch.setattr(registry, "_instances", {})
    with pytest.raises(BackendUnavailable, match=r"pip install 'xpnet\[cuda12\]'"):
        xpnet.get_backend("cupy")


def test_numpy_backend_and_cupy_module_never_import_cupy():
    code = ("import sys, xpnet; xpnet.use('numpy'); import xpnet.backends.cupy, xpnet.backends.cuda_probe; "
            "from xpnet.backends.cuda_launch import col2im_launch; "
            "col2im_launch((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), 'float32'); "
            "print('cupy' in sys.modules, 'cupy_backends' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
