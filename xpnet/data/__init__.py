"""Datasets for xpnet: IDX, class-folder and .npz readers, MNIST's sources, and the batch loader.

Data code uses NumPy only (never a backend): images stay uint8 until the loader scales each batch and hands it
to ``to_device``.
"""

from xpnet.data.dataset import DataError, Dataset
from xpnet.data.folder import load_class_folders
from xpnet.data.idx import load_idx_pair, read_idx, write_idx
from xpnet.data.loader import DataLoader, split_train_val
from xpnet.data.mnist import MNIST, load_mnist
from xpnet.data.npz import load_npz

__all__ = [
    "DataError", "DataLoader", "Dataset", "MNIST", "load_class_folders", "load_idx_pair", "load_mnist", "load_npz",
    "read_idx", "split_train_val", "write_idx",
]
