"""``python -m xpnet.evaluate CHECKPOINT``: test-set loss, accuracy and per-class accuracy of a saved model."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from xpnet.backend import BackendUnavailable
from xpnet.checkpoint import CheckpointError
from xpnet.data import DataError, load_dataset
from xpnet.models import ModelError, check_fits_data
from xpnet.predict import load_model
from xpnet.reports import confusion_matrix
from xpnet.train import eval_transform, evaluate, make_loader


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpnet.evaluate", description=__doc__)
    p.add_argument("checkpoint", help="a best.npz / last.npz written by python -m xpnet.train, or its run folder "
                                      "(for its best.npz)")
    p.add_argument("--data", help="IDX folder, class-folder tree or .npz (default: where the training run found its "
                                  "data)")
    args = p.parse_args(argv)
    try:
        trained = load_model(args.checkpoint)
        model, record, path = trained.model, trained.record, trained.path
        config, model_name = record["config"], record["config"]["model"]
        size = config.get("image_size")
        test = load_dataset(config.get("dataset", "mnist"), args.data or config.get("data"),
                            grayscale=config.get("grayscale", False), image_type=config.get("image_type"),
                            image_size=size and tuple(size)).test
        check_fits_data(model, model_name, test.shape, len(test.classes), "the test set")
    except (CheckpointError, DataError, BackendUnavailable, ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loader = make_loader(test, 1024, shuffle=False, seed=0, transform=eval_transform(record.get("normalize")))
    loss, accuracy, predicted = evaluate(model, loader)
    counts = confusion_matrix(test.labels, predicted, len(test.classes))
    print(f"{model_name} from {path} (epoch {record.get('epoch', '?')}): "
          f"test accuracy {100 * accuracy:.2f}%  test loss {loss:.4f}")
    for i, name in enumerate(test.classes):
        print(f"  class {name}: {100 * counts[i, i] / max(counts[i].sum(), 1):6.2f}% of {counts[i].sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
