"""config.dataset.stream='release' against the stream the original release itself built.

tests/data/release_stream_*.json were dumped by benchmarks/release_reference/ from the release at commit 9ef8fb1
running under its own pins (Python 3.8, torch 1.7.0): for Fashion-MNIST's first 600 training images of each
class, the true labels, and per seed the noisy labels and each task's order (the release's data scheduler,
before the drop of a task's last partial batch).
"""
import json
import os

import numpy as np
import pytest

from spr_jax import configlib
from spr_jax.data import prepare as prepare_lib
from spr_jax.data import release_stream
from spr_jax.data import sources
from spr_jax.data import stream as stream_lib

DATA = os.path.join(os.path.dirname(__file__), "data")


def _table(kind):
    with open(os.path.join(DATA, f"release_stream_{kind}.json")) as f:
        return json.load(f)


def _digits(s):
    return np.frombuffer(s.encode(), dtype=np.uint8) - ord("0")


@pytest.mark.parametrize("kind,dataset", [("symmetric", "fashion_mnist"), ("asymmetric", "mnist")])
def test_noise_and_task_orders_reproduce_the_release(kind, dataset):
    table = _table(kind)
    true = _digits(table["true_labels"])
    assert len(table["seeds"]) >= 1 and true.size == 6000
    for seed, dumped in table["seeds"].items():
        noisy, orders = release_stream.noise_and_task_orders(
            int(seed), true, kind, table["noise_rate"], 10, configlib.MNIST_EPISODES, dataset=dataset)
        np.testing.assert_array_equal(noisy.noisy, _digits(dumped["noisy_labels"]))
        np.testing.assert_array_equal(noisy.true, true)
        assert noisy.corrupt.sum() == (2400 if kind == "symmetric" else 5 * 240)
        assert len(orders) == len(dumped["task_orders"]) == 5
        for mine, theirs in zip(orders, dumped["task_orders"]):
            np.testing.assert_array_equal(mine, theirs)


def test_seeds_differ_and_differ_from_the_default_stream():
    table = _table("symmetric")
    assert table["seeds"]["1"]["task_orders"] != table["seeds"]["2"]["task_orders"]
    true = _digits(table["true_labels"])
    own = stream_lib.build_stream(1, _digits(table["seeds"]["1"]["noisy_labels"]), configlib.MNIST_EPISODES, 10,
                                  chunk_size=300)
    release = stream_lib.chunk_stream([np.asarray(o) for o in table["seeds"]["1"]["task_orders"]], chunk_size=300)
    assert own.chunks.shape == release.chunks.shape  # same task sizes, so the same number of chunks
    assert not np.array_equal(own.chunks, release.chunks)
    assert true.size == 6000


def _fashion_config(seed, **overrides):
    c = configlib.base_config()
    c.dataset.name = "fashion_mnist"
    c.dataset.subset_per_class = 600
    c.dataset.stream = "release"
    c.seed = seed
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.mark.skipif(not os.path.isdir(sources.FASHION_MNIST_DEBIAN_DIR),
                    reason="needs apt-get install dataset-fashion-mnist")
def test_prepare_gives_the_release_subset_noise_and_chunks():
    table = _table("symmetric")
    full = sources.load_dataset("fashion_mnist")
    for seed in (1, 2):
        p = prepare_lib.prepare(_fashion_config(seed))
        subset = np.asarray(table["subset_source_indices"])
        np.testing.assert_array_equal(p.dataset.train.images, full.train.images[subset])
        np.testing.assert_array_equal(p.noisy.true, _digits(table["true_labels"]))
        dumped = table["seeds"][str(seed)]
        np.testing.assert_array_equal(p.noisy.noisy, _digits(dumped["noisy_labels"]))
        # The release reads each task in batches of 10 (drop_last) and processes every full delayed buffer.
        flat = np.concatenate([np.asarray(o)[:len(o) - len(o) % 10] for o in dumped["task_orders"]])
        np.testing.assert_array_equal(p.stream.chunks.reshape(-1), flat[:p.stream.chunks.size])
        assert p.stream.num_chunks == flat.size // 300 == 19


def test_first_per_class_keeps_dataset_order():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    np.testing.assert_array_equal(release_stream.first_per_class(labels, 2), [0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="fewer than"):
        release_stream.first_per_class(labels, 4)


@pytest.mark.parametrize("overrides,message", [
    (dict(seed=0), "unseeded for seed 0"),
    (dict(seed=1, noise=dict(kind="superclass", rate=0.4)), "not reproduced"),
])
def test_release_stream_refuses_what_the_release_cannot_pair(overrides, message):
    c = _fashion_config(1)
    c.seed = overrides.get("seed", 1)
    if "noise" in overrides:
        c.noise.kind = overrides["noise"]["kind"]
    with pytest.raises(configlib.ConfigError, match=message):
        configlib.validate(c)
    with pytest.raises(ValueError, match="unseeded|not reproduced"):
        release_stream.noise_and_task_orders(c.seed, np.arange(10) % 2, c.noise.kind, 0.4, 2, [[0, 1]])


def test_unknown_stream_is_refused():
    c = _fashion_config(1)
    c.dataset.stream = "pytorch"
    with pytest.raises(configlib.ConfigError, match="dataset.stream='pytorch' is unknown"):
        configlib.validate(c)
