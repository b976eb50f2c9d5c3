"""Runs the original SPR release (built by release_reference.py in a scratch folder) on Fashion-MNIST and dumps
what spr_jax's diagnostics need to compare the two programs on equal terms.

This file runs under the release's own interpreter and pins (Python 3.8, torch 1.7.0, kornia 0.4.1, networkx
2.6.3), from inside the release's source folder; it imports the release's modules and wraps a few of their
methods to record what they compute. No code of the release is copied here. Python 3.8 syntax only.

What it does, in the release's own order (its main program, without the interactive prompt):
  1. writes the Fashion-MNIST subset (the first N training images of each class, in dataset order, and the
     whole test set) where torchvision's MNIST class reads its processed files, so the release's `mnist`
     dataset IS that subset;
  2. seeds Python's `random`, numpy and torch with the seed (as the release does for a non-zero seed), builds
     the release's data scheduler (noise with `random.choice`, each task shuffled with `random.shuffle`);
  3. dumps the stream: every training index's noisy and true label, and each task's order (before the
     drop of a task's last partial batch);
  4. unless --stream-only: trains the release's SPR model on the stream, recording per chunk the filter's
     kept samples (training index, clean_p, noisy flag), the purified buffer's admissions and evictions, its
     purity, the time of each part, and every evaluation's accuracy.

Indices are positions in the subset (0 .. 10 N - 1), which is how spr_jax numbers the training set of a
config with `dataset.subset_per_class = N`.
"""
import argparse
import bisect
import gzip
import json
import os
import random
import sys
import time

import numpy as np
import torch


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels, per_class):
    """Sorted indices of the first `per_class` samples of each class (all when per_class is 0)."""
    if not per_class:
        return np.arange(labels.size)
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def write_processed(data_root, fashion_dir, per_class):
    """The subset as torchvision 0.8's processed MNIST files (so the release's dataset class reads it)."""
    train_x = read_idx(os.path.join(fashion_dir, "train-images-idx3-ubyte.gz"))
    train_y = read_idx(os.path.join(fashion_dir, "train-labels-idx1-ubyte.gz"))
    test_x = read_idx(os.path.join(fashion_dir, "t10k-images-idx3-ubyte.gz"))
    test_y = read_idx(os.path.join(fashion_dir, "t10k-labels-idx1-ubyte.gz"))
    keep = first_per_class(train_y, per_class)
    folder = os.path.join(data_root, "mnist", "MNIST", "processed")
    os.makedirs(folder, exist_ok=True)
    torch.save((torch.from_numpy(train_x[keep].copy()), torch.from_numpy(train_y[keep].astype(np.int64))),
               os.path.join(folder, "training.pt"))
    torch.save((torch.from_numpy(test_x.copy()), torch.from_numpy(test_y.astype(np.int64))),
               os.path.join(folder, "test.pt"))
    return keep


def dump_stream(scheduler):
    """Noisy / true labels of every training sample and each task's order, as the release built them."""
    dataset = scheduler.datasets["mnist"]
    noisy = [int(v) for v in dataset.targets]
    true = [int(v) for v in dataset.org_targets]
    tasks = []
    for task in scheduler.task_datasets:  # Subset(ConcatDataset(class subsets), shuffled positions)
        concat = task.dataset
        order = []
        for pos in task.indices:
            part = bisect.bisect_right(concat.cumulative_sizes, pos)
            offset = concat.cumulative_sizes[part - 1] if part else 0
            order.append(int(concat.datasets[part].indices[pos - offset]))
        tasks.append(order)
    return {"noisy_labels": noisy, "true_labels": true, "task_orders": tasks}


