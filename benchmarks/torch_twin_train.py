"""The PyTorch twin of a ``python -m xpnet.train`` run, for the accuracy comparisons in docs/results.md.

    python benchmarks/torch_twin_train.py [the same flags as python -m xpnet.train]

It reads the flags with xpnet's own parser, builds xpnet's model from the same seed and converts it with
``to_torch`` (same layers and initial weights), and trains it with torch's optimizer and learning-rate schedule of
the same names and settings, on xpnet's DataLoader: the same batches in the same order with the same augmentation.
So the two runs differ only in the framework doing the arithmetic. One run (the first --batch-size), no early
stopping or validation split (give --val-split 0 --patience 0); prints one line per epoch and the test accuracy.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import xpnet  # noqa: I001  (first, as every xpnet process; then hand torch the user's thread settings)
import numpy as np

xpnet.threads.restore_user_environment()
import torch  # noqa: E402

from xpnet import random  # noqa: E402
from xpnet.config import load_config  # noqa: E402
from xpnet.data import load_dataset  # noqa: E402
from xpnet.interop.torch import to_torch  # noqa: E402
from xpnet.models import build_model  # noqa: E402
from xpnet.train import channel_stats, eval_transform, make_loader, make_scheduler, train_transform  # noqa: E402

TORCH_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def main(argv: Sequence[str]) -> int:
    config = load_config(argv)
    if config.val_split or config.patience:
        raise SystemExit("torch_twin_train.py trains without validation: give --val-split 0 --patience 0")
    xpnet.use("numpy")
    data = load_dataset(config.dataset, config.data, grayscale=config.grayscale, image_type=config.image_type,
                        image_size=config.image_size and tuple(config.image_size))
    train, test = data.train, data.test
    random.manual_seed(config.seed)
    net = to_torch(build_model(config.model, train.shape, len(train.classes), **config.model_options))
    options = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        options.update(momentum=config.momentum, nesterov=config.nesterov)
    optimizer = TORCH_OPTIMIZERS[config.optimizer](net.parameters(), **options)
    stats = channel_stats(train) if config.normalize else None
    loader = make_loader(train, config.batch_size[0], shuffle=True, seed=config.seed,
                         transform=train_transform(config, train.shape, stats))
    scheduler = make_scheduler(config, optimizer, len(loader), torch.optim.lr_scheduler)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads) | model {config.model} | data: "
          f"{data.source}", flush=True)
    for epoch in range(1, config.epochs + 1):
        loader.set_epoch(epoch)
        net.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for x, y in loader:
            x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            if config.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
        print(f"epoch {epoch:>3}/{config.epochs}  train loss {loss_sum / seen:.4f}  "
              f"{time.perf_counter() - started:.1f}s", flush=True)
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in make_loader(test, 1024, shuffle=False, seed=0, transform=eval_transform(stats)):
            correct += int((net(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy() == y).sum())
    print(f"test accuracy {100 * correct / len(test):.2f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
