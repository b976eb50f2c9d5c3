"""Where the datasets come from: local files, tfds, scikit-learn, or generated on the spot.

`load_dataset(name, data_dir, source)` returns a `Dataset` of uint8 images [N, H, W, C] and int32 labels,
train and test. Readers (the `source` argument):
- "idx": a folder with the four MNIST-format IDX files, gzipped or plain (mnist, fashion_mnist). Without a
  data_dir, fashion_mnist is read from the Debian package dataset-fashion-mnist.
- "cifar": the CIFAR "python version" pickle batches (cifar-10-batches-py, cifar-100-python).
- "tfds": `tfds.data_source` over a dataset prepared in array_record format; random access works without
  TensorFlow, though preparing a stock builder needs it (the `tfds-prepare` extra) and network.
- "sklearn": scikit-learn's 1,797 real 8x8 digits, embedded, fully offline.
- "webvision": the WebVision 1.0 file lists and images, filtered to webvision-mini's 14 classes.
- "synthetic": a tiny generated dataset for tests.
source="auto" prefers local files (data_dir, then the Debian folder) and falls back to tfds.

Nothing is cached on disk: every call reads the files and returns fresh arrays.
"""
import dataclasses
import gzip
import os
import pickle
from typing import Sequence

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "webvision_mini", "digits", "synthetic")
SOURCES = ("auto", "idx", "cifar", "tfds", "sklearn", "webvision", "synthetic")

# The readers each dataset can be read with (source="auto" picks one of them).
_SOURCES_OF = {
    "mnist": ("idx", "tfds"),
    "fashion_mnist": ("idx", "tfds"),
    "cifar10": ("cifar", "tfds"),
    "cifar100": ("cifar", "tfds"),
    "webvision_mini": ("webvision",),
    "digits": ("sklearn",),
    "synthetic": ("synthetic",),
}

# Where `apt-get install -y dataset-fashion-mnist` puts the four IDX .gz files.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

MNIST_CLASS_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                             "Sneaker", "Bag", "Ankle boot")

# webvision-mini: these WebVision 1.0 labels (= ILSVRC-2012 class indices, synsets in sorted order, as in
# WebVision's info/synsets.txt), in this order, become classes 0..13. Taken from the reference release's
# data loader (its WEBVISION dataset's LABEL_LIST); the names were checked against the standard ILSVRC-2012
# synset list (e.g. 412 n02747177 ashcan, 480 n02977058 cash machine, 762 n04081281 restaurant). Only the
# reference code vouches that these are the paper's 14 classes; the paper does not list them.
WEBVISION_MINI_CLASSES = (412, 480, 506, 395, 421, 121, 498, 762, 48, 896, 32, 414, 147, 436)
WEBVISION_MINI_CLASS_NAMES = ("ashcan", "cash_machine", "coil", "gar", "bannister", "king_crab", "cinema",
                              "restaurant", "Komodo_dragon", "washbasin", "tailed_frog", "backpack",
                              "grey_whale", "beach_wagon")
WEBVISION_IMAGE_SIZE = 84

_TFDS_HINT = ("prepare the tfds dataset `{tfds_name}` in array_record format on a machine with network "
              "(needs the `tfds-prepare` extra, i.e. TensorFlow): pip install -e '.[tfds-prepare]' && "
              "python -c \"import tensorflow_datasets as tfds; tfds.data_source('{tfds_name}')\" "
              "(then copy ~/tensorflow_datasets/{tfds_name} over, or pass its parent folder with "
              "source='tfds' and --config.dataset.data_dir)")
_IDX_HINT = ("--config.dataset.data_dir=FOLDER holding the four IDX files train-images-idx3-ubyte, "
             "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may end in .gz)")