class Recorder:
    """Wraps the release's SPR methods to record each chunk's filter output and buffer changes."""

    def __init__(self, model, features=False):
        self.model = model
        self.chunks = []
        self.features = [] if features else None  # per chunk: the expert's L2-normalised features [D, 256]
        self.times = {"expert": 0.0, "base": 0.0, "filter": 0.0, "buffer": 0.0, "evaluation": 0.0}
        self._current = None
        self._wrap("train_self_expert", "expert")
        self._wrap("train_self_base", "base")
        self._wrap_filter()
        self._wrap_buffer()

    def _wrap(self, name, label):
        original = getattr(self.model, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.times[label] += time.perf_counter() - start
            if self._current is not None:
                self._current[label + "_s"] = time.perf_counter() - start
            return out
        setattr(self.model, name, timed)

    def _buffer_members(self):
        buf = self.model.purified_buffer
        if len(buf) == 0:
            return {}
        idxs = buf.get("idxs").tolist()
        corrupt = buf.get("corrupts").tolist()
        return {int(i): bool(c) for i, c in zip(idxs, corrupt)}

    def _wrap_filter(self):
        original = self.model.cluster_and_sample

        def recorded():
            start = time.perf_counter()
            clean_idx, clean_p = original()
            elapsed = time.perf_counter() - start
            self.times["filter"] += elapsed
            delay = self.model.delay_buffer
            if self.features is not None:  # what the filter read (the expert in eval mode, as cluster_and_sample)
                with torch.no_grad():
                    self.model.expert.eval()
                    f = torch.nn.functional.normalize(self.model.expert(delay.get("imgs")), dim=1)
                self.features.append(f.numpy().astype(np.float32))
            idxs = delay.get("idxs").tolist()
            corrupt = delay.get("corrupts").tolist()
            cats = delay.get("cats").tolist()
            self._current.update({
                "chunk": len(self.chunks),
                "indices": [int(i) for i in idxs],
                "noisy": [bool(c) for c in corrupt],
                "labels": [int(y) for y in cats],
                "kept_positions": [int(i) for i in clean_idx],
                "kept_clean_p": [float(p) for p in clean_p.tolist()],
                "filter_s": elapsed,
            })
            return clean_idx, clean_p
        self.model.cluster_and_sample = recorded

    def _wrap_buffer(self):
        original = self.model.update_purified_buffer

        def recorded(clean_idx, clean_p, step):
            before = self._buffer_members()
            start = time.perf_counter()
            out = original(clean_idx, clean_p, step)
            self.times["buffer"] += time.perf_counter() - start
            after = self._buffer_members()
            admitted = [i for i in after if i not in before]
            evicted = [i for i in before if i not in after]
            self._current.update({
                "admitted_noisy": sum(after[i] for i in admitted),
                "admitted_clean": sum(not after[i] for i in admitted),
                "evicted_noisy": sum(before[i] for i in evicted),
                "evicted_clean": sum(not before[i] for i in evicted),
                "buffer_size": len(after),
                "buffer_purity": (1.0 - sum(after.values()) / len(after)) if after else None,
                "buffer_clean_p": [float(p) for p in
                                   self.model.purified_buffer.get("clean_ps").tolist()],
                "buffer_noisy": [bool(after[i]) for i in
                                 self.model.purified_buffer.get("idxs").tolist()],
                "buffer_idxs": [int(i) for i in self.model.purified_buffer.get("idxs").tolist()],
            })
            self.chunks.append(self._current)
            self._current = {}
            return out
        self.model.update_purified_buffer = recorded

    def start(self):
        self._current = {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--subset-per-class", type=int, default=600)
    parser.add_argument("--noise-rate", type=float, default=0.4)
    parser.add_argument("--asymmetric", action="store_true")
    parser.add_argument("--expert-epochs", type=int, default=50)
    parser.add_argument("--base-epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="work", help="scratch folder for data and logs (inside the release)")
    parser.add_argument("--stream-only", action="store_true", help="dump the stream and stop")
    parser.add_argument("--features", default="", help="also write each chunk's expert features here (.npz)")
    parser.add_argument("--experts-only", action="store_true",
                        help="skip the base's training and the evaluations (the experts, filter and buffer only: "
                             "the filter's random draws then differ from a whole run's)")
    args = parser.parse_args()
    if args.seed == 0:
        sys.exit("seed 0: the release does not seed its generators for --random_seed 0; use a seed >= 1")

    sys.path.insert(0, os.getcwd())  # the release's modules, from its source folder
    import yaml
    from tensorboardX import SummaryWriter
    from data import DataScheduler
    from models.SPR import SPR
    from train import train_model

    torch.set_num_threads(args.threads)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the release moves each batch to the GPU by name

    data_root = os.path.abspath(os.path.join(args.work, "data_%d" % args.subset_per_class))
    subset = write_processed(data_root, args.fashion_dir, args.subset_per_class)

    config = yaml.load(open("configs/mnist_spr.yaml"), Loader=yaml.FullLoader)
    config["data_schedule"] = yaml.load(open("episodes/mnist-split_epc1_a.yaml"), Loader=yaml.FullLoader)
    config.update({
        "random_seed": args.seed, "data_root": data_root, "corruption_percent": args.noise_rate,
        "asymmetric_noise": args.asymmetric, "expert_train_epochs": args.expert_epochs,
        "base_train_epochs": args.base_epochs, "device": "cpu", "num_workers": 0, "eval_num_workers": 0,
    })
    # The release keys its expert cache by the log folder's grandparent; a fresh one per run means no reuse.
    config["log_dir"] = os.path.abspath(os.path.join(args.work, "runs", "seed%d_%d" % (args.seed, os.getpid()),
                                                     "log", "job"))
    os.makedirs(config["log_dir"], exist_ok=True)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    scheduler = DataScheduler(config)
    result = {"seed": args.seed, "subset_per_class": args.subset_per_class, "noise_rate": args.noise_rate,
              "asymmetric": args.asymmetric, "subset_source_indices": [int(i) for i in subset],
              "stream": dump_stream(scheduler),
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "numpy": np.__version__}}
    if not args.stream_only:
        import kornia
        import networkx
        result["versions"].update({"kornia": kornia.__version__, "networkx": networkx.__version__})
        accuracies = []
        original_add_scalar = SummaryWriter.add_scalar

        def add_scalar(self, tag, value, step=None, *a, **k):
            if tag.startswith("accuracy/"):
                accuracies.append({"tag": tag, "step": int(step), "value": float(value)})
            return original_add_scalar(self, tag, value, step, *a, **k)
        SummaryWriter.add_scalar = add_scalar

        writer = SummaryWriter(config["log_dir"])
        model = SPR(config, writer)
        model.to(config["device"])
        recorder = Recorder(model, features=bool(args.features))
        if args.experts_only:
            model.train_self_base = lambda *a, **k: None
        recorder.start()
        start = time.perf_counter()
        original_eval = scheduler.eval

        def timed_eval(*a, **k):
            if args.experts_only:
                return None
            t0 = time.perf_counter()
            out = original_eval(*a, **k)
            recorder.times["evaluation"] += time.perf_counter() - t0
            return out
        scheduler.eval = timed_eval
        train_model(config, model, scheduler, writer)
        result.update({"wall_s": time.perf_counter() - start, "times_s": recorder.times,
                       "chunks": recorder.chunks, "accuracies": accuracies, "experts_only": args.experts_only,
                       "final_accuracy": ([a["value"] for a in accuracies
                                           if a["tag"].endswith("/overall")] or [None])[-1]})
        if args.features:
            np.savez_compressed(args.features, features=np.stack(recorder.features),
                                indices=np.asarray([c["indices"] for c in recorder.chunks], np.int64))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
