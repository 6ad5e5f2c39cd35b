"""``python -m xpnet.predict`` and ``xpnet.predict()``: image files of other sizes and modes get the training data's
preprocessing, so the classes agree with the trainer's own evaluation of the same pixels; errors are one line."""

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import xpnet
from xpnet import functional as F
from xpnet import train as train_cli
from xpnet.checkpoint import save_checkpoint
from xpnet.data import DataError, Dataset, load_dataset
from xpnet.predict import TrainedModel, load_model, main, predict, read_image, top_k

CLASSES = ("cat", "dog", "owl")


def make_tree(root, rgb, seed):
    """A learnable class-folder tree of 28x28 PNGs: each class a fixed pattern plus noise."""
    rng = np.random.default_rng(seed)
    shape = (28, 28, 3) if rgb else (28, 28)
    templates = rng.integers(0, 256, size=(len(CLASSES), *shape))
    for split, per_class in (("train", 16), ("test", 4)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = (0.7 * templates[label] + 0.3 * rng.integers(0, 256, size=shape)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"gray": run folder, "rgb": run folder}: report1 trained one epoch on each tree, with --normalize (12 steps:
    enough to tell the classes apart, so that agreeing on them means something)."""
    out = {}
    for kind in ("gray", "rgb"):
        root = make_tree(tmp_path_factory.mktemp(f"{kind}-data"), kind == "rgb", seed=len(kind))
        run = tmp_path_factory.mktemp(f"{kind}-run")
        code = train_cli.main(["--data", str(root), "--epochs", "1", "--batch-size", "4", "--lr", "0.003",
                               "--normalize", "--val-split", "0", "--patience", "0", "--out", str(run)])
        assert code == 0
        out[kind] = run
    return out


def held_out(trained: TrainedModel) -> Dataset:
    """The test split the run was trained beside, loaded as python -m xpnet.evaluate loads it."""
    config = trained.record["config"]
    return load_dataset(config["dataset"], config["data"], grayscale=config["grayscale"]).test


def evaluate_classes(trained: TrainedModel, images: np.ndarray) -> np.ndarray:
    """The classes the trainer's evaluation (xpnet.train.evaluate, as python -m xpnet.evaluate) gives uint8
    (N, C, H, W) ``images``."""
    data = Dataset(images, np.zeros(len(images), np.int64), trained.classes)
    loader = train_cli.make_loader(data, 1024, shuffle=False, seed=0,
                                   transform=train_cli.eval_transform(trained.normalize))
    return train_cli.evaluate(trained.model, loader)[2]


def direct_probabilities(trained: TrainedModel, images: np.ndarray) -> np.ndarray:
    """softmax(model((x / 255 - mean) / std)) computed here, in float64 NumPy up to the model itself."""
    mean = np.array(trained.normalize["mean"]).reshape(1, -1, 1, 1)
    std = np.array(trained.normalize["std"]).reshape(1, -1, 1, 1)
    x = ((images / 255.0 - mean) / std).astype(np.float32)
    with xpnet.no_grad():
        return F.softmax(trained.model(xpnet.tensor(x)), dim=1).data


def save_all(images, folder, mode, suffix=".png", scale=1):
    """uint8 (N, C, H, W) images as files of Pillow ``mode``, each side ``scale`` times longer (pixel copies)."""
    folder.mkdir()
    paths = []
    for i, img in enumerate(images):
        pixels = img.transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
        pil = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        paths.append(folder / f"{i:02d}{suffix}")
        pil.convert(mode).save(paths[-1])
    return paths


def test_rgb_files_for_a_gray_model_give_evaluates_classes(runs, tmp_path):
    trained = load_model(runs["gray"])
    assert trained.path == runs["gray"] / "best.npz" and trained.input_shape == (1, 28, 28)
    assert trained.classes == list(CLASSES) and trained.normalize is not None
    images = held_out(trained).images
    paths = save_all(images, tmp_path / "rgb", "RGB")  # R = G = B: the luma is the gray value again
    probabilities = predict(trained, paths)
    assert probabilities.shape == (len(images), 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    expected = evaluate_classes(trained, images)
    assert len(set(expected)) == 3, "the model should tell the classes apart for this test to mean much"
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected)
    np.testing.assert_allclose(probabilities, direct_probabilities(trained, images), rtol=1e-5, atol=1e-6)


def test_gray_files_for_an_rgb_model_are_three_equal_channels(runs, tmp_path):
    trained = load_model(runs["rgb"])
    assert trained.input_shape == (3, 28, 28)
    gray = held_out(trained).images[:, :1]
    paths = save_all(gray, tmp_path / "gray", "L")
    rgb = np.repeat(gray, 3, axis=1)
    probabilities = predict(trained, tmp_path / "gray")  # a folder stands for its images
    np.testing.assert_array_equal(probabilities.argmax(axis=1), evaluate_classes(trained, rgb))
    np.testing.assert_allclose(probabilities, direct_probabilities(trained, rgb), rtol=1e-5, atol=1e-6)
    assert len(paths) == len(probabilities)


def test_larger_files_are_resized_with_pillows_bilinear_filter(runs, tmp_path):
    trained = load_model(runs["gray"])
    paths = save_all(held_out(trained).images, tmp_path / "big", "L", scale=2)
    assert Image.open(paths[0]).size == (56, 56)
    resized = np.stack([np.asarray(Image.open(p).resize((28, 28), Image.BILINEAR))[None] for p in paths])
    assert [read_image(p, (1, 28, 28)).tolist() for p in paths] == resized.tolist()
    probabilities = predict(trained, paths)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), evaluate_classes(trained, resized))


def test_jpeg_files_give_the_classes_of_their_decoded_pixels(runs, tmp_path):
    trained = load_model(runs["rgb"])
    paths = save_all(held_out(trained).images, tmp_path / "jpg", "RGB", suffix=".jpg")
    decoded = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])
    probabilities = predict(trained, paths)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), evaluate_classes(trained, decoded))


def test_arrays_lists_tensors_and_batches_agree(runs):
    trained = load_model(runs["gray"])
    images = held_out(trained).images
    expected = predict(trained, images)
    np.testing.assert_allclose(expected, direct_probabilities(trained, images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(trained, images, batch_size=5), expected, rtol=1e-6)  # BLAS order only
    np.testing.assert_array_equal(predict(trained, list(images)), expected)
    np.testing.assert_array_equal(predict(trained, [im[0] for im in images]), expected)  # (H, W) arrays
    np.testing.assert_array_equal(predict(trained, images.astype(np.float32) / np.float32(255)), expected)
    np.testing.assert_array_equal(predict(trained, xpnet.tensor(images.astype(np.float32) / 255)), expected)
    np.testing.assert_array_equal(trained.predict(images), expected)
    np.testing.assert_array_equal(xpnet.predict(str(runs["gray"]), images), expected)
    np.testing.assert_array_equal(top_k(expected, 1)[:, 0], expected.argmax(axis=1))


def test_a_bare_module_is_softmax_of_its_logits_in_eval_mode(runs, tmp_path):
    trained = load_model(runs["gray"])
    model = trained.model.train()  # report1 has dropout: a training-mode forward would be random
    images = held_out(trained).images[:4]
    x = images.astype(np.float32) / 255
    probabilities = xpnet.predict(model, x)
    assert model.training, "predict restores the model's mode"
    with xpnet.no_grad():
        expected = F.softmax(model.eval()(xpnet.tensor(x)), dim=1).data
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-7)
    paths = save_all(images, tmp_path / "files", "L")
    np.testing.assert_allclose(predict(model, paths, input_shape=(1, 28, 28)), expected, rtol=1e-6, atol=1e-7)
    stats = trained.normalize
    np.testing.assert_allclose(predict(model, paths, input_shape=(1, 28, 28), normalize=stats),
                               predict(trained, paths), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda m, im: predict(m, im[:, :, :14]), r"shape \(1, 14, 28\) but the model takes \(1, 28, 28\)"),
    (lambda m, im: predict(m, im[0]), r"expected an \(N, C, H, W\) array"),
    (lambda m, im: predict(m, im.astype(np.int32)), "uint8 pixels"),
    (lambda m, im: predict(m, im[:0]), "no images"),
    (lambda m, im: predict(m, []), "no images"),
    (lambda m, im: predict(m, im, batch_size=0), "batch_size"),
    (lambda m, im: predict(m, im, input_shape=(1, 28, 28)), "brings its own"),
    (lambda m, im: predict(m.model, ["x.png"]), "x.png: no such file"),
    (lambda m, im: predict(m.model, [im[0], im[0, :, :14]]), "different shapes"),
])
def test_bad_arguments_are_named(runs, call, message):
    trained = load_model(runs["gray"])
    with pytest.raises(ValueError, match=message):
        call(trained, held_out(trained).images)


def test_a_bare_module_needs_input_shape_for_files(runs, tmp_path):
    trained = load_model(runs["gray"])
    path = save_all(held_out(trained).images[:1], tmp_path / "one", "L")[0]
    with pytest.raises(ValueError, match="needs the model's input_shape"):
        predict(trained.model, path)


def test_cli_prints_top_k_classes(runs, tmp_path, capsys):
    trained = load_model(runs["gray"])
    images = held_out(trained).images
    paths = save_all(images, tmp_path / "imgs", "L")
    assert main([str(runs["gray"]), str(tmp_path / "imgs"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"report1 from {runs['gray'] / 'best.npz'} (epoch 1)")
    expected = evaluate_classes(trained, images)
    assert len(lines) == 1 + len(paths)
    for line, path, label in zip(lines[1:], paths, expected):
        assert line.startswith(f"{path}: {CLASSES[label]} ") and line.count("%") == 2


def test_cli_json_and_csv_parse(runs, tmp_path, capsys):
    trained = load_model(runs["rgb"])
    images = held_out(trained).images
    paths = save_all(images, tmp_path / "imgs", "RGB")
    probabilities = predict(trained, paths)
    assert main([str(runs["rgb"] / "best.npz"), *map(str, paths), "--json", "--top-k", "10"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["checkpoint"] == str(runs["rgb"] / "best.npz") and document["classes"] == list(CLASSES)
    assert [p["path"] for p in document["predictions"]] == list(map(str, paths))
    for entry, row in zip(document["predictions"], probabilities):
        assert len(entry["top"]) == 3  # --top-k beyond the classes shows them all
        assert [t["index"] for t in entry["top"]] == list(np.argsort(-row, kind="stable"))
        assert [t["class"] for t in entry["top"]] == [CLASSES[t["index"]] for t in entry["top"]]
        np.testing.assert_allclose([t["probability"] for t in entry["top"]], np.sort(row)[::-1], rtol=1e-6)
    assert main([str(runs["rgb"]), *map(str, paths), "--csv", "--top-k", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * len(paths) and set(rows[0]) == {"path", "rank", "class", "index", "probability"}
    top1 = [r for r in rows if r["rank"] == "1"]
    assert [r["path"] for r in top1] == list(map(str, paths))
    assert [int(r["index"]) for r in top1] == list(evaluate_classes(trained, images))
    assert [float(r["probability"]) for r in top1] == [float(p) for p in probabilities.max(axis=1)]


def test_json_and_csv_exclude_each_other(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(runs["gray"]), str(tmp_path), "--json", "--csv"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def error_cases(runs, tmp_path):
    """(argv, text the one error line must hold) for each way the inputs can be wrong."""
    good = save_all(np.zeros((1, 1, 28, 28), np.uint8), tmp_path / "good", "L")[0]
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "sweep" / "bs32").mkdir(parents=True)
    shutil.copy(runs["gray"] / "best.npz", tmp_path / "sweep" / "bs32" / "best.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    no_optimizer = {"param_groups": [], "state": {}}
    save_checkpoint(tmp_path / "lost.npz", {}, no_optimizer, {"config": {"model": "gone:build"}})
    save_checkpoint(tmp_path / "other.npz", {"fc.weight": np.zeros((3, 4), np.float32)}, no_optimizer,
                    {"config": {"model": "report1"}, "input_shape": [1, 28, 28], "classes": list(CLASSES)})
    run = str(runs["gray"])
    return [
        ([run, str(tmp_path / "missing.png")], f"{tmp_path / 'missing.png'}: no such file or folder"),
        ([run, str(tmp_path / "text.png")], f"{tmp_path / 'text.png'}: not a readable PNG/JPG image"),
        ([run, str(tmp_path / "empty")], f"{tmp_path / 'empty'}: folder holds no images"),
        ([str(tmp_path / "nothing.npz"), str(good)], f"{tmp_path / 'nothing.npz'}: no such checkpoint file or run"),
        ([str(tmp_path / "good"), str(good)], f"{tmp_path / 'good'}: run folder without best.npz; expected"),
        ([str(tmp_path / "sweep"), str(good)], "its subfolders bs32 are runs of a batch-size sweep"),
        ([str(tmp_path / "junk.npz"), str(good)], f"{tmp_path / 'junk.npz'} is not an xpnet checkpoint"),
        ([str(tmp_path / "lost.npz"), str(good)], f"{tmp_path / 'lost.npz'}: model 'gone:build': cannot import"),
        ([str(tmp_path / "other.npz"), str(good)], f"checkpoint {tmp_path / 'other.npz'} holds model 'report1' with"),
    ]


def test_errors_are_one_line_naming_the_file(runs, tmp_path, capsys):
    for argv, message in error_cases(runs, tmp_path):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)


def test_module_entry_point_runs_and_fails_without_a_traceback(runs, tmp_path):
    paths = save_all(np.zeros((2, 1, 28, 28), np.uint8), tmp_path / "imgs", "L")
    done = subprocess.run([sys.executable, "-m", "xpnet.predict", str(runs["gray"]), str(tmp_path / "imgs"),
                           "--csv"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(done.stdout.splitlines()) == 1 + 3 * len(paths)  # header, then top-3 (all classes) each
    done = subprocess.run([sys.executable, "-m", "xpnet.predict", str(runs["gray"]), str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == f"error: {tmp_path / 'missing'}: no such file or folder; expected a PNG/JPG image or a " \
                          f"folder of them\n"


def test_read_image_refuses_models_of_other_channel_counts(tmp_path):
    path = save_all(np.zeros((1, 1, 4, 4), np.uint8), tmp_path / "one", "L")[0]
    with pytest.raises(DataError, match="2-channel images"):
        read_image(path, (2, 4, 4))


def test_import_xpnet_leaves_predict_until_first_use():
    code = ("import sys, xpnet; print('xpnet.predict' in sys.modules); f = xpnet.predict; import xpnet.predict as m; "
            "from xpnet import predict; print(callable(f), f is m is predict, f.predict.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "True", "xpnet.predict"], done.stderr