_HOW_TO_PROVIDE = {
    "mnist": f"pass {_IDX_HINT}; or {_TFDS_HINT.format(tfds_name='mnist')}.",
    "fashion_mnist": (f"run `apt-get install -y dataset-fashion-mnist` (installs {FASHION_MNIST_DEBIAN_DIR}, "
                      f"read by default); or pass {_IDX_HINT}; or "
                      f"{_TFDS_HINT.format(tfds_name='fashion_mnist')}."),
    "cifar10": ("pass --config.dataset.data_dir=FOLDER holding `cifar-10-batches-py` (or that folder itself: "
                "data_batch_1..data_batch_5, test_batch, batches.meta; the 'CIFAR-10 python version' archive "
                f"cifar-10-python.tar.gz, unpacked); or {_TFDS_HINT.format(tfds_name='cifar10')}."),
    "cifar100": ("pass --config.dataset.data_dir=FOLDER holding `cifar-100-python` (or that folder itself: "
                 "train, test, meta; the 'CIFAR-100 python version' archive cifar-100-python.tar.gz, "
                 f"unpacked); or {_TFDS_HINT.format(tfds_name='cifar100')}."),
    "webvision_mini": ("pass --config.dataset.data_dir=FOLDER laid out as WebVision 1.0 (Google subset "
                       "suffices): FOLDER/info/train_filelist_google.txt and FOLDER/info/val_filelist.txt "
                       "with lines 'relative/path.jpg label', training images at FOLDER/<relative path> "
                       "(e.g. FOLDER/google/q0001/...), validation images under FOLDER/val_images_256/ "
                       "(or FOLDER/val_images/); optional FOLDER/info/synsets.txt for class names."),
}


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for; the message says how to provide them."""


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N] (clean labels; for webvision the given web labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    class_names: tuple[str, ...]
    superclass_of: np.ndarray | None  # int32 [num_classes]: cifar100 fine -> coarse id, else None
    real_noise: bool  # True for webvision: training labels are already noisy, truth unknown

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(name: str, data_dir: str = "", source: str = "auto", *,
                 webvision_classes: Sequence[int] | None = None) -> Dataset:
    """Loads a dataset whole into memory (see the module docstring for the sources).

    data_dir: a local folder for the file readers, or the tfds data_dir with source="tfds"; "" = defaults.
    webvision_classes: WebVision labels to keep, in the order that defines classes 0..K-1
      (default WEBVISION_MINI_CLASSES); only for webvision_mini.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    if webvision_classes is not None and name != "webvision_mini":
        raise ValueError("webvision_classes only applies to webvision_mini")
    if source == "auto":
        source = _auto_source(name, data_dir)
    if source not in _SOURCES_OF[name]:
        raise ValueError(f"dataset {name!r} cannot be read with source {source!r}; "
                         f"its sources: {('auto',) + _SOURCES_OF[name]}")

    if source == "idx":
        dataset = load_idx_folder(name, data_dir or _default_idx_dir(name))
    elif source == "cifar":
        dataset = load_cifar_folder(name, data_dir)
    elif source == "tfds":
        dataset = load_tfds(name, data_dir)
    elif source == "sklearn":
        dataset = load_digits()
    elif source == "webvision":
        classes = WEBVISION_MINI_CLASSES if webvision_classes is None else tuple(webvision_classes)
        dataset = load_webvision(data_dir, classes)
    else:
        dataset = make_synthetic()
    _check(dataset)
    return dataset


def _auto_source(name: str, data_dir: str) -> str:
    if name in ("mnist", "fashion_mnist"):
        return "idx" if data_dir or _default_idx_dir(name) else "tfds"
    if name in ("cifar10", "cifar100"):
        return "cifar" if data_dir else "tfds"
    return _SOURCES_OF[name][0]


def _default_idx_dir(name: str) -> str:
    if name == "fashion_mnist" and os.path.isdir(FASHION_MNIST_DEBIAN_DIR):
        return FASHION_MNIST_DEBIAN_DIR
    return ""


def _not_found(name: str, what: str) -> DataNotFoundError:
    return DataNotFoundError(f"{name}: {what}\nTo provide {name}, {_HOW_TO_PROVIDE[name]}")


