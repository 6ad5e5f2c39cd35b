"""The CUDA col2im kernel without a GPU: it compiles warning-free (NVRTC, nvcc) and, built for the CPU with a
shim, gives bit-identical results to a NumPy gather in the same order under the launches the backend makes,
with and without dilation."""

import itertools
import re
import shutil
import subprocess

import numpy as np
import pytest
from gpu_emulator import EmulatedModule, gather_reference, gxx

import xpnet
from xpnet.backends.cuda_launch import COL2IM_KERNELS, COL2IM_SOURCE, MAX_GRID, col2im_launch
from xpnet.backends.cuda_source import kernel_params
from xpnet.kernels import out_size

ARCHS = (80, 90)
ENTRY_POINTS = set(COL2IM_KERNELS.values())
UINT = {4: np.uint32, 8: np.uint64}


def bits(a):
    """The raw bits of a float array, so comparisons are exact (no NaN or signed-zero leniency)."""
    return a.view(UINT[a.itemsize])


# --- layer 1: the unchanged .cu compiles for sm_80 and sm_90 with no warnings ----------------------------------

def nvrtc():
    """CuPy's NVRTC binding, loaded from the nvidia-cuda-nvrtc-cu12 wheel; skip (with why) if it cannot load."""
    cupy = pytest.importorskip("cupy", reason="cupy is not installed, so NVRTC cannot be loaded through it "
                               "(pip install 'xpnet[cuda12]')")
    nvrtc = cupy.cuda.nvrtc  # an alias of cupy_backends.cuda.libs.nvrtc, not an importable submodule
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the binding is there but libnvrtc.so.12 is not loadable
        pytest.skip(f"cupy is installed but libnvrtc cannot be loaded: {type(exc).__name__}: {exc}")
    return nvrtc


def nvrtc_compile(source, arch):
    """PTX (arch compute_XX) or cubin (sm_XX) for ``source``; any log output (a warning) fails the test."""
    lib = nvrtc()
    program = lib.createProgram(source, "col2im.cu", [], [])
    try:
        lib.compileProgram(program, [f"-arch={arch}"])
        log = lib.getProgramLog(program)
        assert not log.strip(), f"NVRTC warnings for {arch} (treated as errors):\n{log}"
        return lib.getPTX(program) if arch.startswith("compute") else lib.getCUBIN(program)
    finally:
        lib.destroyProgram(program)


@pytest.mark.parametrize("arch", [f"{kind}_{cc}" for cc in ARCHS for kind in ("compute", "sm")])
def test_nvrtc_compiles_col2im_warning_free(arch):
    output = nvrtc_compile(COL2IM_SOURCE.read_text(), arch)
    text = output.decode(errors="replace")
    for entry in ENTRY_POINTS:
        assert entry in text, f"entry point {entry} missing from the {arch} output"


def test_nvrtc_warning_check_catches_warnings():
    """The empty-log check above really sees warnings (NVRTC has no -Werror)."""
    with pytest.raises(AssertionError, match="declared but never referenced"):
        nvrtc_compile('extern "C" __global__ void k(int* a) { int unused; a[0] = 1; }', "compute_80")


