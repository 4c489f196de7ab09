"""Board-side data: loaders, normalization, partitions and batches.

Imports only the standard library and numpy; Pillow is imported lazily, only to
read PNG/JPEG images.
"""

from __future__ import annotations

from edge_client.data.batches import iterate_batches, num_batches, padded_batches, train_batches
from edge_client.data.cifar import load_cifar_batches
from edge_client.data.dataset import Dataset, check_labels
from edge_client.data.idx import load_idx, read_idx
from edge_client.data.image_folder import load_image_folder
from edge_client.data.image_tar import load_image_tar
from edge_client.data.normalize import Normalization, normalize
from edge_client.data.npz import load_npz, save_npz
from edge_client.data.partition import PartitionScheme, label_histogram, parse_scheme, partition
from edge_client.data.registry import (
    DATASETS,
    DatasetSpec,
    cache_dir,
    dataset_names,
    get_spec,
    load_dataset,
    load_path,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "Normalization",
    "PartitionScheme",
    "cache_dir",
    "check_labels",
    "dataset_names",
    "get_spec",
    "iterate_batches",
    "label_histogram",
    "load_cifar_batches",
    "load_dataset",
    "load_idx",
    "load_image_folder",
    "load_image_tar",
    "load_npz",
    "load_path",
    "normalize",
    "num_batches",
    "padded_batches",
    "parse_scheme",
    "partition",
    "read_idx",
    "save_npz",
    "train_batches",
]