def _check(dataset: Dataset) -> None:
    """The contract every reader must meet, checked once here rather than trusted."""
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        images, labels = split.images, split.labels
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{dataset.name} {split_name}: images must be uint8 [N, H, W, C], "
                             f"got {images.dtype} {images.shape}")
        if labels.dtype != np.int32 or labels.shape != (images.shape[0],):
            raise ValueError(f"{dataset.name} {split_name}: labels must be int32 [{images.shape[0]}], "
                             f"got {labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= dataset.num_classes):
            raise ValueError(f"{dataset.name} {split_name}: labels outside 0..{dataset.num_classes - 1}")


# ---------------------------------------------------------------------------------------------- IDX (MNIST)

_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803 / 0x0801: unsigned bytes, 3 / 1 dimensions
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str, kind: str) -> np.ndarray:
    """Reads one IDX file ("images" or "labels"), gzipped when its name ends in .gz, as a uint8 array."""
    expected = _IDX_MAGIC[kind]
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected:
        shown = "none (file shorter than 4 bytes)" if magic is None else f"{magic:#010x}"
        raise ValueError(f"{path}: IDX magic number {shown}, expected {expected:#010x} for {kind}; "
                         "the file is corrupted or not an IDX file of that kind")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {dims} = {int(np.prod(dims))} bytes of data, "
                         f"the file holds {len(raw) - header}; it is truncated or corrupted")
    # frombuffer views the immutable bytes; copy so callers get an ordinary writable array.
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _find_idx_file(folder: str, stem: str) -> str | None:
    # The official names, the "train-images.idx3-ubyte" spelling some mirrors use, each plain or gzipped.
    for base in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            path = os.path.join(folder, base + suffix)
            if os.path.isfile(path):
                return path
    return None


def load_idx_folder(name: str, folder: str) -> Dataset:
    """mnist or fashion_mnist from a folder with the four IDX files."""
    if not folder:
        raise _not_found(name, "no data folder given and no default location exists")
    if not os.path.isdir(folder):
        raise _not_found(name, f"folder {folder} does not exist")
    paths = {stem: _find_idx_file(folder, stem) for stems in _IDX_FILES.values() for stem in stems}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        raise _not_found(name, f"{folder} lacks the IDX files {missing} (plain or .gz)")
    splits = {}
    for split_name, (image_stem, label_stem) in _IDX_FILES.items():
        images = read_idx(paths[image_stem], "images")
        labels = read_idx(paths[label_stem], "labels")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{paths[image_stem]} holds {images.shape[0]} images but "
                             f"{paths[label_stem]} holds {labels.shape[0]} labels")
        splits[split_name] = Split(images[..., None], labels.astype(np.int32))
    names = FASHION_MNIST_CLASS_NAMES if name == "fashion_mnist" else MNIST_CLASS_NAMES
    return Dataset(name, splits["train"], splits["test"], names, None, False)


# ------------------------------------------------------------------------------------- CIFAR python batches

_CIFAR_LAYOUT = {
    # dataset: (folder inside data_dir, training batches, test batch, meta file)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                "batches.meta"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta"),
}


