"""``python -m xpnet.evaluate CHECKPOINT``: test-set loss, accuracy and per-class accuracy of a saved model."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from xpnet.backend import BackendUnavailable
from xpnet.checkpoint import CheckpointError, load_checkpoint
from xpnet.data import DataError, load_mnist
from xpnet.models import build_model
from xpnet.reports import confusion_matrix
from xpnet.train import evaluate, make_loader


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpnet.evaluate", description=__doc__)
    p.add_argument("checkpoint", help="a best.npz / last.npz written by python -m xpnet.train")
    p.add_argument("--data", help="IDX folder, class-folder tree or .npz (default: as xpnet.train finds MNIST)")
    args = p.parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        model_name = checkpoint.record["config"]["model"]
        model = build_model(model_name)
        model.load_state_dict(checkpoint.weights)
        test = load_mnist(args.data or checkpoint.record["config"].get("data")).test
    except (CheckpointError, DataError, BackendUnavailable, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loss, accuracy, predicted = evaluate(model, make_loader(test, 1024, shuffle=False, seed=0))
    counts = confusion_matrix(test.labels, predicted, len(test.classes))
    print(f"{model_name} from {args.checkpoint} (epoch {checkpoint.record['epoch']}): "
          f"test accuracy {100 * accuracy:.2f}%  test loss {loss:.4f}")
    for i, name in enumerate(test.classes):
        print(f"  class {name}: {100 * counts[i, i] / max(counts[i].sum(), 1):6.2f}% of {counts[i].sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