def test_ptx_parameter_widths_match_the_checked_argument_spec():
    """The compiler's own view of each entry point's parameters has the widths the launch arguments have."""
    ptx = nvrtc_compile(COL2IM_SOURCE.read_text(), "compute_80").decode()
    for name, params in kernel_params(COL2IM_SOURCE.read_text()).items():
        body = re.search(rf"\.entry {name}\((.*?)\)", ptx, re.S).group(1)
        widths = [int(bits_) // 8 for bits_ in re.findall(r"\.param \.[us](\d+) ", body)]
        assert widths == [8 if p.is_pointer else p.dtype.itemsize for p in params], name


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("cc", ARCHS)
def test_nvcc_compiles_col2im_with_warnings_as_errors(cc, tmp_path):
    for kind, arch, suffix in (("-cubin", f"sm_{cc}", "cubin"), ("-ptx", f"compute_{cc}", "ptx")):
        out = tmp_path / f"col2im.{suffix}"
        result = subprocess.run(["nvcc", kind, f"-arch={arch}", "--Werror", "all-warnings", "-o", str(out),
                                 str(COL2IM_SOURCE)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert out.stat().st_size > 0


# --- layer 2: the unchanged .cu run on the CPU through the emulator -------------------------------------------

@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if gxx() is None:
        pytest.skip("g++ is not on PATH, so the CUDA emulator cannot be built")
    return EmulatedModule(COL2IM_SOURCE, tmp_path_factory.mktemp("gpu_emulator"))


def emulated_col2im(emulator, cols, x_shape, stride, padding, dilation=(1, 1), **launch_kw):
    """col2im through the emulator with exactly the launch the CuPy backend computes (img starts as NaN)."""
    launch = col2im_launch(cols.shape, x_shape, stride, padding, dilation, cols.dtype, **launch_kw)
    img = np.full(x_shape, np.nan, cols.dtype)
    emulator.launch(launch.kernel, launch.grid, launch.block, launch.args(cols, img))
    return img, launch


def random_case(rng, kernel, stride, padding, dtype, dilation=(1, 1)):
    """Random N, C and non-square H, W that fit the (dilated) window, and random columns of that shape."""
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = kernel, stride, padding, dilation
    h = int(rng.integers(max(1, dy * (kh - 1) + 1 - 2 * ph), 14))
    w = int(rng.integers(max(1, dx * (kw - 1) + 1 - 2 * pw), 14))
    x_shape = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), h, w)
    cols_shape = (*x_shape[:2], kh, kw, out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx))
    return rng.standard_normal(cols_shape).astype(dtype), x_shape


SQUARE = [((k, k), (s, s), (p, p), (1, 1), dtype) for k, s, p, dtype in
          itertools.product((1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (np.float32, np.float64))]
ODD = [((3, 1), (1, 2), (0, 1), (1, 1), np.float32), ((2, 5), (3, 1), (2, 0), (1, 1), np.float64),
       ((5, 2), (2, 3), (1, 2), (1, 1), np.float32), ((1, 3), (2, 2), (1, 0), (1, 1), np.float64)]
# Dilation: taps further apart than the stride (windows interleave), equal to it, and coprime with it.
DILATED = [((3, 3), (1, 1), (2, 2), (2, 2), np.float32), ((3, 3), (2, 2), (1, 1), (2, 2), np.float64),
           ((2, 3), (2, 3), (1, 0), (3, 2), np.float32), ((3, 2), (1, 2), (0, 2), (2, 3), np.float64),
           ((5, 5), (1, 1), (4, 4), (2, 2), np.float64), ((3, 1), (3, 1), (2, 0), (2, 1), np.float32),
           ((2, 2), (2, 1), (3, 1), (4, 3), np.float64), ((1, 3), (1, 3), (0, 3), (1, 3), np.float32)]


@pytest.mark.parametrize("index, case", list(enumerate(SQUARE + ODD + DILATED)))
def test_emulated_kernel_is_bit_identical_to_numpy_gather(emulator, index, case):
    kernel, stride, padding, dilation, dtype = case
    rng = np.random.default_rng(index)
    cols, x_shape = random_case(rng, kernel, stride, padding, dtype, dilation)
    block = (32, 128, 256, 1024)[index % 4]
    max_grid = (1, 2, 3, MAX_GRID)[index // 4 % 4]
    img, launch = emulated_col2im(emulator, cols, x_shape, stride, padding, dilation, block=block,
                                  max_grid=max_grid)

    assert launch.kernel == COL2IM_KERNELS[np.dtype(dtype)]
    np.testing.assert_array_equal(bits(img), bits(gather_reference(cols, x_shape, stride, padding, dilation)))
    # The NumPy backend's slice-adds accumulate in the same order, so the GPU path matches it bit for bit too.
    numpy_col2im = xpnet.get_backend("numpy").col2im(cols, x_shape, stride, padding, dilation)
    np.testing.assert_array_equal(bits(img), bits(numpy_col2im))


@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-13)])
def test_emulated_kernel_matches_add_at_scatter(emulator, dtype, rtol, dilation):
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = (3, 5), (2, 1), (1, 2), dilation
    cols, x_shape = random_case(np.random.default_rng(1), (kh, kw), (sy, sx), (ph, pw), dtype, dilation)
    n, c, h, w = x_shape
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype)
    ky, kx, oy, ox = np.meshgrid(*(np.arange(d) for d in cols.shape[2:]), indexing="ij")
    np.add.at(padded, (slice(None), slice(None), (oy * sy + ky * dy).ravel(), (ox * sx + kx * dx).ravel()),
              cols.reshape(n, c, -1))
    img, _ = emulated_col2im(emulator, cols, x_shape, (sy, sx), (ph, pw), dilation)
    np.testing.assert_allclose(img, padded[:, :, ph:ph + h, pw:pw + w], rtol=rtol, atol=rtol)