def _unpickle(path: str) -> dict:
    # The CIFAR python format is pickles, which can run code: only read files from a source you trust.
    with open(path, "rb") as f:
        # The batches were written by Python 2: byte-string keys and names, so decode as bytes.
        content = pickle.load(f, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def _names(values) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _cifar_batch(path: str, label_keys: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    batch = _unpickle(path)
    missing = [k for k in ("data", *label_keys) if k not in batch]
    if missing:
        raise ValueError(f"{path}: not a CIFAR batch of this dataset, it lacks the keys {missing}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR rows must be 3072 bytes, got data of shape {data.shape}")
    # Each row holds the red, green then blue 32x32 planes (CHW); we store HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = [np.asarray(batch[k], dtype=np.int32) for k in label_keys]
    return images, labels


def superclass_from_pairs(fine: np.ndarray, coarse: np.ndarray, num_classes: int) -> np.ndarray:
    """int32 [num_classes]: the one coarse label each fine class appears with."""
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    fine_ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"fine classes {fine_ids[counts > 1].tolist()} appear with several coarse labels")
    superclass_of = np.full(num_classes, -1, np.int32)
    superclass_of[pairs[:, 0]] = pairs[:, 1]
    if (superclass_of < 0).any():
        raise ValueError(f"fine classes {np.flatnonzero(superclass_of < 0).tolist()} never appear, so their "
                         "superclass is unknown")
    return superclass_of


def load_cifar_folder(name: str, data_dir: str) -> Dataset:
    """cifar10 or cifar100 from the python pickle batches (data_dir, or its cifar-*-py* subfolder)."""
    subfolder, train_files, test_file, meta_file = _CIFAR_LAYOUT[name]
    if not data_dir:
        raise _not_found(name, "no data folder given")
    folder = os.path.join(data_dir, subfolder)
    if not os.path.isdir(folder):
        folder = data_dir
    missing = [f for f in (*train_files, test_file, meta_file) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise _not_found(name, f"{folder} lacks the CIFAR batch files {missing}")
    label_keys = ("labels",) if name == "cifar10" else ("fine_labels", "coarse_labels")
    parts = [_cifar_batch(os.path.join(folder, f), label_keys) for f in train_files]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = [np.concatenate([labels[i] for _, labels in parts]) for i in range(len(label_keys))]
    test_images, test_labels = _cifar_batch(os.path.join(folder, test_file), label_keys)
    meta = _unpickle(os.path.join(folder, meta_file))
    names = _names(meta["label_names"] if name == "cifar10" else meta["fine_label_names"])
    superclass_of = None
    if name == "cifar100":
        superclass_of = superclass_from_pairs(np.concatenate([train_labels[0], test_labels[0]]),
                                              np.concatenate([train_labels[1], test_labels[1]]), len(names))
    return Dataset(name, Split(train_images, train_labels[0]), Split(test_images, test_labels[0]), names,
                   superclass_of, False)


# ------------------------------------------------------------------------------------------------------ tfds

def load_tfds(name: str, data_dir: str = "") -> Dataset:
    """mnist, fashion_mnist, cifar10 or cifar100 through tfds.data_source (no TensorFlow needed to read)."""
    import tensorflow_datasets as tfds  # lazy: importing it takes about a second

    splits, coarse = {}, {}
    for split_name in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split_name, data_dir=data_dir or None, download=False,
                                      builder_kwargs={"file_format": "array_record"})
        # tfds reports "not prepared" with varying exception types (by file format and version).
        except Exception as e:  # noqa: BLE001
            where = data_dir or "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
            reason = (str(e).splitlines() or [""])[0]
            raise _not_found(name, f"tfds has no prepared array_record `{name}` in {where} "
                                   f"({type(e).__name__}: {reason})") from e
        n = len(source)
        if n == 0:
            raise _not_found(name, f"the tfds `{name}` split {split_name} is empty")
        # Items are fetched one at a time: batched __getitems__ is not supported everywhere (mock data).
        first = source[0]
        images = np.empty((n, *np.shape(first["image"])), np.uint8)
        labels = np.empty(n, np.int32)
        coarse[split_name] = np.empty(n, np.int32) if name == "cifar100" else None
        for i in range(n):
            item = first if i == 0 else source[i]
            images[i] = item["image"]
            labels[i] = item["label"]
            if name == "cifar100":
                coarse[split_name][i] = item["coarse_label"]
        splits[split_name] = Split(images, labels)
    names = tuple(tfds.builder(name, data_dir=data_dir or None).info.features["label"].names)
    superclass_of = None
    if name == "cifar100":
        superclass_of = superclass_from_pairs(np.concatenate([splits["train"].labels, splits["test"].labels]),
                                              np.concatenate([coarse["train"], coarse["test"]]), len(names))
    return Dataset(name, splits["train"], splits["test"], names, superclass_of, False)


# --------------------------------------------------------------------------------- digits (scikit-learn)

def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits; every 5th sample (index % 5 == 0) is test, the rest train."""
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: sklearn import is slow

    digits = sklearn_digits()
    # Pixel values are counts 0..16; stretch them to the 0..255 range of every other dataset.
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    is_test = np.arange(len(labels)) % 5 == 0
    train = Split(images[~is_test], labels[~is_test])
    test = Split(images[is_test], labels[is_test])
    return Dataset("digits", train, test, MNIST_CLASS_NAMES, None, False)


# ----------------------------------------------------------------------------------------------- synthetic

def make_synthetic(train_per_class: int = 60, test_per_class: int = 20, seed: int = 0) -> Dataset:
    """10 classes of 8x8x1 images: a fixed random binary pattern per class, plus small seeded noise.

    Deterministic in its arguments; samples of all classes are interleaved, as in real datasets.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.random((10, 8, 8)) < 0.5

    def split(per_class: int) -> Split:
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.int32), per_class))
        pixels = 40 + 170 * patterns[labels] + rng.normal(0, 15, (len(labels), 8, 8))
        return Split(np.clip(np.round(pixels), 0, 255).astype(np.uint8)[..., None], labels)

    train = split(train_per_class)
    test = split(test_per_class)
    return Dataset("synthetic", train, test, tuple(str(k) for k in range(10)), None, False)


