"""The original release's noisy stream, draw for draw (config.dataset.stream = "release").

spr_jax's own stream (stream.py, noise.py) draws its noise and task orders from numpy generators of the seed,
so "seed 1" is different data there than in the PyTorch release. Under this option a seed gives the same
training subset, the same noisy samples and labels and the same stream order as the release run with that
seed, so that runs of the two programs pair seed by seed (docs/algorithm.md, "Pairing runs with the release").

How the release draws them (its data code, read at commit 9ef8fb1), reproduced here with the same generators:
- its main program seeds Python's `random`, numpy's global generator and torch with the seed, and only for a
  seed other than 0 (0 leaves them unseeded: no reproducible stream, so seed 0 is refused here);
- symmetric noise: for each class c = 0, 1, ... in turn, the first round(n_c * r) samples of c (dataset
  order) each get `random.choice` of the other classes in ascending order;
- asymmetric noise: for each published pair s -> t in its listed order, numpy's global generator picks
  int(r * n_s) samples of s without replacement (`np.random.choice`) and relabels them t (Python's `random`
  is not used, so the stream's shuffles start from the freshly seeded state);
- each task is the concatenation, in the task's class order, of the samples whose noisy label is that class
  (ascending index), shuffled with `random.shuffle` of its positions; the same `random` state runs on from
  the noise through the tasks in order.
- the release trains on a whole dataset; a config's `dataset.subset_per_class = N` under this option keeps the
  first N samples of each class in dataset order (no draw), which is what the reference harness feeds the
  release (benchmarks/release_reference/).
Python's `random.choice` and `random.shuffle` and numpy's legacy `RandomState` give the same draws on every
Python and numpy version this package supports (both are documented as stable for a given seed).
"""
import random

import numpy as np

from spr_jax.data import noise as noise_lib
from spr_jax.data import stream as stream_lib

NAME = "release"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Sorted indices of the first `per_class` samples of each class, in dataset order."""
    return stream_lib.per_class_subset(labels, per_class, lambda members: members[:per_class])


def noise_and_task_orders(seed: int, labels: np.ndarray, kind: str, rate: float, num_classes: int,
                          episodes, dataset: str = "") -> tuple:
    """(NoisyLabels, each task's training indices in stream order) as the release draws them for `seed`."""
    if seed == 0:
        raise ValueError("config.seed=0 with config.dataset.stream='release': the release leaves its generators "
                         "unseeded for seed 0, so no run of it can be paired; use a seed >= 1")
    if kind not in ("none", "symmetric", "asymmetric", "real"):
        raise ValueError(f"config.noise.kind={kind!r} is not reproduced under config.dataset.stream='release' "
                         f"(symmetric, asymmetric, real and none are); use the default stream "
                         f"(--config.dataset.stream=spr_jax)")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"noise rate {rate} is outside [0, 1]; pass e.g. --config.noise.rate=0.4")
    true = np.asarray(labels).astype(np.int32)
    noisy = true.copy()
    py_random = random.Random(seed)
    if kind == "symmetric":
        for c in range(num_classes):
            others = [k for k in range(num_classes) if k != c]
            members = np.flatnonzero(true == c)
            for i in members[:round(len(members) * rate)]:
                noisy[i] = py_random.choice(others)
    elif kind == "asymmetric":
        if dataset not in noise_lib.ASYMMETRIC_MAPS:
            raise ValueError(f"no published asymmetric noise map for dataset {dataset!r} (maps exist for "
                             f"{sorted(noise_lib.ASYMMETRIC_MAPS)}); use --config.noise.kind=symmetric")
        np_random = np.random.RandomState(seed)
        for source, target in noise_lib.ASYMMETRIC_MAPS[dataset].items():
            members = np.flatnonzero(true == source)  # from the ORIGINAL labels
            noisy[np_random.choice(members, int(rate * members.size), replace=False)] = target
    known = kind != "real"
    noisy_labels = noise_lib.NoisyLabels(noisy=noisy, true=true, known=known,
                                         corrupt=(noisy != true) if known else np.zeros_like(true, dtype=bool))
    orders = []
    for task in episodes:
        members = np.concatenate([np.flatnonzero(noisy == k) for k in task])
        positions = list(range(members.size))
        py_random.shuffle(positions)
        orders.append(members[np.asarray(positions, dtype=np.int64)])
    return noisy_labels, orders
