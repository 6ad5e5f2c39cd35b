"""``python -m xpnet.train`` with the modern recipe switched on: ResNet (BatchNorm), AdamW or SGD with a schedule,
gradient clipping, label smoothing and augmentation; resume stays bit-identical; user models from the CLI."""

import json

import numpy as np
import pytest

from xpnet import train as train_cli
from xpnet.checkpoint import load_checkpoint
from xpnet.config import ConfigError, load_config
from xpnet.data import write_idx

RECIPE = ["--model", "resnet", "--optimizer", "adamw", "--weight-decay", "0.05", "--scheduler", "cosine",
          "--warmup-epochs", "1", "--clip-grad-norm", "1.0", "--label-smoothing", "0.1", "--random-crop", "2",
          "--hflip", "--normalize", "--batch-size", "16", "--seed", "3", "--patience", "0"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny learnable 10-class IDX dataset of 12x12 images (small, so a ResNet epoch takes a moment)."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(10, 12, 12))
    for prefix, n in (("train", 80), ("t10k", 30)):
        labels = np.arange(n) % 10
        images = (0.7 * templates[labels] + 0.3 * rng.integers(0, 256, size=(n, 12, 12))).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def weights(path):
    return load_checkpoint(path).weights


class Killed(Exception):
    """Stands in for the process dying at the start of an epoch."""


def test_resume_is_bit_identical_with_batchnorm_schedule_adamw_and_augmentation(digits, tmp_path, monkeypatch):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    common = ["--data", digits, *RECIPE, "--epochs", 3]
    assert train_cli.main([str(a) for a in [*common, "--out", straight]]) == 0
    real_epoch = train_cli.train_epoch

    def dies_in_epoch_3(model, optimizer, loader, desc, *rest):
        if desc.startswith("epoch 3/"):
            raise Killed
        return real_epoch(model, optimizer, loader, desc, *rest)

    monkeypatch.setattr(train_cli, "train_epoch", dies_in_epoch_3)
    with pytest.raises(Killed):
        train_cli.main([str(a) for a in [*common, "--out", cut]])
    monkeypatch.setattr(train_cli, "train_epoch", real_epoch)
    record = load_checkpoint(cut / "last.npz").record
    assert record["scheduler"] is not None and record["normalize"] is not None
    assert train_cli.main([str(a) for a in ["--resume", cut, "--epochs", 3, "--out", cut, "--data", digits]]) == 0
    a, b = weights(straight / "last.npz"), weights(cut / "last.npz")
    assert a.keys() == b.keys() and any(k.endswith("running_var") for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a), [k for k in a if not np.array_equal(a[k], b[k])]
    lrs = [json.loads(line)["lr"] for line in (straight / "log.jsonl").read_text().splitlines()]
    assert lrs == [json.loads(line)["lr"] for line in (cut / "log.jsonl").read_text().splitlines()]
    assert lrs[0] > lrs[2]  # the cosine schedule moved the learning rate


def test_resuming_a_schedule_with_other_epochs_is_refused(digits, tmp_path, capsys):
    out = tmp_path / "sched"
    assert train_cli.main([str(a) for a in ["--data", digits, *RECIPE, "--epochs", 1, "--out", out]]) == 0
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--data", str(digits)]) == 2
    assert "planned for 1 epochs" in capsys.readouterr().err


def test_batchnorm_statistics_are_saved_and_used_by_evaluate(digits, tmp_path, capsys):
    out = tmp_path / "ev"
    assert train_cli.main([str(a) for a in ["--data", digits, *RECIPE, "--epochs", 1, "--out", out]]) == 0
    trained = weights(out / "last.npz")
    assert not np.allclose(trained["bn1.running_var"], 1.0)
    assert int(trained["bn1.num_batches_tracked"]) == 5  # 80 images at batch 16, one epoch
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy ")[1].split("%")[0])
    from xpnet import evaluate
    assert evaluate.main([str(out / "last.npz"), "--data", str(digits)]) == 0
    assert f"test accuracy {accuracy:.2f}%" in capsys.readouterr().out


def test_user_model_trains_from_the_cli(digits, tmp_path, user_module, capsys):
    out = tmp_path / "user"
    assert train_cli.main(["--data", str(digits), "--model", f"{user_module}:build", "--epochs", "1", "--out",
                           str(out), "--val-split", "0", "--patience", "0"]) == 0
    assert f"{user_module}:build" in capsys.readouterr().out
    assert "bn2.running_mean" in weights(out / "best.npz")
    assert train_cli.main(["--data", str(digits), "--model", f"{user_module}:wrong_input", "--epochs", "1",
                           "--out", str(tmp_path / "wrong")]) == 1
    err = capsys.readouterr().err
    assert "does not fit the training set: its images are 1x12x12" in err and "784" in err


@pytest.mark.parametrize("argv, message", [
    (["--scheduler", "onecycle", "--warmup-epochs", "1"], "onecycle warms up by itself"),
    (["--label-smoothing", "1.5"], "--label-smoothing"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm"),
    (["--momentum", "0.9"], "--momentum"),
    (["--model", "nowhere_xyz:build"], "cannot import module"),
])
def test_bad_recipe_flags_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv)


@pytest.mark.parametrize("text, message", [
    ('epochs = "two"', "'epochs' must be an int"),
    ('lr = "fast"', "'lr' must be a float"),
    ("hflip = 1", "'hflip' must be a bool"),
    ('learning_rate = "fast"', "'learning_rate' must be a float"),
    ("batch_size = [32, true]", "'batch_size' must be an int or a list of integers"),
])
def test_wrong_typed_config_values_name_the_key(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(config)])


def test_recipe_keys_in_a_config_file(tmp_path):
    config = tmp_path / "recipe.toml"
    config.write_text('model = "resnet"\ndataset = "fashion-mnist"\noptimizer = "sgd"\nmomentum = 0.9\n'
                      'nesterov = true\nscheduler = "onecycle"\nrandom_crop = 2\nhflip = true\n'
                      'label_smoothing = 0.1\nweight_decay = 5e-4\n')
    loaded = load_config(["--config", str(config), "--lr", "0.2"])
    assert (loaded.model, loaded.dataset, loaded.momentum, loaded.nesterov, loaded.scheduler, loaded.random_crop,
            loaded.hflip, loaded.label_smoothing, loaded.weight_decay, loaded.lr) == (
        "resnet", "fashion-mnist", 0.9, True, "onecycle", 2, True, 0.1, 5e-4, 0.2)
