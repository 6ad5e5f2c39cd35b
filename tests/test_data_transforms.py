"""Batched augmentation: each vectorised transform against a per-image loop reference, known crops and flips,
Normalize per channel, argument checks, and 1- and 3-channel batches."""

import sys

import numpy as np
import pytest

from xpnet.data import transforms
from xpnet.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, is_random


def batch(b=6, c=3, h=5, w=7, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).random((b, c, h, w)).astype(dtype)


def crop_reference(x, size, padding, rng):
    """One image at a time: pad, then cut the window at the offsets drawn (all rows first, then all columns)."""
    left, top, right, bottom = padding
    th, tw = size
    rows = rng.integers(0, x.shape[2] + top + bottom - th + 1, size=len(x))
    cols = rng.integers(0, x.shape[3] + left + right - tw + 1, size=len(x))
    out = []
    for image, i, j in zip(x, rows, cols):
        padded = np.pad(image, ((0, 0), (top, bottom), (left, right)))
        out.append(padded[:, i:i + th, j:j + tw])
    return np.stack(out)


def flip_reference(x, p, rng):
    flips = rng.random(len(x)) < p
    return np.stack([image[:, :, ::-1] if f else image for image, f in zip(x, flips)])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size, padding, shape", [
    (5, 0, (5, 5)), ((4, 6), 2, (4, 6)), (3, (1, 2), (3, 3)), ((5, 7), (0, 1, 3, 2), (5, 7)), ((9, 11), 2, (9, 11)),
])
def test_random_crop_matches_a_per_image_loop(channels, size, padding, shape):
    x = batch(c=channels)
    crop = RandomCrop(size, padding)
    out = crop(x, np.random.default_rng(3))
    expected = crop_reference(x, crop.size, crop.padding, np.random.default_rng(3))
    assert out.shape == (6, channels, *shape) and out.dtype == x.dtype and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_random_crop_of_a_known_image():
    """A 1x1 window with 1 pixel of padding around a 2x2 image sees each offset's pixel or the zero border."""
    image = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = np.broadcast_to(image, (400, 1, 2, 2)).copy()
    out = RandomCrop(3, padding=1)(x, np.random.default_rng(0))
    padded = np.pad(image, 1)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    for k in (0, 7, 399):
        np.testing.assert_array_equal(out[k, 0], padded[rows[k]:rows[k] + 3, cols[k]:cols[k] + 3])
    corners = {tuple(o[0].ravel()) for o in out}   # the four placements of a 2x2 image in a 3x3 zero frame
    assert corners == {(1, 2, 0, 3, 4, 0, 0, 0, 0), (0, 1, 2, 0, 3, 4, 0, 0, 0), (0, 0, 0, 1, 2, 0, 3, 4, 0),
                       (0, 0, 0, 0, 1, 2, 0, 3, 4)}


def test_random_crop_without_padding_at_full_size_is_the_identity():
    x = batch()
    np.testing.assert_array_equal(RandomCrop((5, 7))(x, np.random.default_rng(0)), x)


def test_each_image_gets_its_own_offset():
    x = np.broadcast_to(np.arange(36.0).reshape(6, 6), (50, 1, 6, 6)).copy()
    out = RandomCrop(3)(x, np.random.default_rng(1))
    assert len({o.tobytes() for o in out}) > 5


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_matches_a_per_image_loop(channels, p):
    x = batch(b=20, c=channels)
    out = RandomHorizontalFlip(p)(x, np.random.default_rng(5))
    np.testing.assert_array_equal(out, flip_reference(x, p, np.random.default_rng(5)))
    assert out.dtype == x.dtype