def test_grid_stride_loop_covers_problems_larger_than_the_grid(emulator):
    cols = np.random.default_rng(3).standard_normal((3, 4, 3, 3, 12, 10)).astype(np.float32)
    x_shape = (3, 4, 12, 10)
    expected = gather_reference(cols, x_shape, (1, 1), (1, 1))
    for block, max_grid in ((32, 1), (32, 5), (128, 2), (1024, 1)):
        img, launch = emulated_col2im(emulator, cols, x_shape, (1, 1), (1, 1), block=block, max_grid=max_grid)
        assert launch.grid[0] * launch.block[0] < np.prod(x_shape)  # every thread loops more than once, or idles
        np.testing.assert_array_equal(bits(img), bits(expected))


@pytest.mark.parametrize("block, max_grid, dilation", [(32, 1, (1, 1)), (32, 3, (2, 1)), (128, 4, (1, 1)),
                                                       (64, MAX_GRID, (2, 2))])
def test_every_pixel_is_written_by_exactly_one_thread(emulator, block, max_grid, dilation):
    """Run the threads one at a time and record what each writes: the writes partition the image, so threads
    never race, whatever the grid (idle threads, grid-stride threads) and the order they run in."""
    cols, x_shape = random_case(np.random.default_rng(block + max_grid), (3, 3), (2, 2), (1, 1), np.float32,
                                dilation)
    launch = col2im_launch(cols.shape, x_shape, (2, 2), (1, 1), dilation, cols.dtype, block=block,
                           max_grid=max_grid)
    img = np.empty(x_shape, cols.dtype)
    writes = np.zeros(x_shape, int)
    for thread in range(launch.grid[0] * launch.block[0]):
        img.fill(np.nan)
        emulator.launch(launch.kernel, launch.grid, launch.block, launch.args(cols, img), range(thread, thread + 1))
        writes += ~np.isnan(img)
    np.testing.assert_array_equal(writes, 1)


# --- the launch arithmetic and the argument check (shared with the CuPy path) ----------------------------------

def test_kernel_params_are_read_from_the_source():
    params = kernel_params(COL2IM_SOURCE.read_text())
    assert set(params) == ENTRY_POINTS
    for name, ctype in (("col2im_gather_f32", "float"), ("col2im_gather_f64", "double")):
        assert [(p.name, p.ctype) for p in params[name]] == [
            ("cols", f"const {ctype}*"), ("img", f"{ctype}*"),
            *((size, "int") for size in ("n", "c", "h", "w", "kh", "kw", "oh", "ow", "sy", "sx", "ph", "pw",
                                         "dy", "dx"))]