# ----------------------------------------------------------------------------------------------- webvision

def _read_filelist(path: str, keep: dict[int, int]) -> tuple[list[str], np.ndarray]:
    files, labels = [], []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{line_number}: expected 'relative/path.jpg label', got {line!r}")
            label = int(fields[1])
            if label in keep:
                files.append(fields[0])
                labels.append(keep[label])
    return files, np.asarray(labels, np.int32)


def _decode_images(folder: str, files: Sequence[str], size: int) -> np.ndarray:
    from PIL import Image, ImageFile  # lazy: only webvision decodes image files

    images = np.empty((len(files), size, size, 3), np.uint8)
    # Web images are often cut short; decode what is there, as the reference loader does.
    truncated_before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
    try:
        for i, file in enumerate(files):
            path = os.path.join(folder, file)
            if not os.path.isfile(path):
                raise _not_found("webvision_mini", f"image {path}, listed in the file list, is missing")
            with Image.open(path) as image:
                # RGB first, so palette and grey images are resized as colour, not by nearest neighbour.
                images[i] = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_before
    return images


def _webvision_names(data_dir: str, classes: Sequence[int]) -> tuple[str, ...]:
    synsets = os.path.join(data_dir, "info", "synsets.txt")
    if os.path.isfile(synsets):
        with open(synsets) as f:
            # Lines read "n02747177 ashcan, trash can, ..."; keep the first name.
            lines = [line.split(maxsplit=1) for line in f if line.strip()]
        return tuple(lines[c][1].split(",")[0].strip().replace(" ", "_") if len(lines[c]) > 1 else lines[c][0]
                     for c in classes)
    if tuple(classes) == WEBVISION_MINI_CLASSES:
        return WEBVISION_MINI_CLASS_NAMES
    return tuple(f"webvision_{c}" for c in classes)


def load_webvision(data_dir: str, classes: Sequence[int] = WEBVISION_MINI_CLASSES,
                   image_size: int = WEBVISION_IMAGE_SIZE) -> Dataset:
    """WebVision (Google subset) restricted to `classes`, remapped to 0..K-1 in that order, resized RGB.

    Training labels are the web labels (real noise); the validation set serves as the clean test set.
    """
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"webvision classes must be distinct and non-empty, got {classes}")
    if not data_dir:
        raise _not_found("webvision_mini", "no data folder given (webvision has no default location)")
    lists = {split: os.path.join(data_dir, "info", file)
             for split, file in (("train", "train_filelist_google.txt"), ("test", "val_filelist.txt"))}
    missing = [path for path in lists.values() if not os.path.isfile(path)]
    val_folders = [os.path.join(data_dir, f) for f in ("val_images_256", "val_images")]
    val_folder = next((f for f in val_folders if os.path.isdir(f)), None)
    if val_folder is None:
        missing.append(" or ".join(val_folders))
    if missing:
        raise _not_found("webvision_mini", f"missing {missing}")
    keep = {label: k for k, label in enumerate(classes)}
    train_files, train_labels = _read_filelist(lists["train"], keep)
    test_files, test_labels = _read_filelist(lists["test"], keep)
    train = Split(_decode_images(data_dir, train_files, image_size), train_labels)
    test = Split(_decode_images(val_folder, test_files, image_size), test_labels)
    return Dataset("webvision_mini", train, test, _webvision_names(data_dir, classes), None, True)
