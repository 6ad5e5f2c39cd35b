"""``python -m xpnet.train`` / ``xpnet.evaluate`` end to end on a small generated IDX dataset."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import xpnet
from xpnet import train as train_cli
from xpnet.checkpoint import load_checkpoint
from xpnet.config import ConfigError, load_config


def run(args, capsys=None):
    code = train_cli.main([str(a) for a in args])
    return code


def weights(path):
    return load_checkpoint(path).weights


def test_training_writes_every_report_atomically(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["--data", mnist_dir, "--epochs", 2, "--batch-size", 32, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "test accuracy" in printed
    for name in ("log.jsonl", "best.npz", "last.npz", "curves.png", "confusion.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= set(log[0])
    summary = (out / "summary.md").read_text()
    assert "| 32 |" in summary and "numpy" in summary
    record = load_checkpoint(out / "last.npz").record
    assert record["epoch"] == 2 and record["config"]["model"] == "report1"


def test_batch_size_sweep_makes_one_row_per_size(mnist_dir, tmp_path):
    out = tmp_path / "sweep"
    assert run(["--data", mnist_dir, "--epochs", 1, "--batch-size", 32, 64, "--out", out, "--val-split", 0,
                "--patience", 0]) == 0
    summary = (out / "summary.md").read_text()
    assert "| 32 |" in summary and "| 64 |" in summary
    assert (out / "bs32" / "best.npz").exists() and (out / "bs64" / "best.npz").exists()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(mnist_dir, tmp_path):
    """Dropout, shuffling and Adam's state all have to be restored for this to hold bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--data", mnist_dir, "--batch-size", 32, "--seed", 5, "--patience", 0]
    assert run([*common, "--epochs", 3, "--out", straight]) == 0
    assert run([*common, "--epochs", 2, "--out", split]) == 0
    assert run(["--resume", split, "--epochs", 3, "--out", split, "--data", mnist_dir]) == 0
    a, b = weights(straight / "last.npz"), weights(split / "last.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_early_stopping_restores_best_weights(mnist_dir, tmp_path, monkeypatch):
    """With validation losses forced to rise after epoch 1, training stops after `patience` bad epochs."""
    losses = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    real_evaluate = train_cli.evaluate

    def fake_evaluate(model, loader):
        loss, acc, pred = real_evaluate(model, loader)
        return (next(losses), acc, pred) if len(loader.dataset) != 80 else (loss, acc, pred)

    monkeypatch.setattr(train_cli, "evaluate", fake_evaluate)
    out = tmp_path / "early"
    assert run(["--data", mnist_dir, "--epochs", 6, "--batch-size", 32, "--patience", 2, "--out", out]) == 0
    record = load_checkpoint(out / "last.npz").record
    assert record["epoch"] == 3 and record["best"]["epoch"] == 1
    best = weights(out / "best.npz")
    assert load_checkpoint(out / "best.npz").record["epoch"] == 1
    last_best = load_checkpoint(out / "last.npz").best_weights
    assert all(np.array_equal(best[k], last_best[k]) for k in best)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(mnist_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "nan"
    assert run(["--data", mnist_dir, "--epochs", 1, "--batch-size", 32, "--out", out]) == 0
    good = weights(out / "last.npz")
    real_epoch = train_cli.train_epoch
    monkeypatch.setattr(train_cli, "train_epoch", lambda *a: (math.nan, real_epoch(*a)[1]))
    code = run(["--resume", out, "--epochs", 2, "--out", out, "--data", mnist_dir])
    err = capsys.readouterr().err
    assert code == 1 and "loss became nan in epoch 2" in err and "last.npz" in err
    kept = weights(out / "last.npz")
    assert all(np.array_equal(good[k], kept[k]) for k in good)
    assert load_checkpoint(out / "last.npz").record["epoch"] == 1


def test_checkpoint_from_another_model_is_refused(mnist_dir, tmp_path, capsys):
    out = tmp_path / "lenet"
    assert run(["--data", mnist_dir, "--epochs", 1, "--model", "lenet5", "--out", out]) == 0
    from xpnet.checkpoint import check_fits, CheckpointError
    checkpoint = load_checkpoint(out / "last.npz")
    shapes = {k: p.shape for k, p in xpnet.build_model("report1").named_parameters()}
    with pytest.raises(CheckpointError, match=r"holds model 'lenet5'.*into model 'report1'"):
        check_fits(checkpoint, "report1", shapes, out / "last.npz")


def test_not_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not a zip file")
    assert run(["--resume", bogus]) == 1
    assert f"{bogus} is not an xpnet checkpoint" in capsys.readouterr().err


def test_config_file_with_report2_keys_is_used_and_flags_override(mnist_dir, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'''
data_dir = "{mnist_dir}"
batch_size = 16
epochs = 4
learning_rate = 0.005
optimizer_type = "SGD"
loss_function = "cross_entropy"
seed = 3
image_type = "png"
train_val_split = 0.75
log_file = "train_log.jsonl"
save_dir = "{tmp_path / 'saved'}"
''')
    loaded = load_config(["--config", str(config), "--epochs", "2"])
    assert (loaded.data, loaded.batch_size, loaded.epochs, loaded.lr, loaded.optimizer, loaded.seed,
            loaded.image_type, loaded.val_split, loaded.log_file, loaded.out) == (
        str(mnist_dir), [16], 2, 0.005, "sgd", 3, "png", 0.25, "train_log.jsonl", str(tmp_path / "saved"))
    assert run(["--config", config, "--epochs", 1]) == 0
    assert (tmp_path / "saved" / "train_log.jsonl").exists()


@pytest.mark.parametrize("text, message", [
    ("batchsize = 3", "unknown config key 'batchsize'"),
    ('loss_function = "mse"', "only softmax cross-entropy"),
    ('optimizer_type = "rmsprop"', "unknown optimizer 'rmsprop'"),
    ("epochs = 0", "config key 'epochs': expected a positive integer, got 0"),
    ("train_val_split = 0.0", "config key 'train_val_split'"),
    ('image_type = "gif"', "image_type"),
])
def test_bad_config_entries_are_named(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(config)])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load_config(["--config", str(tmp_path / "nope.toml")])


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    assert run(["--data", tmp_path / "absent", "--epochs", 1, "--out", tmp_path / "o"]) == 1
    assert str(tmp_path / "absent") in capsys.readouterr().err


def test_evaluate_command_scores_a_checkpoint(mnist_dir, tmp_path):
    out = tmp_path / "ev"
    assert run(["--data", mnist_dir, "--epochs", 1, "--out", out]) == 0
    result = subprocess.run([sys.executable, "-m", "xpnet.evaluate", str(out / "best.npz"), "--data", str(mnist_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "class 9" in result.stdout


def test_module_entry_point_runs(mnist_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "xpnet.train", "--data", str(mnist_dir), "--epochs", "1",
                             "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout


def test_a_bad_value_is_named_where_it_was_given(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("epochs = 0\nlearning_rate = -1.0\n")
    with pytest.raises(ConfigError, match=rf"^{config}: config key 'learning_rate': expected a positive finite"):
        load_config(["--config", str(config), "--epochs", "3"])
    with pytest.raises(ConfigError, match=r"^--epochs: expected a positive integer, got 0"):
        load_config(["--config", str(config), "--epochs", "0", "--lr", "0.1"])


def test_model_options_reach_the_factory_and_the_rebuilt_model(mnist_dir, tmp_path, capsys):
    from xpnet import evaluate
    from xpnet.predict import load_model

    out = tmp_path / "wide"
    assert run(["--data", mnist_dir, "--model", "resnet", "--model-option", "widths=4,8,8", "--model-option",
                "blocks=1,2,1", "--epochs", 1, "--batch-size", 60, "--out", out]) == 0
    record = load_checkpoint(out / "best.npz").record
    assert record["config"]["model_options"] == {"widths": [4, 8, 8], "blocks": [1, 2, 1]}
    trained = load_model(out)
    assert trained.model.layer3[0].conv1.out_channels == 8 and len(trained.model.layer2) == 2
    assert evaluate.main([str(out), "--data", str(mnist_dir)]) == 0
    config = tmp_path / "c.toml"
    config.write_text('model = "resnet"\n[model_options]\nwidths = [4, 4, 4]\n')
    assert load_config(["--config", str(config), "--model-option", "blocks=2,1,1"]).model_options == {
        "widths": [4, 4, 4], "blocks": [2, 1, 1]}
    with pytest.raises(ConfigError, match="model 'resnet' takes no option 'width'; its options: widths, blocks"):
        load_config(["--model", "resnet", "--model-option", "width=4"])
    with pytest.raises(SystemExit):
        load_config(["--model-option", "no equals sign"])


def test_own_images_of_any_size_train_with_dataset_folder(tmp_path, capsys):
    """The class-folder tree a user brings: 20x24 RGB images in 3 classes train as they are with --dataset folder,
    at another size with --image-size, and the run evaluates with the same settings from its checkpoint."""
    from PIL import Image

    from xpnet import evaluate as evaluate_cli

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("ant", "bee", "fly"):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / c / f"{i}.png")
    common = ["--dataset", "folder", "--data", tmp_path / "tree", "--epochs", 1, "--batch-size", 4, "--val-split", 0,
              "--patience", 0]
    assert run([*common, "--out", tmp_path / "own"]) == 0
    saved = load_checkpoint(tmp_path / "own" / "last.npz")
    assert saved.record["input_shape"] == [3, 20, 24] and saved.record["classes"] == ["ant", "bee", "fly"]
    assert run([*common, "--image-size", "16,12", "--model", "lenet5", "--out", tmp_path / "small"]) == 0
    assert load_checkpoint(tmp_path / "small" / "last.npz").record["input_shape"] == [3, 16, 12]
    capsys.readouterr()
    assert evaluate_cli.main([str(tmp_path / "small")]) == 0
    assert "lenet5 from" in capsys.readouterr().out