def test_flip_of_a_known_image_and_p_extremes():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, np.random.default_rng(0))[0, 0],
                                  [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_flip_probability_is_about_p(p):
    n = 20_000
    x = np.broadcast_to(np.array([0.0, 1.0]), (n, 1, 1, 2))
    flipped = RandomHorizontalFlip(p)(x, np.random.default_rng(11))[:, 0, 0, 0] == 1.0
    assert abs(flipped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_per_channel(dtype):
    x = batch(c=3, dtype=dtype)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 4.0)
    out = Normalize(mean, std)(x, np.random.default_rng(0))
    assert out.dtype == dtype
    for c in range(3):
        expected = (x[:, c] - dtype(mean[c])) / dtype(std[c])
        np.testing.assert_array_equal(out[:, c], expected)
    gray = Normalize([0.5], [0.25])(x[:, :1], None)
    np.testing.assert_array_equal(gray, (x[:, :1] - dtype(0.5)) / dtype(0.25))
    one_value = Normalize(0.5, 2.0)(x, None)   # one value applies to every channel
    np.testing.assert_array_equal(one_value, (x - dtype(0.5)) / dtype(2.0))


def test_normalize_inplace_writes_into_the_batch():
    x = batch()
    expected = (x - 0.5) / 0.25
    out = Normalize(0.5, 0.25, inplace=True)(x, None)
    assert out is x
    np.testing.assert_array_equal(x, expected)


def test_normalize_checks_its_arguments():
    with pytest.raises(ValueError, match="Normalize mean: 2 values for a batch of 3 channels"):
        Normalize((0.1, 0.2), (1.0,))(batch(c=3), None)
    with pytest.raises(ValueError, match="std: expected non-zero"):
        Normalize(0.0, (1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        Normalize(float("nan"), 1.0)


def test_compose_runs_in_order_on_one_generator():
    x = batch(c=3)
    steps = [RandomCrop(4, padding=1), RandomHorizontalFlip(), Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))]
    out = Compose(steps)(x, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    expected = x
    for step in steps:
        expected = step(expected, rng)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (6, 3, 4, 4)


def test_random_flags():
    assert RandomCrop(2).random and RandomHorizontalFlip().random and not Normalize(0, 1).random
    assert not Compose([Normalize(0, 1)]).random and Compose([Normalize(0, 1), RandomHorizontalFlip()]).random
    assert is_random(lambda x, rng: x) and not is_random(Normalize(0, 1))


@pytest.mark.parametrize("make, words", [
    (lambda: RandomCrop(0), "RandomCrop size"),
    (lambda: RandomCrop((2, 2, 2)), "RandomCrop size"),
    (lambda: RandomCrop(2.5), "RandomCrop size"),
    (lambda: RandomCrop(2, padding=-1), "RandomCrop padding"),
    (lambda: RandomCrop(2, padding=(1, 2, 3)), "RandomCrop padding"),
    (lambda: RandomHorizontalFlip(1.5), "RandomHorizontalFlip p"),
    (lambda: Compose([3]), "Compose"),
])
def test_bad_arguments_are_named(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_crop_larger_than_the_padded_image():
    with pytest.raises(ValueError, match="crop size 8x8 is larger than the padded image 7x9"):
        RandomCrop(8, padding=1)(batch(), np.random.default_rng(0))


@pytest.mark.parametrize("x", [np.zeros((2, 3, 4)), np.zeros((2, 1, 3, 4), np.uint8), [[[[0.0]]]]])
def test_transforms_want_a_float_batch(x):
    for t in (RandomCrop(1), RandomHorizontalFlip(), Normalize(0, 1)):
        with pytest.raises(ValueError, match=r"float NumPy batch \(B, C, H, W\)"):
            t(x, np.random.default_rng(0))


def test_no_python_loop_over_the_batch():
    """The lines run inside transforms.py do not grow with the batch size."""
    def lines(b):
        count = 0

        def tracer(frame, event, arg):
            nonlocal count
            if frame.f_code.co_filename != transforms.__file__:
                return None
            count += event == "line"
            return tracer

        steps = Compose([RandomCrop(4, padding=2), RandomHorizontalFlip(), Normalize((0.1, 0.2, 0.3), 0.5)])
        x, rng = batch(b=b), np.random.default_rng(0)
        sys.settrace(tracer)
        try:
            steps(x, rng)
        finally:
            sys.settrace(None)
        return count

    assert lines(2) == lines(64) > 10
