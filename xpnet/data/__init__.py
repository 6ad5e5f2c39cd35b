"""Datasets for xpnet: IDX, CIFAR-10 binary, class-folder and .npz readers, the named datasets' sources, batched
augmentation and the batch loader.

Data code uses NumPy only (never a backend): images stay uint8 (N, C, H, W) until the loader scales each batch,
augments it on the host and hands it to ``to_device``.
"""

from xpnet.data.dataset import DataError, Dataset, to_grayscale
from xpnet.data.datasets import DATASETS, load_dataset
from xpnet.data.folder import load_class_folders, load_class_tree
from xpnet.data.idx import load_idx_pair, read_idx, write_idx
from xpnet.data.loader import DataLoader, split_train_val
from xpnet.data.mnist import MNIST, load_mnist
from xpnet.data.npz import load_npz
from xpnet.data.sources import Splits
from xpnet.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "Compose", "DATASETS", "DataError", "DataLoader", "Dataset", "MNIST", "Normalize", "RandomCrop",
    "RandomHorizontalFlip", "Splits", "load_class_folders", "load_class_tree", "load_dataset", "load_idx_pair",
    "load_mnist", "load_npz", "read_idx", "split_train_val", "to_grayscale", "write_idx",
]
