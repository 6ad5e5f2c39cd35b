"""``python tests/distributed_job.py DTYPE [--fail-rank R] -- TRAIN ARGS``: ``python -m xpnet.train`` at ``DTYPE``.

Run by tests/test_distributed.py under ``mpiexec`` (and alone, for the reference run). ``--fail-rank R`` makes
rank R raise in its third optimizer step, to show that the job aborts instead of hanging.
"""

import argparse
import sys

import numpy as np

import xpnet
from xpnet import distributed, train
from xpnet.optim import Optimizer


def fail_on_third_step(step):
    """Wrap ``Optimizer.step`` so that the third call raises."""
    calls = []

    def failing(self):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError(f"injected failure on rank {distributed.world().rank}")
        step(self)

    return failing


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dtype", choices=["float32", "float64"])
    p.add_argument("--fail-rank", type=int)
    split = sys.argv.index("--")
    args = p.parse_args(sys.argv[1:split])
    xpnet.set_default_dtype(np.dtype(args.dtype))
    if args.fail_rank is not None and distributed.init().rank == args.fail_rank:
        Optimizer.step = fail_on_third_step(Optimizer.step)
    return train.main(sys.argv[split + 1:])


if __name__ == "__main__":
    sys.exit(distributed.run(main))
