#!/usr/bin/env bash
# Fill benchmarks/gpu/data/ (git-ignored) with what run.sh needs on a GPU machine that has no network and no
# ../shared: the four MNIST IDX .gz files, and wheels of tqdm and Pillow (xpnet.data imports both; run.sh installs
# them only where missing) for CPython $XPNET_GPU_PY (default 3.12) on Linux x86_64 and aarch64. About 25 MB;
# the folder travels with the checkout as an ignored path (e.g. the device runner's `carry`).
#
#   benchmarks/gpu/prepare.sh [MNIST_DIR]    # default ../shared/data/mnist beside the checkout
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA="$ROOT/benchmarks/gpu/data"
MNIST=${1:-$ROOT/../shared/data/mnist}
PYTHON=${XPNET_PYTHON:-$(command -v python3 || command -v python)}
PY=${XPNET_GPU_PY:-3.12}
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

mkdir -p "$DATA/mnist" "$DATA/wheels" || exit 1
for name in "${FILES[@]}"; do
    if [ ! -f "$MNIST/$name" ]; then
        echo "prepare: $MNIST/$name not found (give the folder holding the 4 MNIST IDX .gz files)" >&2
        exit 1
    fi
    cp -f "$MNIST/$name" "$DATA/mnist/" || exit 1
done
echo "prepare: MNIST copied to $DATA/mnist"

for arch in x86_64 aarch64; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
        --platform "manylinux_2_28_$arch" --platform "manylinux2014_$arch" -d "$DATA/wheels" tqdm pillow || {
        echo "prepare: could not download the tqdm and Pillow wheels for $arch" >&2
        exit 1
    }
done
echo "prepare: wheels in $DATA/wheels: $(cd "$DATA/wheels" && echo *)"
du -sh "$DATA"
