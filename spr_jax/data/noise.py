"""Label noise applied once to the whole training set (docs/algorithm.md section 1), a pure function of its inputs.

Kinds:
- "none": labels unchanged.
- "symmetric": for every class c the FIRST round(n_c * r) samples of c (dataset order) get a label drawn
  uniformly from the other classes of the dataset.
- "superclass": as symmetric, but the new label is drawn from the other classes of c's superclass
  (cifar100: the other 4 fine classes of the same coarse class).
- "asymmetric": for each published pair s -> t, int(n_s * r) samples of class s chosen at random get label
  t. Pairs are read from the ORIGINAL labels, so 5 <-> 6 is a swap.
- "real": the labels are already noisy (webvision, cifar-N); truth unknown, nothing is corrupted here.

Rounding follows Python's round (half to even), as the reference's does.
"""
import dataclasses

import numpy as np

# A numpy seed sequence of its own, so noise draws never coincide with the stream's shuffles.
_NOISE_STREAM = 101

KINDS = ("none", "symmetric", "asymmetric", "superclass", "real")

# The published asymmetric maps (source class -> target class).
ASYMMETRIC_MAPS = {
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    # truck -> automobile, bird -> airplane, cat -> dog, dog -> cat, deer -> horse
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
}


@dataclasses.dataclass(frozen=True)
class NoisyLabels:
    noisy: np.ndarray  # int32 [N]: the label the learner sees
    true: np.ndarray  # int32 [N]: the clean label (for "real" noise: the given label, truth unknown)
    corrupt: np.ndarray  # bool [N]: noisy != true (all False for "real": unknown)
    known: bool  # whether `corrupt` is meaningful (False for real noise)


def apply_noise(seed: int, labels: np.ndarray, kind: str, rate: float, num_classes: int,
                dataset: str = "", superclass_of: np.ndarray | None = None) -> NoisyLabels:
    """Corrupts `labels` as docs/algorithm.md section 1 describes; deterministic in (seed, labels, kind, rate)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {KINDS}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"noise rate {rate} is outside [0, 1]; pass e.g. --config.noise.rate=0.4")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    true = labels.astype(np.int32)
    noisy = true.copy()
    rng = np.random.default_rng([seed, _NOISE_STREAM])

    if kind == "symmetric":
        groups = [np.arange(num_classes)] * num_classes
        _symmetric(rng, true, noisy, rate, num_classes, groups)
    elif kind == "superclass":
        if superclass_of is None:
            raise ValueError(f"superclass noise needs a dataset with superclasses (cifar100); "
                             f"{dataset or 'this dataset'} has none. Use --config.noise.kind=symmetric")
        superclass_of = np.asarray(superclass_of)
        groups = [np.flatnonzero(superclass_of == superclass_of[c]) for c in range(num_classes)]
        _symmetric(rng, true, noisy, rate, num_classes, groups)
    elif kind == "asymmetric":
        if dataset not in ASYMMETRIC_MAPS:
            raise ValueError(f"no published asymmetric noise map for dataset {dataset!r} (maps exist for "
                             f"{sorted(ASYMMETRIC_MAPS)}); use --config.noise.kind=symmetric")
        for source, target in ASYMMETRIC_MAPS[dataset].items():
            members = np.flatnonzero(true == source)  # from the ORIGINAL labels
            count = int(len(members) * rate)
            noisy[rng.choice(members, size=count, replace=False)] = target

    known = kind != "real"
    corrupt = (noisy != true) if known else np.zeros_like(true, dtype=bool)
    return NoisyLabels(noisy=noisy, true=true, corrupt=corrupt, known=known)


def _symmetric(rng, true, noisy, rate, num_classes, groups):
    """The first round(n_c * r) samples of each class c get a uniform label among groups[c] minus c."""
    for c in range(num_classes):
        members = np.flatnonzero(true == c)
        count = round(len(members) * rate)
        others = groups[c][groups[c] != c]
        if count == 0:
            continue
        if others.size == 0:
            raise ValueError(f"class {c} has no other class in its noise group to be flipped to")
        noisy[members[:count]] = rng.choice(others, size=count)


def realised_rates(noisy: NoisyLabels, num_classes: int) -> dict:
    """Per true class: samples and the share whose label was changed (what a summary reports)."""
    out = {}
    for c in range(num_classes):
        members = noisy.true == c
        n = int(members.sum())
        out[c] = {"n": n, "corrupt": int(noisy.corrupt[members].sum()),
                  "rate": float(noisy.corrupt[members].mean()) if n else 0.0}
    return out