def test_col2im_launch_arithmetic():
    launch = col2im_launch((2, 3, 3, 3, 5, 6), (2, 3, 9, 11), (2, 2), (1, 1), (1, 1), np.float32, block=128)
    assert launch.kernel == "col2im_gather_f32"
    assert launch.block == (128, 1, 1) and launch.grid == (-(-2 * 3 * 9 * 11 // 128), 1, 1)
    assert launch.scalars == (2, 3, 9, 11, 3, 3, 5, 6, 2, 2, 1, 1, 1, 1)
    assert all(type(s) is np.int32 for s in launch.scalars)
    dilated = col2im_launch((2, 3, 3, 3, 4, 4), (2, 3, 9, 11), (2, 2), (1, 1), (2, 3), np.float32)
    assert dilated.scalars == (2, 3, 9, 11, 3, 3, 4, 4, 2, 2, 1, 1, 2, 3)
    big = col2im_launch((64, 64, 1, 1, 64, 64), (64, 64, 64, 64), (1, 1), (0, 0), (1, 1), np.float64, max_grid=100)
    assert big.kernel == "col2im_gather_f64" and big.grid == (100, 1, 1)


@pytest.mark.parametrize("cols_shape, x_shape, stride, padding, dilation, dtype, kw, error", [
    ((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), np.float16, {}, TypeError),
    ((1, 1, 2, 2, 3, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), np.float32, {}, ValueError),
    ((1, 2, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), np.float32, {}, ValueError),
    ((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (0, 1), (0, 0), (1, 1), np.float32, {}, ValueError),
    ((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (0, 1), np.float32, {}, ValueError),
    ((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (2, 1), np.float32, {}, ValueError),  # cols undilated
    ((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), np.float32, {"block": 2048}, ValueError),
    ((1, 1, 2, 2, 2, 2), (1, 1, 3, 3), (1, 1), (0, 0), (1, 1), np.float32, {"max_grid": 0}, ValueError),
    ((1, 1, 1, 1, 2**31, 1), (1, 1, 2**31, 1), (1, 1), (0, 0), (1, 1), np.float32, {}, ValueError),
])
def test_col2im_launch_rejects_bad_requests(cols_shape, x_shape, stride, padding, dilation, dtype, kw, error):
    with pytest.raises(error):
        col2im_launch(cols_shape, x_shape, stride, padding, dilation, dtype, **kw)


@pytest.mark.parametrize("position, bad, message", [
    (2, np.int64(2), r"argument 'n' \(int\) needs an np.int32 scalar, got np.int64"),
    (13, 1, r"argument 'pw' \(int\) needs an np.int32 scalar, got a Python int"),
    (15, np.int64(1), r"argument 'dx' \(int\) needs an np.int32 scalar, got np.int64"),
    (0, np.zeros((2, 3, 3, 3, 5, 6)), r"argument 'cols' \(const float\*\) needs an array of float32, got an array "
                                      r"of float64"),
    (1, np.zeros((2, 3, 11, 9), np.float32).T, r"argument 'img' \(float\*\) needs a C-contiguous array"),
    (0, np.float32(0), r"argument 'cols' \(const float\*\) needs an array of float32, got float32"),
])
def test_launch_rejects_wrong_argument_types(emulator, position, bad, message):
    cols = np.zeros((2, 3, 3, 3, 5, 6), np.float32)
    launch = col2im_launch(cols.shape, (2, 3, 9, 11), (2, 2), (1, 1), (1, 1), cols.dtype)
    args = list(launch.args(cols, np.zeros((2, 3, 9, 11), np.float32)))
    args[position] = bad
    with pytest.raises(TypeError, match=message):
        emulator.launch(launch.kernel, launch.grid, launch.block, tuple(args))
    with pytest.raises(TypeError, match=r"takes 16 arguments \(cols, img, n, "):
        emulator.launch(launch.kernel, launch.grid, launch.block, tuple(args[:-1]))
