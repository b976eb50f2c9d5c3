"""Dataset readers on files written here in the true on-disk formats, tfds mock data, and the errors."""
import gzip
import os
import pickle

import numpy as np
import pytest

from spr_jax.data import sources

# ------------------------------------------------------------------------------------------------ helpers


def _write_idx(path, array, gz):
    """An IDX file as MNIST ships it: magic 0x0000 08 ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def _idx_folder(folder, n_train=12, n_test=5, shape=(6, 5), gz_train=True, gz_test=False, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    data = {}
    for split, prefix, n, gz in (("train", "train", n_train, gz_train), ("test", "t10k", n_test, gz_test)):
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, gz)
        _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, gz)
        data[split] = (images, labels)
    return data


def _pickle(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def _chw_rows(images):
    """CIFAR's row layout: the red, green, blue 32x32 planes of each HWC image, flattened."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _cifar10_folder(root, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()  # the real batches hold a list of ints
        _pickle(os.path.join(folder, name), {b"batch_label": name.encode(), b"labels": labels,
                                             b"data": _chw_rows(images),
                                             b"filenames": [b"x.png"] * per_batch})
        batches.append((images, labels))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    _pickle(os.path.join(folder, "batches.meta"), {b"label_names": names, b"num_cases_per_batch": per_batch,
                                                   b"num_vis": 3072})
    return batches


