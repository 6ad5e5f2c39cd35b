"""``python -m xpnet.evaluate CHECKPOINT``: test-set loss, accuracy and per-class accuracy of a saved model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from xpnet.backend import BackendUnavailable
from xpnet.checkpoint import CheckpointError, check_fits, load_checkpoint
from xpnet.data import DataError, load_dataset
from xpnet.models import MNIST_SHAPE, ModelError, build_model, check_fits_data
from xpnet.reports import confusion_matrix
from xpnet.train import eval_transform, evaluate, make_loader


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpnet.evaluate", description=__doc__)
    p.add_argument("checkpoint", help="a best.npz / last.npz written by python -m xpnet.train, or its run folder "
                                      "(for its best.npz)")
    p.add_argument("--data", help="IDX folder, class-folder tree or .npz (default: where the training run found its "
                                  "data)")
    args = p.parse_args(argv)
    path = Path(args.checkpoint)
    path = path / "best.npz" if path.is_dir() else path
    try:
        checkpoint = load_checkpoint(path)
        record = checkpoint.record
        missing = [k for k in ("config", "epoch") if k not in record] or ([] if "model" in record["config"] else
                                                                          ["config.model"])
        if missing:
            raise CheckpointError(f"checkpoint {path} cannot be evaluated: its record has no {', '.join(missing)}")
        config = record["config"]
        model_name = config["model"]
        shape = tuple(record.get("input_shape", MNIST_SHAPE))
        classes = record.get("classes")
        model = build_model(model_name, shape, len(classes) if classes else 10)
        check_fits(checkpoint, model_name, {k: v.shape for k, v in model.state_dict().items()}, path)
        model.load_state_dict(checkpoint.weights)
        test = load_dataset(config.get("dataset", "mnist"), args.data or config.get("data"),
                            grayscale=config.get("grayscale", False), image_type=config.get("image_type")).test
        check_fits_data(model, model_name, test.shape, len(test.classes), "the test set")
    except (CheckpointError, DataError, BackendUnavailable, ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loader = make_loader(test, 1024, shuffle=False, seed=0, transform=eval_transform(record.get("normalize")))
    loss, accuracy, predicted = evaluate(model, loader)
    counts = confusion_matrix(test.labels, predicted, len(test.classes))
    print(f"{model_name} from {path} (epoch {record['epoch']}): "
          f"test accuracy {100 * accuracy:.2f}%  test loss {loss:.4f}")
    for i, name in enumerate(test.classes):
        print(f"  class {name}: {100 * counts[i, i] / max(counts[i].sum(), 1):6.2f}% of {counts[i].sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
