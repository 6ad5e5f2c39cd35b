"""Train/validation splits and the DataLoader: shapes, scaling, seeded per-epoch order, preload equivalence and
the to_device hook."""

import numpy as np
import pytest

from xpnet.data import Compose, DataError, DataLoader, Dataset, Normalize, RandomCrop, RandomHorizontalFlip
from xpnet.data import split_train_val
from xpnet.data import loader as loader_module


@pytest.fixture
def dataset():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 5, 4), dtype=np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 0, 255
    return Dataset(images, np.arange(10) % 3, ["a", "b", "c"])


class DeviceArray:
    """A stand-in for a device array: it can only be indexed by another DeviceArray (as on a GPU)."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, key):
        if isinstance(key, DeviceArray):
            return DeviceArray(self.data[key.data])
        if isinstance(key, slice):
            return DeviceArray(self.data[key])
        raise TypeError("host index on a device array")


@pytest.fixture
def device():
    """A to_device that wraps arrays and records what it was given."""
    sent = []

    def to_device(a):
        sent.append(a)
        return DeviceArray(np.array(a))

    return to_device, sent


def collect(loader):
    return [(np.asarray(x.data if isinstance(x, DeviceArray) else x),
             np.asarray(y.data if isinstance(y, DeviceArray) else y)) for x, y in loader]


# --- split_train_val ---------------------------------------------------------------------------------------------

def test_split_is_a_seeded_partition(dataset):
    train, val = split_train_val(dataset, 0.3, seed=5)
    assert (len(train), len(val)) == (7, 3)
    assert train.classes == val.classes == ["a", "b", "c"]
    rows = {img.tobytes() for img in dataset.images}
    got = [img.tobytes() for img in np.concatenate([train.images, val.images])]
    assert sorted(got) == sorted(rows) and len(set(got)) == 10
    again_train, again_val = split_train_val(dataset, 0.3, seed=5)
    np.testing.assert_array_equal(again_val.images, val.images)
    expected = np.sort(np.random.default_rng(5).permutation(10)[:3])
    np.testing.assert_array_equal(val.images, dataset.images[expected])
    np.testing.assert_array_equal(val.labels, dataset.labels[expected])
    other = [split_train_val(dataset, 0.3, seed=s)[1].labels.tolist() for s in range(6, 12)]
    assert any(o != val.labels.tolist() for o in other), "the seed has no effect"


def test_val_size_rounds_down_and_keeps_a_training_set(dataset):
    assert len(split_train_val(dataset, 0.35, seed=0)[1]) == 3
    train, val = split_train_val(dataset.subset(np.array([0])), 0.99, seed=0)
    assert (len(train), len(val)) == (1, 0)


def test_zero_fraction_gives_an_empty_val(dataset):
    train, val = split_train_val(dataset, 0.0, seed=0)
    assert len(train) == 10 and len(val) == 0 and val.images.shape == (0, 1, 5, 4)
    assert len(DataLoader(val, 4)) == 0 and list(DataLoader(val, 4)) == []


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_names_the_option(dataset, fraction):
    with pytest.raises(ValueError, match="--val-split") as err:
        split_train_val(dataset, fraction, seed=0)
    assert isinstance(err.value, DataError)


# --- DataLoader --------------------------------------------------------------------------------------------------

def test_batches_are_scaled_nchw_in_order(dataset):
    batches = collect(DataLoader(dataset, 4))
    assert [x.shape for x, _ in batches] == [(4, 1, 5, 4), (4, 1, 5, 4), (2, 1, 5, 4)]
    x = np.concatenate([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, dataset.images.astype(np.float32) / np.float32(255))
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(y, dataset.labels)


def test_len_and_drop_last(dataset):
    assert len(DataLoader(dataset, 4)) == 3 and len(DataLoader(dataset, 4, drop_last=True)) == 2
    assert len(DataLoader(dataset, 5, drop_last=True)) == 2 and len(DataLoader(dataset, 20)) == 1
    assert len(DataLoader(dataset, 20, drop_last=True)) == 0
    batches = collect(DataLoader(dataset, 4, drop_last=True))
    assert len(batches) == 2 and all(len(y) == 4 for _, y in batches)


def test_shuffle_order_is_the_seeded_permutation_of_the_epoch(dataset):
    loader = DataLoader(dataset, 3, shuffle=True, seed=7)
    for epoch in (0, 1, 4):
        loader.set_epoch(epoch)
        order = np.random.default_rng([7, epoch]).permutation(10)
        y = np.concatenate([y for _, y in collect(loader)])
        x = np.concatenate([x for x, _ in collect(loader)])
        np.testing.assert_array_equal(y, dataset.labels[order])
        np.testing.assert_array_equal(x, dataset.images[order] / np.float32(255))


def test_resumed_loader_replays_the_same_batches(dataset):
    original = DataLoader(dataset, 3, shuffle=True, seed=1)
    epochs = []
    for epoch in range(3):
        original.set_epoch(epoch)
        epochs.append(collect(original))
    assert not all(np.array_equal(a[0][1], b[0][1]) for a, b in zip(epochs, epochs[1:])), "epochs share one order"
    resumed = DataLoader(dataset, 3, shuffle=True, seed=1)
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(epochs[2], collect(resumed)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_seeds = [collect(DataLoader(dataset, 10, shuffle=True, seed=s))[0][1].tolist() for s in (2, 3, 4)]
    assert any(o != np.concatenate([y for _, y in epochs[0]]).tolist() for o in other_seeds), "seed has no effect"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_preload_and_per_batch_are_bit_identical(dataset, device, dtype, shuffle):
    to_device, _ = device
    runs = [collect(DataLoader(dataset, 4, shuffle=shuffle, seed=3, dtype=dtype, to_device=to_device,
                               preload=preload)) for preload in (True, False)]
    for (xa, ya), (xb, yb) in zip(*runs):
        assert xa.dtype == xb.dtype == np.dtype(dtype)
        assert xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
    expected = dataset.images.astype(dtype) / np.dtype(dtype).type(255)
    order = np.random.default_rng([3, 0]).permutation(10) if shuffle else np.arange(10)
    assert np.concatenate([x for x, _ in runs[0]]).tobytes() == expected[order].tobytes()


def test_preload_transfers_the_set_once_and_indexes_on_the_device(dataset, device):
    to_device, sent = device
    loader = DataLoader(dataset, 4, shuffle=True, to_device=to_device, preload=True)
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert all(isinstance(x, DeviceArray) and isinstance(y, DeviceArray) for x, y in batches)
    assert [a.shape for a in sent] == [(10, 1, 5, 4), (10,), (10,), (10,)]   # set, labels, one order per epoch
    assert sent[0].dtype == np.float32 and sent[2].dtype == np.int64


def test_per_batch_transfers_each_batch(dataset, device):
    to_device, sent = device
    batches = list(DataLoader(dataset, 4, to_device=to_device, preload=False))
    assert all(isinstance(x, DeviceArray) for x, _ in batches)
    assert [a.shape for a in sent] == [(4, 1, 5, 4), (4,), (4, 1, 5, 4), (4,), (2, 1, 5, 4), (2,)]


def test_preload_default_depends_on_the_float_size(dataset, monkeypatch):
    assert DataLoader(dataset, 4).preload is True
    monkeypatch.setattr(loader_module, "PRELOAD_LIMIT_BYTES", 10 * 5 * 4 * 4)   # exactly the float32 set
    assert DataLoader(dataset, 4).preload is False
    assert DataLoader(dataset, 4, dtype="float16").preload is True
    assert DataLoader(dataset, 4, preload=True).preload is True


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(dataset, batch_size):
    with pytest.raises(ValueError, match="--batch-size"):
        DataLoader(dataset, batch_size)


def test_bad_dtype(dataset):
    with pytest.raises(ValueError, match="float"):
        DataLoader(dataset, 4, dtype="int32")


# --- augmentation ------------------------------------------------------------------------------------------------

@pytest.fixture
def rgb_dataset():
    rng = np.random.default_rng(1)
    return Dataset(rng.integers(0, 256, (11, 3, 6, 5), dtype=np.uint8), np.arange(11) % 2, ["a", "b"])


def augment():
    return Compose([RandomCrop((6, 5), padding=2), RandomHorizontalFlip(), Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))])


def test_transform_gets_the_generator_of_seed_epoch_and_batch(rgb_dataset):
    seen = []

    def record(x, rng):
        seen.append(rng.integers(0, 2**62))
        return x

    loader = DataLoader(rgb_dataset, 4, shuffle=True, seed=3, transform=record)
    loader.set_epoch(5)
    list(loader)
    expected = [np.random.default_rng([3, 5, b, loader_module.AUGMENT_STREAM]).integers(0, 2**62) for b in range(3)]
    assert seen == expected
    assert np.random.default_rng([3, 5]).integers(0, 2**62) not in seen, "augmentation reuses the shuffle's stream"


def test_batches_are_transformed_images(rgb_dataset):
    loader = DataLoader(rgb_dataset, 4, shuffle=True, seed=2, transform=augment())
    loader.set_epoch(1)
    order = np.random.default_rng([2, 1]).permutation(11)
    for b, (x, y) in enumerate(collect(loader)):
        idx = order[4 * b:4 * b + 4]
        expected = augment()(rgb_dataset.images[idx].astype(np.float32) / np.float32(255), loader.batch_rng(b))
        assert x.dtype == np.float32 and x.shape == (len(idx), 3, 6, 5)
        assert x.tobytes() == expected.tobytes()
        np.testing.assert_array_equal(y, rgb_dataset.labels[idx])


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_replays_across_loaders_and_epochs(rgb_dataset, channels):
    data = rgb_dataset if channels == 3 else Dataset(rgb_dataset.images[:, :1], rgb_dataset.labels, ["a", "b"])
    steps = Compose([RandomCrop((6, 5), padding=2), RandomHorizontalFlip()])
    first = DataLoader(data, 4, shuffle=True, seed=7, transform=steps)
    epochs = []
    for epoch in range(3):
        first.set_epoch(epoch)
        epochs.append(collect(first))
    assert epochs[0][0][0].shape[1] == channels
    resumed = DataLoader(data, 4, shuffle=True, seed=7, transform=Compose([RandomCrop((6, 5), padding=2),
                                                                         RandomHorizontalFlip()]))
    for epoch in (2, 0, 1):          # out of order: each epoch depends on its number only
        resumed.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(epochs[epoch], collect(resumed)):
            assert xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
    unshuffled = DataLoader(data, 11, transform=steps)
    unshuffled.set_epoch(0)
    again = collect(unshuffled)[0][0]
    unshuffled.set_epoch(1)
    assert again.tobytes() != collect(unshuffled)[0][0].tobytes(), "the epoch does not change the augmentation"


def test_same_batch_same_augmentation_whatever_the_device(rgb_dataset, device):
    """The augmentation runs on the host before to_device, so every backend (and every rank) sees the same x."""
    to_device, sent = device
    on_host = collect(DataLoader(rgb_dataset, 4, shuffle=True, seed=1, transform=augment()))
    on_device = collect(DataLoader(rgb_dataset, 4, shuffle=True, seed=1, transform=augment(), to_device=to_device))
    assert [x.tobytes() for x, _ in on_host] == [x.tobytes() for x, _ in on_device]
    assert all(a.shape[0] <= 4 for a in sent)


def test_random_transform_is_not_preloaded(rgb_dataset):
    assert DataLoader(rgb_dataset, 4, transform=augment()).preload is False
    assert DataLoader(rgb_dataset, 4, transform=lambda x, rng: x).preload is False   # unknown: assumed random
    with pytest.raises(DataError, match="preload=True needs a transform that draws no random numbers"):
        DataLoader(rgb_dataset, 4, transform=RandomHorizontalFlip(), preload=True)
    with pytest.raises(DataError, match="transform must be callable"):
        DataLoader(rgb_dataset, 4, transform="flip")


@pytest.mark.parametrize("shuffle", [False, True])
def test_normalize_alone_keeps_the_preload_path_and_its_bits(rgb_dataset, device, shuffle):
    to_device, sent = device
    normalize = Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    preloaded = DataLoader(rgb_dataset, 4, shuffle=shuffle, seed=3, transform=normalize, to_device=to_device)
    assert preloaded.preload is True
    runs = [collect(preloaded), collect(DataLoader(rgb_dataset, 4, shuffle=shuffle, seed=3, transform=normalize,
                                                   preload=False))]
    assert sent[0].shape == (11, 3, 6, 5)
    for (xa, ya), (xb, yb) in zip(*runs):
        assert xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
    order = np.random.default_rng([3, 0]).permutation(11) if shuffle else np.arange(11)
    expected = normalize(rgb_dataset.images[order].astype(np.float32) / np.float32(255), None)
    assert np.concatenate([x for x, _ in runs[0]]).tobytes() == expected.tobytes()