def _cifar100_folder(root, coarse_of_fine, seed=0):
    """Every fine class appears once in train (in a shuffled order) and in a 30-sample test set."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    splits = {}
    for name, fine in (("train", rng.permutation(100)), ("test", rng.integers(0, 100, 30))):
        images = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
        _pickle(os.path.join(folder, name), {b"filenames": [b"x.png"] * len(fine), b"batch_label": b"b",
                                             b"fine_labels": fine.tolist(),
                                             b"coarse_labels": coarse_of_fine[fine].tolist(),
                                             b"data": _chw_rows(images)})
        splits[name] = (images, fine)
    _pickle(os.path.join(folder, "meta"), {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
                                           b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]})
    return splits


# ---------------------------------------------------------------------------------------------------- IDX


def test_idx_reader_reads_gzip_and_plain_files_exactly(tmp_path):
    data = _idx_folder(str(tmp_path), gz_train=True, gz_test=False)
    ds = sources.load_dataset("mnist", data_dir=str(tmp_path))
    for split, (images, labels) in ((ds.train, data["train"]), (ds.test, data["test"])):
        assert split.images.dtype == np.uint8 and split.images.shape == (*images.shape, 1)
        np.testing.assert_array_equal(split.images[..., 0], images)
        assert split.labels.dtype == np.int32
        np.testing.assert_array_equal(split.labels, labels)
        assert split.images.flags.writeable
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert ds.superclass_of is None and not ds.real_noise


def test_idx_reader_accepts_the_dotted_file_names_and_names_fashion_classes(tmp_path):
    data = _idx_folder(str(tmp_path))
    for file in os.listdir(tmp_path):
        os.rename(tmp_path / file, tmp_path / file.replace("-idx", ".idx"))
    ds = sources.load_dataset("fashion_mnist", data_dir=str(tmp_path), source="idx")
    np.testing.assert_array_equal(ds.train.labels, data["train"][1])
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_idx_reader_rejects_a_wrong_magic_number_naming_the_file(tmp_path):
    _idx_folder(str(tmp_path))
    path = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[2:4] = bytes([0x08, 0x01])  # the labels' magic on an images file
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*magic number 0x00000801"):
        sources.load_dataset("mnist", data_dir=str(tmp_path))


def test_idx_reader_rejects_a_truncated_file_naming_it(tmp_path):
    _idx_folder(str(tmp_path))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        sources.load_dataset("mnist", data_dir=str(tmp_path))


def test_idx_reader_rejects_a_broken_gzip_naming_it(tmp_path):
    _idx_folder(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        sources.load_dataset("mnist", data_dir=str(tmp_path))


def test_idx_folder_missing_files_says_what_and_how(tmp_path):
    _idx_folder(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(sources.DataNotFoundError) as error:
        sources.load_dataset("mnist", data_dir=str(tmp_path))
    assert "t10k-labels-idx1-ubyte" in str(error.value)
    assert "--config.dataset.data_dir" in str(error.value)


# -------------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("point_at_subfolder", [False, True])
def test_cifar10_batches_convert_chw_rows_to_hwc_pixel_exact(tmp_path, point_at_subfolder):
    batches = _cifar10_folder(str(tmp_path))
    data_dir = str(tmp_path / "cifar-10-batches-py") if point_at_subfolder else str(tmp_path)
    ds = sources.load_dataset("cifar10", data_dir=data_dir)
    np.testing.assert_array_equal(ds.train.images, np.concatenate([im for im, _ in batches[:5]]))
    np.testing.assert_array_equal(ds.train.labels, np.concatenate([lb for _, lb in batches[:5]]))
    np.testing.assert_array_equal(ds.test.images, batches[5][0])
    np.testing.assert_array_equal(ds.test.labels, batches[5][1])
    assert ds.train.images.shape == (15, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int32
    assert ds.class_names[9] == "truck" and ds.superclass_of is None


def test_cifar_hwc_conversion_puts_channel_planes_last(tmp_path):
    # One image whose red plane is 1, green 2, blue 3: every HWC pixel must read (1, 2, 3).
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.repeat(np.array([1, 2, 3], np.uint8), 1024)[None]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(str(folder / name), {b"data": row, b"labels": [4]})
    _pickle(str(folder / "batches.meta"), {b"label_names": [str(k).encode() for k in range(10)]})
    ds = sources.load_dataset("cifar10", data_dir=str(tmp_path))
    assert (ds.test.images == np.array([1, 2, 3], np.uint8)).all()


def test_cifar100_reads_fine_labels_and_derives_superclass_of(tmp_path):
    coarse_of_fine = np.random.default_rng(1).permutation(np.repeat(np.arange(20), 5)).astype(np.int32)
    splits = _cifar100_folder(str(tmp_path), coarse_of_fine)
    ds = sources.load_dataset("cifar100", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train.images, splits["train"][0])
    np.testing.assert_array_equal(ds.train.labels, splits["train"][1])
    np.testing.assert_array_equal(ds.test.labels, splits["test"][1])
    assert ds.num_classes == 100 and ds.class_names[7] == "fine7"
    assert ds.superclass_of.dtype == np.int32
    np.testing.assert_array_equal(ds.superclass_of, coarse_of_fine)


def test_superclass_from_pairs_rejects_inconsistent_or_incomplete_pairs():
    with pytest.raises(ValueError, match="several coarse"):
        sources.superclass_from_pairs(np.array([0, 0, 1]), np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"\[2\] never appear"):
        sources.superclass_from_pairs(np.array([0, 1]), np.array([0, 1]), 3)


def test_cifar_missing_files_says_what_and_how(tmp_path):
    with pytest.raises(sources.DataNotFoundError) as error:
        sources.load_dataset("cifar100", data_dir=str(tmp_path))
    assert "meta" in str(error.value) and "cifar-100-python" in str(error.value)


# --------------------------------------------------------------------------------------------------- tfds


def test_tfds_source_on_mock_data_gives_uint8_nhwc_and_int32():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = sources.load_dataset("mnist", source="tfds")
    for split in (ds.train, ds.test):
        assert split.images.shape == (6, 28, 28, 1) and split.images.dtype == np.uint8
        assert split.labels.shape == (6,) and split.labels.dtype == np.int32
    assert ds.class_names == tuple("0123456789")


def test_tfds_cifar100_derives_superclass_of_from_its_coarse_labels():
    tfds = pytest.importorskip("tensorflow_datasets")
    coarse_of_fine = np.arange(100) // 5
    items = [{"image": np.full((32, 32, 3), k, np.uint8), "label": np.int64(k),
              "coarse_label": np.int64(coarse_of_fine[k]), "id": f"train_{k}"} for k in range(100)]

    def as_data_source(builder, split, **kwargs):
        del builder, split, kwargs
        return items

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        ds = sources.load_dataset("cifar100", source="tfds")
    np.testing.assert_array_equal(ds.superclass_of, coarse_of_fine)
    np.testing.assert_array_equal(ds.train.images[:, 0, 0, 0], np.arange(100))
    assert ds.num_classes == 100


def test_tfds_not_prepared_is_data_not_found_with_the_fix(tmp_path):
    with pytest.raises(sources.DataNotFoundError) as error:
        sources.load_dataset("cifar10", data_dir=str(tmp_path), source="tfds")
    assert "tfds-prepare" in str(error.value) and "cifar-10-batches-py" in str(error.value)


# ------------------------------------------------------------------------------------ digits and synthetic


def test_digits_shapes_and_deterministic_split():
    ds = sources.load_dataset("digits")
    assert ds.train.images.shape == (1437, 8, 8, 1) and ds.test.images.shape == (360, 8, 8, 1)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    assert ds.num_classes == 10 and set(np.unique(ds.train.labels)) == set(range(10))
    from sklearn.datasets import load_digits
    raw = load_digits()
    np.testing.assert_array_equal(ds.test.labels, raw.target[::5])
    np.testing.assert_array_equal(ds.test.images[..., 0], np.round(raw.images[::5] * 255 / 16))
    assert ds.train.images.max() == 255
    again = sources.load_dataset("digits", source="sklearn")
    np.testing.assert_array_equal(again.train.images, ds.train.images)


def test_synthetic_is_deterministic_balanced_and_learnable():
    ds = sources.load_dataset("synthetic")
    again = sources.load_dataset("synthetic")
    for a, b in ((ds.train, again.train), (ds.test, again.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert ds.train.images.shape == (600, 8, 8, 1) and ds.test.images.shape == (200, 8, 8, 1)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    assert (np.bincount(ds.train.labels) == 60).all() and (np.bincount(ds.test.labels) == 20).all()
    # Nearest class mean: a clean pattern per class makes this near perfect.
    x_train = ds.train.images.reshape(600, -1).astype(float)
    means = np.stack([x_train[ds.train.labels == k].mean(0) for k in range(10)])
    x_test = ds.test.images.reshape(200, -1).astype(float)
    predicted = ((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == ds.test.labels).mean() > 0.95


# ------------------------------------------------------------------------------------------------ webvision


def _webvision_folder(root, val_folder="val_images_256"):
    from PIL import Image
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "info"))
    os.makedirs(os.path.join(root, "google", "q0001"))
    os.makedirs(os.path.join(root, val_folder))
    # (file, WebVision label): 412 and 436 are webvision-mini classes 0 and 13; 7 is not one of them.
    train = [("google/q0001/a.jpg", 412), ("google/q0001/b.png", 7), ("google/q0001/c.png", 436),
             ("google/q0001/d.jpg", 480)]
    val = [("v1.jpg", 436), ("v2.jpg", 5)]
    modes = ["RGB", "L", "P", "RGB"]
    for (file, _), mode in zip(train, modes):
        pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        image = image.convert(mode) if mode != "P" else image.quantize(16)
        image.save(os.path.join(root, file))
    for file, _ in val:
        Image.fromarray(rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)).save(
            os.path.join(root, val_folder, file))
    with open(os.path.join(root, "info", "train_filelist_google.txt"), "w") as f:
        f.writelines(f"{file} {label}\n" for file, label in train)
    with open(os.path.join(root, "info", "val_filelist.txt"), "w") as f:
        f.writelines(f"{file} {label}\n" for file, label in val)


def test_webvision_keeps_the_14_classes_remapped_in_list_order(tmp_path):
    _webvision_folder(str(tmp_path))
    ds = sources.load_dataset("webvision_mini", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train.labels, [0, 13, 1])  # 412 -> 0, 436 -> 13, 480 -> 1
    np.testing.assert_array_equal(ds.test.labels, [13])
    assert ds.train.images.shape == (3, 84, 84, 3) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (1, 84, 84, 3)
    assert ds.real_noise and ds.num_classes == 14 and ds.class_names[0] == "ashcan"


def test_webvision_class_list_can_be_overridden_and_named_from_synsets(tmp_path):
    _webvision_folder(str(tmp_path), val_folder="val_images")
    with open(tmp_path / "info" / "synsets.txt", "w") as f:
        f.writelines(f"n{k:08d} thing {k}, other name\n" for k in range(1000))
    ds = sources.load_dataset("webvision_mini", data_dir=str(tmp_path), webvision_classes=[7, 436])
    np.testing.assert_array_equal(ds.train.labels, [0, 1])
    assert ds.class_names == ("thing_7", "thing_436")


def test_webvision_missing_layout_and_missing_image(tmp_path):
    with pytest.raises(sources.DataNotFoundError, match="train_filelist_google.txt"):
        sources.load_dataset("webvision_mini", data_dir=str(tmp_path))
    _webvision_folder(str(tmp_path))
    os.remove(tmp_path / "google" / "q0001" / "c.png")
    with pytest.raises(sources.DataNotFoundError, match="c.png"):
        sources.load_dataset("webvision_mini", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="fashion_mnist.*webvision_mini"):
        sources.load_dataset("imagenet")


def test_unknown_or_mismatched_source_is_rejected():
    with pytest.raises(ValueError, match="unknown source"):
        sources.load_dataset("mnist", source="http")
    with pytest.raises(ValueError, match="cannot be read with source 'tfds'"):
        sources.load_dataset("digits", source="tfds")
    with pytest.raises(ValueError, match="webvision_classes"):
        sources.load_dataset("digits", webvision_classes=[1])


def test_missing_data_folder_names_the_fix(tmp_path):
    with pytest.raises(sources.DataNotFoundError) as error:
        sources.load_dataset("fashion_mnist", data_dir=str(tmp_path / "absent"))
    assert "does not exist" in str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(error.value)
    assert isinstance(error.value, FileNotFoundError)


def test_fashion_mnist_without_debian_folder_or_data_dir(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "no-debian-package"))
    # An empty tfds data_dir, so a dataset prepared on this machine cannot answer instead.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(sources.DataNotFoundError) as error:
        sources.load_dataset("fashion_mnist")
    message = str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "--config.dataset.data_dir=FOLDER" in message and "train-images-idx3-ubyte" in message


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(sources.FASHION_MNIST_DEBIAN_DIR),
                    reason="needs `apt-get install -y dataset-fashion-mnist`")
def test_real_fashion_mnist_from_the_debian_package():
    ds = sources.load_dataset("fashion_mnist")
    assert ds.train.images.shape == (60000, 28, 28, 1) and ds.test.images.shape == (10000, 28, 28, 1)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    assert (np.bincount(ds.train.labels, minlength=10) == 6000).all()
    assert (np.bincount(ds.test.labels, minlength=10) == 1000).all()
    assert ds.train.images.max() == 255 and ds.train.images.min() == 0
