"""Seconds per training epoch at 1, 2, ... MPI ranks (one BLAS thread per rank) and the gradient Allreduce's cost.

    python benchmarks/bench_distributed.py --data ../shared/data/mnist                  # 1 and 2 ranks
    python benchmarks/bench_distributed.py --ranks 1 2 4 --images 12800 --model lenet5  # a reduced epoch

A script, not a pytest-benchmark module: it launches itself under ``mpiexec -n R`` (``-hosts 127.0.0.1``) for
each R, with OPENBLAS/OMP/MKL threads pinned to 1, and prints a Markdown table. Each job times one epoch of
``xpnet.train.train_epoch`` (Adam lr 1e-3, the shuffling loader of ``python -m xpnet.train``) after a one-batch
warm-up. With more than one rank each step is split at a barrier placed before ``average_gradients``: "wait" is
the time a rank waits there for the slowest rank's backward (load imbalance), "average_gradients" the gradient
exchange itself (scale and copy into the flat buffer, the Allreduce, views back out). "bare Allreduce" times the
Allreduce alone on a buffer of the same size, 200 times after a barrier each (median). The barrier costs one
tiny Allreduce per step, so the epoch times are a little pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import xpnet
from xpnet import distributed, random
from xpnet.data import load_mnist
from xpnet.models import build_model
from xpnet.optim import Adam
from xpnet.reports import machine_description
from xpnet.train import make_loader, train_epoch

ALLREDUCE_REPEATS = 200


def worker(args: argparse.Namespace) -> None:
    """One job's measurements (run under mpiexec); rank 0 prints them as one JSON line."""
    world = distributed.init()
    backend = xpnet.get_backend()
    train = load_mnist(args.data).train
    if args.images:
        train = train.subset(np.arange(args.images))
    random.manual_seed(0)
    model = build_model(args.model)
    optimizer = Adam(model.parameters(), lr=1e-3)
    world.broadcast_parameters(model.parameters())
    wait_seconds, reduce_seconds = [], []
    average = world.average_gradients

    def timed_average(params):
        backend.synchronize()
        started = time.perf_counter()
        world.sum([0.0])  # a barrier: time spent here is waiting for the slowest rank's backward
        ready = time.perf_counter()
        average(params)
        backend.synchronize()
        wait_seconds.append(ready - started)
        reduce_seconds.append(time.perf_counter() - ready)

    world.average_gradients = timed_average
    warm_up = train.subset(np.arange(args.batch_size))
    train_epoch(model, optimizer, make_loader(warm_up, args.batch_size, shuffle=False, seed=0), "warm-up")
    wait_seconds.clear()
    reduce_seconds.clear()
    loader = make_loader(train, args.batch_size, shuffle=True, seed=0)
    loader.set_epoch(1)
    next(iter(loader))  # the one-off float conversion of the set happens here, outside the clock
    world.sum([0.0])  # start together
    started = time.perf_counter()
    train_epoch(model, optimizer, loader, "epoch")
    backend.synchronize()
    epoch = time.perf_counter() - started
    result = {"ranks": world.size, "images": len(train), "steps": len(loader), "epoch_s": epoch,
              "wait_ms": 1e3 * float(np.mean(wait_seconds)) if world.size > 1 else None,
              "average_gradients_ms": 1e3 * float(np.mean(reduce_seconds)) if world.size > 1 else None,
              "allreduce_ms": bare_allreduce_ms(world, model.parameters()) if world.size > 1 else None}
    if world.rank == 0:
        print(json.dumps(result), flush=True)


def bare_allreduce_ms(world: distributed.MpiWorld, params: list) -> float:
    """Median milliseconds of one in-place Allreduce of a buffer the size of the gradient buffer."""
    from mpi4py import MPI

    buffer = np.zeros(sum(p.size for p in params) + len(params), dtype=params[0].dtype)
    times = []
    for _ in range(ALLREDUCE_REPEATS):
        world.comm.Barrier()
        started = time.perf_counter()
        world.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def launch(args: argparse.Namespace, ranks: int) -> dict:
    """Run this file as an ``ranks``-rank job on 127.0.0.1 and return rank 0's measurements."""
    mpiexec = shutil.which("mpiexec", path=Path(sys.executable).parent) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'xpnet[mpi]'")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [mpiexec, "-hosts", "127.0.0.1", "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__,
               "--worker", "--model", args.model, "--batch-size", str(args.batch_size), "--images", str(args.images)]
    if args.data:
        command += ["--data", args.data]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch-size", type=int, default=128, dest="batch_size", help="global batch (default 128)")
    p.add_argument("--images", type=int, default=0, help="train on the first N images only (default: all)")
    p.add_argument("--data", help="MNIST as for python -m xpnet.train --data")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.model}, global batch {args.batch_size}, Adam, {xpnet.get_backend().name} backend, "
          f"1 BLAS thread per rank; {machine_description()}\n")
    print("| ranks | images | steps | s / epoch | speed-up | wait ms / step | average_gradients ms / step | "
          "bare Allreduce ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for ranks in args.ranks:
        r = launch(args, ranks)
        base = base or r["epoch_s"]
        print(f"| {r['ranks']} | {r['images']} | {r['steps']} | {r['epoch_s']:.2f} | {base / r['epoch_s']:.2f}x | "
              f"{cell(r['wait_ms'])} | {cell(r['average_gradients_ms'])} | {cell(r['allreduce_ms'])} |", flush=True)


def cell(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.3f}"


if __name__ == "__main__":
    main()
