"""Run folders: each run writes only into its own folder, ``runs/latest`` follows the newest, ``--resume`` continues
in place and refuses conflicting settings, a lock refuses a second writer, and user errors are one line."""

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from xpnet import train as train_cli
from xpnet.checkpoint import load_checkpoint, save_checkpoint
from xpnet.data import Dataset
from xpnet.data.npz import save_npz
from xpnet.runs import LOCK_NAME

FAST = ["--epochs", "1", "--batch-size", "60", "--model", "report2"]


def run(*args):
    return train_cli.main([str(a) for a in args])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_runs_without_out_get_folders_of_their_own_and_latest_follows(mnist_dir, in_tmp):
    assert run("--data", mnist_dir, *FAST) == 0
    first = [p for p in (in_tmp / "runs").iterdir() if p.name != "latest"]
    assert len(first) == 1 and (first[0] / "last.npz").is_file()
    before = snapshot(first[0])
    assert run("--data", mnist_dir, *FAST) == 0
    folders = sorted(p for p in (in_tmp / "runs").iterdir() if p.name != "latest")
    assert len(folders) == 2
    second = next(p for p in folders if p != first[0])
    assert snapshot(first[0]) == before  # the first run is untouched
    latest = in_tmp / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == second.resolve()
    saved_out = load_checkpoint(latest / "last.npz").record["config"]["out"]
    assert (in_tmp / saved_out).resolve() == second.resolve()


def test_a_named_run_is_never_overwritten(mnist_dir, in_tmp, capsys):
    assert run("--data", mnist_dir, *FAST, "--name", "exp") == 0
    before = snapshot(in_tmp / "runs" / "exp")
    capsys.readouterr()
    assert run("--data", mnist_dir, *FAST, "--name", "exp", "--batch-size", "30", "60") == 2
    line = one_error_line(capsys)
    assert "runs/exp already holds a run" in line and "--resume runs/exp" in line
    assert snapshot(in_tmp / "runs" / "exp") == before


