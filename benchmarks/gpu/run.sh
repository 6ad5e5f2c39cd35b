#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: probe the device, make xpnet importable offline, check the col2im
# kernel under compute-sanitizer, run the GPU tests and the cross-backend suite on CuPy, and time CuPy against
# PyTorch CUDA per training epoch. Each stage is time-boxed (the caps below add up to under 8 minutes) and a
# failing stage does not stop the later ones. Results (results.json, results.md, one log per stage) go to
# $XPNET_GPU_OUT, else $OUT, else ./gpu-results. Exit status: 0 every stage passed (or was skipped, with its
# reason), 1 a stage failed or timed out, 2 no usable GPU (then nothing is installed and nothing else runs).
#
#   benchmarks/gpu/prepare.sh    # beforehand, where ../shared exists: copies MNIST and fetches two wheels
#   benchmarks/gpu/run.sh        # on the GPU machine; XPNET_PYTHON names the interpreter (default python3)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GPU_DIR="$ROOT/benchmarks/gpu"
DATA="$GPU_DIR/data"
OUTDIR=${XPNET_GPU_OUT:-${OUT:-$ROOT/gpu-results}}
PYTHON=${XPNET_PYTHON:-$(command -v python3 || command -v python)}
# Caps in seconds: probe 30 + setup's two pip runs 2 x 30 + 45 + 110 + 85 + 140 = 470, plus a few seconds of
# imports and the report: under 8 minutes.
CAP_PROBE=30
CAP_PIP=30
CAP_COL2IM=45
CAP_GPU_TESTS=110
CAP_CROSS=85
CAP_EPOCHS=140

mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
STAGES="$OUTDIR/stages.tsv"
: >"$STAGES"
cd "$ROOT" || exit 1
FAILED=0

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# record NAME STATUS RC START_MS LOG DETAIL: one line of stages.tsv (DETAIL: the command, or why it was skipped).
record() {
    local ms=$(($(now_ms) - $4))
    printf '%s\t%s\t%s\t%d.%03d\t%s\t%s\n' "$1" "$2" "$3" $((ms / 1000)) $((ms % 1000)) "$5" "$6" >>"$STAGES"
    case $2 in passed | skipped) ;; *) FAILED=1 ;; esac
}

# status_of RC CAP [NAME]: a stage's status from its exit code (the probe exits 2 for "no usable GPU").
status_of() {
    case $1:${3:-} in
        0:*) echo passed ;;
        2:probe) echo "no usable GPU" ;;
        124:* | 137:*) echo "timed out after $2 s" ;;
        *) echo failed ;;
    esac
}

# run_stage NAME CAP COMMAND...: COMMAND under `timeout CAP`, its output to NAME.log, the log's end to the console.
run_stage() {
    local name=$1 cap=$2 start rc
    shift 2
    echo "== $name (at most $cap s): $*"
    start=$(now_ms)
    timeout --kill-after=10 "$cap" "$@" >"$OUTDIR/$name.log" 2>&1
    rc=$?
    tail -n 6 "$OUTDIR/$name.log"
    record "$name" "$(status_of "$rc" "$cap" "$name")" "$rc" "$start" "$name.log" "$*"
    echo "== $name: $(status_of "$rc" "$cap" "$name") (exit $rc)"
    return "$rc"
}

# setup STAGE_DIR: tqdm and Pillow (xpnet.data imports them) from the carried wheels where missing, then xpnet
# itself: an editable pip install without network, else a symlinked package tree on PYTHONPATH. Runs in this
# shell, so its exports reach the later stages.
setup() {
    local missing=() stage=$1
    "$PYTHON" -c "import tqdm" 2>/dev/null || missing+=(tqdm)
    "$PYTHON" -c "import PIL" 2>/dev/null || missing+=(pillow)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} from $DATA/wheels into $stage/site"
        timeout "$CAP_PIP" "$PYTHON" -m pip install -q --no-index --find-links "$DATA/wheels" \
            --target "$stage/site" "${missing[@]}" || return 1
        export PYTHONPATH="$stage/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if timeout "$CAP_PIP" "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" &&
        (cd / && "$PYTHON" -c "import xpnet.backends.cupy"); then
        echo "xpnet: installed with pip install -e"
    else
        echo "pip install -e did not work here; xpnet from a symlinked package tree on PYTHONPATH"
        mkdir -p "$stage/pkg/xpnet" && ln -s "$ROOT"/xpnet/* "$stage/pkg/xpnet/" &&
            ln -s "$ROOT/backends" "$stage/pkg/xpnet/backends" || return 1
        # PYTHONSAFEPATH: the checkout's own ./xpnet (which has no backends/) must not shadow the tree
        export PYTHONPATH="$stage/pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    fi
    "$PYTHON" -c "import xpnet, xpnet.backends.cupy, tqdm, PIL; print('xpnet imports from', xpnet.__file__)"
}

# compute-sanitizer from PATH, a CUDA toolkit, or a pip wheel (nvidia/...); empty when there is none.
find_sanitizer() {
    command -v compute-sanitizer && return
    ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 | grep . && return
    "$PYTHON" -c "import glob, os, site
found = [p for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/**/compute-sanitizer', recursive=True)
         if os.path.isfile(p) and os.access(p, os.X_OK)]
print(found[0] if found else '')" 2>/dev/null
}

echo "xpnet GPU run with $PYTHON; results in $OUTDIR"
if ! run_stage probe "$CAP_PROBE" "$PYTHON" "$GPU_DIR/probe.py" "$OUTDIR"; then
    "$PYTHON" "$GPU_DIR/report.py" "$OUTDIR"
    exit 2
fi

echo "== setup"
start=$(now_ms)
STAGE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/xpnet-gpu.XXXXXX") || exit 1
trap 'rm -rf "$STAGE_DIR"' EXIT
setup "$STAGE_DIR" > >(tee "$OUTDIR/setup.log") 2>&1
rc=$?
record setup "$(status_of "$rc" "$CAP_PIP")" "$rc" "$start" setup.log "tqdm/Pillow if missing, then xpnet"
echo "== setup: exit $rc"

SANITIZER=$(find_sanitizer)
if [ -n "$SANITIZER" ]; then
    run_stage col2im-memcheck "$CAP_COL2IM" "$SANITIZER" --tool memcheck --error-exitcode 1 \
        "$PYTHON" "$GPU_DIR/col2im_check.py"
else
    record col2im-memcheck skipped 0 "$(now_ms)" "" "compute-sanitizer not found (PATH, /usr/local/cuda*/bin, pip)"
    run_stage col2im-check "$CAP_COL2IM" "$PYTHON" "$GPU_DIR/col2im_check.py"
fi

PYTEST=("$PYTHON" -m pytest -v -p no:cacheprovider -m gpu --durations=10)
run_stage gpu-tests "$CAP_GPU_TESTS" "${PYTEST[@]}" --continue-on-collection-errors tests \
    --ignore=tests/test_cross_backend.py
run_stage cross-backend-cupy "$CAP_CROSS" "${PYTEST[@]}" tests/test_cross_backend.py
if [ -d "$DATA/mnist" ]; then
    run_stage epochs "$CAP_EPOCHS" "$PYTHON" "$GPU_DIR/epochs.py" --data "$DATA/mnist" --out "$OUTDIR/epochs.json" \
        --budget-s $((CAP_EPOCHS - 20))
else
    record epochs failed 1 "$(now_ms)" "" "no MNIST in $DATA/mnist: run benchmarks/gpu/prepare.sh first"
fi

"$PYTHON" "$GPU_DIR/report.py" "$OUTDIR" || FAILED=1
exit "$FAILED"
