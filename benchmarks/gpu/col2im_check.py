"""The CuPy backend's col2im kernel on random shapes, compared bit for bit with the NumPy backend's col2im; run.sh
runs it under ``compute-sanitizer --tool memcheck`` so an out-of-bounds or misaligned access fails the stage.

Random image sizes, kernels 1-5 (non-square too), strides 1-3, paddings 0-2, dilations 1-3, float32 and float64,
plus one image larger than the kernel's default grid so its grid-stride loop runs. Shapes stay small: under
memcheck every access is instrumented.

    python benchmarks/gpu/col2im_check.py [--backend cupy] [--cases 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator

import xpnet  # noqa: I001  (before NumPy, as every xpnet process)
import numpy as np

from xpnet.kernels import out_size

Case = tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], Any]
# Beyond 4096 blocks of 256 threads (backends/cuda_launch.py's MAX_GRID), so threads loop over several pixels.
GRID_STRIDE_CASE: Case = ((2, 4, 400, 400), (3, 3), (1, 1), (1, 1), (1, 1), np.float32)


def random_cases(rng: np.random.Generator, count: int) -> Iterator[Case]:
    """``count`` random (x_shape, kernel, stride, padding, dilation, dtype) whose window fits the image."""
    made = 0
    while made < count:
        x_shape = (int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 20)),
                   int(rng.integers(1, 20)))
        kernel = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        stride, padding = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(0, 3, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        try:
            [out_size(x_shape[2 + i], kernel[i], stride[i], padding[i], dilation[i]) for i in range(2)]
        except ValueError:  # the window does not fit this image: draw again
            continue
        made += 1
        yield x_shape, kernel, stride, padding, dilation, (np.float32, np.float64)[made % 2]


def check(backend: Any, reference: Any, case: Case, rng: np.random.Generator) -> str | None:
    """None if ``backend.col2im`` gives the reference's bits for this case, else what differed."""
    x_shape, kernel, stride, padding, dilation, dtype = case
    oh, ow = (out_size(x_shape[2 + i], kernel[i], stride[i], padding[i], dilation[i]) for i in range(2))
    cols = rng.standard_normal((*x_shape[:2], *kernel, oh, ow)).astype(dtype)
    got = backend.to_numpy(backend.col2im(backend.asarray(cols), x_shape, stride, padding, dilation))
    backend.synchronize()
    want = reference.col2im(cols, x_shape, stride, padding, dilation)
    if got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got.view(np.uint8), want.view(np.uint8)):
        return None
    return f"{case}: max difference {float(np.max(np.abs(got - want), initial=0.0))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cupy", help="backend whose col2im is checked (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=12, help="random cases (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    backend, reference = xpnet.get_backend(args.backend), xpnet.get_backend("numpy")
    rng = np.random.default_rng(args.seed)
    cases = [*random_cases(rng, args.cases), GRID_STRIDE_CASE]
    failures = [f for f in (check(backend, reference, case, rng) for case in cases) if f is not None]
    for failure in failures:
        print(f"col2im differs from the NumPy backend: {failure}")
    print(f"col2im on {args.backend}: {len(cases) - len(failures)} of {len(cases)} cases bit-identical to NumPy")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
