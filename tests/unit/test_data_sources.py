"""Dataset sources: IDX files in every layout, clear errors, and the fixed mnist-5k split."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.ml.data import IDX_FILES, DataError, load_dataset, read_idx, write_idx
from service.settings import get_settings


def _write_tiny_idx(folder: Path, *, gz: bool, train: int = 12, test: int = 6) -> dict:
    rng = np.random.default_rng(3)
    arrays = {
        "train_images": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


def test_idx_round_trip_keeps_shape_dtype_and_values(tmp_path):
    array = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    for name in ("plain-idx3-ubyte", "zipped-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        back = read_idx(tmp_path / name)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, array)
    with gzip.open(tmp_path / "zipped-idx3-ubyte.gz", "rb") as handle:
        assert handle.read(4) == bytes([0, 0, 0x08, 3])


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads_plain_or_gzipped_idx_files_from_the_data_dir(tmp_path, gz):
    arrays = _write_tiny_idx(tmp_path, gz=gz)
    data = load_dataset("mnist", tmp_path)
    np.testing.assert_array_equal(data.train_images, arrays["train_images"])
    np.testing.assert_array_equal(data.test_labels, arrays["test_labels"].astype(np.int64))
    assert data.train_labels.dtype == np.int64
    assert data.describe()["train_size"] == 12 and data.describe()["test_size"] == 6


def test_mnist_without_a_folder_reads_the_data_dir_setting(tmp_path, monkeypatch):
    arrays = _write_tiny_idx(tmp_path / "idx", gz=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "idx"))
    get_settings.cache_clear()
    try:
        data = load_dataset("mnist")
    finally:
        get_settings.cache_clear()
    np.testing.assert_array_equal(data.train_images, arrays["train_images"])
    assert data.describe()["split"]["folder"] == str(tmp_path / "idx")


def test_torchvision_layouts_are_found_below_the_data_dir(tmp_path):
    _write_tiny_idx(tmp_path / "MNIST" / "raw", gz=False)
    assert load_dataset("mnist", tmp_path).describe()["split"]["folder"].endswith("MNIST/raw")
    _write_tiny_idx(tmp_path / "fashion" / "FashionMNIST" / "raw", gz=True)
    fashion = load_dataset("fashion-mnist", tmp_path / "fashion")
    assert fashion.class_names[0] == "T-shirt/top"


def test_missing_data_dir_error_names_the_path_and_the_expected_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        load_dataset("mnist", missing)
    message = str(error.value)
    assert str(missing) in message
    for stem in IDX_FILES.values():
        assert stem in message


def test_incomplete_data_dir_error_names_the_path_and_the_expected_files(tmp_path):
    _write_tiny_idx(tmp_path, gz=False)
    (tmp_path / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(error.value)
    assert IDX_FILES["test_labels"] in str(error.value)


def test_truncated_idx_file_is_refused(tmp_path):
    _write_tiny_idx(tmp_path, gz=False)
    images = tmp_path / IDX_FILES["train_images"]
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)


def test_truncated_gzip_is_refused(tmp_path):
    _write_tiny_idx(tmp_path, gz=True)
    images = tmp_path / (IDX_FILES["train_images"] + ".gz")
    images.write_bytes(images.read_bytes()[:-40])
    with pytest.raises(DataError, match=str(images.name)):
        load_dataset("mnist", tmp_path)


def test_file_that_is_not_idx_is_refused(tmp_path):
    _write_tiny_idx(tmp_path, gz=False)
    (tmp_path / IDX_FILES["train_labels"]).write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", tmp_path)


def test_label_count_must_match_image_count(tmp_path):
    _write_tiny_idx(tmp_path, gz=False)
    write_idx(tmp_path / IDX_FILES["train_labels"], np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="must match"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="mnist-5k"):
        load_dataset("cifar")


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


def test_mnist_5k_split_is_stratified_4000_to_1000(mnist_5k):
    assert np.bincount(mnist_5k.test_labels, minlength=10).tolist() == [100] * 10
    assert np.bincount(mnist_5k.train_labels, minlength=10).tolist() == [400] * 10
    split = mnist_5k.describe()["split"]
    assert split["method"] == "stratified" and split["test_per_class"] == 100


def test_mnist_5k_train_and_test_do_not_share_digits(mnist_5k):
    train = {image.tobytes() for image in mnist_5k.train_images}
    assert not any(image.tobytes() in train for image in mnist_5k.test_images)


def test_mnist_5k_split_is_fixed_across_loads(mnist_5k):
    again = load_dataset("mnist-5k")
    assert again.fingerprint() == mnist_5k.fingerprint()
    np.testing.assert_array_equal(again.test_images, mnist_5k.test_images)


def test_mnist_5k_training_order_is_shuffled_not_sorted_by_class(mnist_5k):
    assert len(set(mnist_5k.train_labels[:50].tolist())) > 5


def test_limits_keep_a_seeded_stratified_subset(mnist_5k):
    small = load_dataset("mnist-5k", limit=300, test_limit=200)
    assert np.bincount(small.train_labels).tolist() == [30] * 10
    assert np.bincount(small.test_labels).tolist() == [20] * 10
    assert small.fingerprint() == load_dataset("mnist-5k", limit=300, test_limit=200).fingerprint()
    assert small.describe()["split"]["train_limit"] == 300


def test_fashion_mnist_reads_the_debian_package_layout(tmp_path):
    # The same four gzipped files /usr/share/datasets/fashion-mnist holds, copied small.
    source = tmp_path / "src"
    _write_tiny_idx(source, gz=True)
    target = tmp_path / "fashion-mnist"
    shutil.copytree(source, target)
    assert load_dataset("fashion-mnist", target).name == "fashion-mnist"