def test_out_holding_a_run_is_refused(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--data", mnist_dir, *FAST, "--out", out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run("--data", mnist_dir, *FAST, "--out", out) == 2
    assert f"--out: {out} already holds a run" in one_error_line(capsys)
    assert snapshot(out) == before


def test_an_old_runs_latest_folder_is_kept(mnist_dir, in_tmp):
    old = in_tmp / "runs" / "latest"
    old.mkdir(parents=True)
    (old / "last.npz").write_bytes(b"a run from an older xpnet")
    assert run("--data", mnist_dir, *FAST) == 0
    assert not old.is_symlink() and (old / "last.npz").read_bytes() == b"a run from an older xpnet"


def test_resume_continues_in_the_run_folder(mnist_dir, in_tmp):
    assert run("--data", mnist_dir, *FAST, "--name", "a") == 0
    folder = in_tmp / "runs" / "a"
    leftover = folder / ".last.npz.0123.tmp"
    leftover.write_bytes(b"torn write from a killed run")
    assert run("--resume", folder, "--epochs", 2, "--data", mnist_dir) == 0
    assert load_checkpoint(folder / "last.npz").record["epoch"] == 2
    assert [p.name for p in (in_tmp / "runs").iterdir() if p.name != "latest"] == ["a"]
    assert not leftover.exists() and not (folder / LOCK_NAME).exists()


def test_resume_refuses_a_conflicting_setting_naming_both_values(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--data", mnist_dir, *FAST, "--out", out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run("--resume", out, "--epochs", 2, "--model", "lenet5", "--lr", "0.5") == 2
    line = one_error_line(capsys)
    assert "--model lenet5 (the checkpoint has report2)" in line and "--lr 0.5 (the checkpoint has 0.001)" in line
    assert snapshot(out) == before
    assert run("--resume", out, "--epochs", 2, "--model", "report2", "--data", mnist_dir) == 0  # the same value: fine


def test_resuming_from_best_npz_never_overwrites_a_later_last_npz(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--data", mnist_dir, *FAST, "--epochs", 2, "--out", out) == 0
    old_best = load_checkpoint(out / "best.npz")
    save_checkpoint(out / "best.npz", old_best.weights, old_best.optimizer, {**old_best.record, "epoch": 1})
    before = snapshot(out)
    capsys.readouterr()
    assert run("--resume", out / "best.npz", "--epochs", 2, "--data", mnist_dir) == 2
    assert "would overwrite" in one_error_line(capsys)
    assert snapshot(out) == before
    branch = tmp_path / "branch"
    assert run("--resume", out / "best.npz", "--epochs", 2, "--data", mnist_dir, "--out", branch) == 0
    assert load_checkpoint(branch / "last.npz").record["epoch"] == 2 and snapshot(out) == before


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_reclaimed(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    assert run("--data", mnist_dir, *FAST, "--out", out) == 1
    assert f"{out} is in use by process {os.getpid()}" in one_error_line(capsys)
    assert lock.exists() and not (out / "last.npz").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    assert run("--data", mnist_dir, *FAST, "--out", out) == 0
    assert (out / "last.npz").is_file() and not lock.exists()


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(mnist_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_epoch = train_cli.train_epoch
    calls = []

    def interrupted_in_epoch_2(*args):
        calls.append(None)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(train_cli, "train_epoch", interrupted_in_epoch_2)
    assert run("--data", mnist_dir, *FAST, "--epochs", 3, "--out", out) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{out / 'last.npz'} holds epoch 1; continue with: python -m xpnet.train --resume {out}" in err
    assert not (out / LOCK_NAME).exists()


def test_divergence_in_the_first_epoch_names_no_checkpoint(mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "train_epoch", lambda *a: (math.nan, 0.0))
    assert run("--data", mnist_dir, *FAST, "--out", tmp_path / "run") == 1
    line = one_error_line(capsys)
    assert "in epoch 1" in line and "no checkpoint was written" in line and "last good" not in line


def test_a_model_that_cannot_be_built_takes_no_run_folder(mnist_dir, in_tmp, capsys):
    assert run("--data", mnist_dir, *FAST) == 0
    latest = (in_tmp / "runs" / "latest").resolve()
    assert run("--data", mnist_dir, *FAST[:4], "--model", "resnet", "--model-option", "widths=a,b") == 1
    assert "widths" in one_error_line(capsys)
    assert run("--data", mnist_dir, *FAST[:4], "--model", "resnet", "--model-option", "widths=a,b", "--out",
               in_tmp / "named") == 1
    assert "widths" in one_error_line(capsys)
    assert len(list((in_tmp / "runs").iterdir())) == 2 and not (in_tmp / "named").exists()
    assert (in_tmp / "runs" / "latest").resolve() == latest  # still the run that trained


def test_a_diverging_run_prints_its_one_message_without_numpys_warnings(mnist_dir, tmp_path, capsys, recwarn):
    """A learning rate of 1e30 overflows float32 in the first steps: the error line is all that is printed, and
    NumPy warns of nothing (pytest would show its warnings apart from stderr, so they are counted here)."""
    assert run("--data", mnist_dir, *FAST, "--optimizer", "sgd", "--lr", 1e30, "--out", tmp_path / "run") == 1
    assert "loss became" in one_error_line(capsys)
    assert [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)] == []


def tiny_npz(path, n_test):
    rng = np.random.default_rng(0)

    def make(n):
        return Dataset(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), (np.arange(n) % 10).astype(np.uint8),
                       [str(i) for i in range(10)])

    save_npz(path, make(40), make(n_test))
    return path


def broken_checkpoints(tmp_path, good):
    """(file, what the message must say) for checkpoints that cannot be resumed."""
    c = load_checkpoint(good)
    no_rng = tmp_path / "no_rng.npz"
    save_checkpoint(no_rng, c.weights, c.optimizer, {k: v for k, v in c.record.items() if k != "rng"})
    extra = tmp_path / "extra.npz"
    save_checkpoint(extra, c.weights, c.optimizer, {**c.record, "config": {**c.record["config"], "colour": "red"}})
    npy = tmp_path / "plain.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    bad_state = tmp_path / "bad_state.npz"
    state = {i: {k: (np.zeros(3) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
             for i, s in c.optimizer["state"].items()}
    save_checkpoint(bad_state, c.weights, {**c.optimizer, "state": state}, c.record)
    return [(no_rng, "its record has no rng"), (extra, "keys this xpnet does not know: colour"),
            (npy, "is not an xpnet checkpoint"), (bad_state, "its optimizer state does not fit")]


def test_user_errors_are_one_line_without_traceback(mnist_dir, tmp_path, capsys):
    """Acceptance 4 of issue 13, in process: each error path returns non-zero with one ``error:`` line."""
    good = tmp_path / "good"
    assert run("--data", mnist_dir, *FAST, "--out", good) == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = [
        (["--lr", "inf"], "--lr: expected a positive finite number, got inf"),
        (["--data", tiny_npz(tmp_path / "no_test.npz", 0), *FAST, "--out", tmp_path / "o1"], "the test set is empty"),
        (["--data", mnist_dir, *FAST, "--out", blocker / "run"], f"cannot create the run folder {blocker / 'run'}"),
        (["--resume", tmp_path / "missing"], "does not exist"),
        *[(["--resume", file], said) for file, said in broken_checkpoints(tmp_path, good / "last.npz")],
    ]
    for args, said in cases:
        capsys.readouterr()
        assert run(*args) != 0, args
        assert said in one_error_line(capsys), args


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        run("--resume", tmp_path / "missing", "--debug")


def test_the_command_prints_no_traceback_for_a_user_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xpnet.train", "--resume", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'missing'} does not exist"]


def test_evaluate_refuses_a_checkpoint_that_does_not_fit_in_one_line(mnist_dir, tmp_path, capsys):
    from xpnet import evaluate

    good = tmp_path / "good"
    assert run("--data", mnist_dir, *FAST, "--out", good) == 0
    c = load_checkpoint(good / "best.npz")
    misshaped = tmp_path / "misshaped.npz"
    save_checkpoint(misshaped, {k: v[:1] for k, v in c.weights.items()}, c.optimizer, c.record)
    no_config = tmp_path / "no_config.npz"
    save_checkpoint(no_config, c.weights, c.optimizer, {"epoch": 1})
    for path, said in ((misshaped, "cannot be loaded into model 'report2'"), (no_config, "its record names no model")):
        capsys.readouterr()
        assert evaluate.main([str(path), "--data", str(mnist_dir)]) == 1
        assert said in one_error_line(capsys)
    capsys.readouterr()
    assert evaluate.main([str(good), "--data", str(mnist_dir)]) == 0  # a run folder: its best.npz
    assert f"from {good / 'best.npz'} (epoch 1)" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs, where nobody may create a folder (Linux)")
def test_an_unwritable_out_is_refused_before_training(mnist_dir, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(train_cli, "train_epoch", lambda *a: started.append(a))
    assert run("--data", mnist_dir, *FAST, "--out", "/sys/kernel/xpnet-run") == 1
    assert "cannot create the run folder /sys/kernel/xpnet-run" in one_error_line(capsys) and not started
