"""From a config to the run's fixed inputs: data, noisy labels and the chunked stream (host side, once)."""
import dataclasses

import numpy as np

from spr_jax.errors import ConfigError
from spr_jax.data import noise as noise_lib
from spr_jax.data import release_stream
from spr_jax.data import sources
from spr_jax.data import stream as stream_lib


@dataclasses.dataclass(frozen=True)
class Prepared:
    dataset: sources.Dataset  # training split already reduced to the subset, if one was asked for
    noisy: noise_lib.NoisyLabels
    stream: stream_lib.Stream
    episodes: list  # list of class-id lists

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes


def resolve_episodes(config, dataset: sources.Dataset) -> list:
    if config.superclass_episodes:
        if dataset.superclass_of is None:
            raise ConfigError(f"config.superclass_episodes needs a dataset with superclasses (cifar100); "
                              f"{dataset.name} has none")
        return [np.flatnonzero(dataset.superclass_of == k).tolist()
                for k in range(int(dataset.superclass_of.max()) + 1)]
    return [list(task) for task in config.episodes]


def prepare(config) -> Prepared:
    """The run's fixed inputs of a config that configlib.validate accepted (run_setup validates it first)."""
    dataset = sources.load_dataset(config.dataset.name, data_dir=config.dataset.data_dir,
                                   source=config.dataset.source)
    release = config.dataset.stream == release_stream.NAME
    if config.dataset.subset_per_class:
        labels, per_class = dataset.train.labels, config.dataset.subset_per_class
        keep = (release_stream.first_per_class(labels, per_class) if release
                else stream_lib.class_balanced_subset(config.seed, labels, per_class))
        train = sources.Split(images=dataset.train.images[keep], labels=dataset.train.labels[keep])
        dataset = dataclasses.replace(dataset, train=train)
    if config.noise.kind == "real" and not dataset.real_noise:
        raise ConfigError(
            f"config.noise.kind='real' but {dataset.name} has no real label noise (its labels are clean), so the "
            f"run would be noise-free; use --config.noise.kind=symmetric (or asymmetric) with a rate")
    episodes = resolve_episodes(config, dataset)
    stream_lib.validate_episodes(episodes, dataset.num_classes)  # before any work on noise
    chunking = dict(chunk_size=config.stream.delayed_buffer_size, batch=config.stream.batch)
    if release:
        noisy, orders = release_stream.noise_and_task_orders(
            config.seed, dataset.train.labels, config.noise.kind, config.noise.rate, dataset.num_classes,
            episodes, dataset=dataset.name)
        for t, (task, order) in enumerate(zip(episodes, orders)):
            stream_lib.need_members(t, task, order.size)
        stream = stream_lib.chunk_stream(orders, **chunking)
    else:
        noisy = noise_lib.apply_noise(config.seed, dataset.train.labels, config.noise.kind, config.noise.rate,
                                      dataset.num_classes, dataset=dataset.name, superclass_of=dataset.superclass_of)
        stream = stream_lib.build_stream(config.seed, noisy.noisy, episodes, dataset.num_classes, **chunking)
    return Prepared(dataset=dataset, noisy=noisy, stream=stream, episodes=episodes)


def stream_summary(p: Prepared) -> dict:
    """A readable, JSON-able account of the noisy stream."""
    s, n = p.stream, p.noisy
    streamed = s.chunks.reshape(-1)
    tasks = []
    for t, task in enumerate(p.episodes):
        in_task = streamed[np.isin(n.noisy[streamed], task)]
        tasks.append({
            "task": t, "classes": task, "available": int(s.task_available[t]),
            "streamed": int(s.task_streamed[t]),
            "dropped_partial_batch": int(s.task_available[t] - s.task_streamed[t]),
            "chunks_processed_in_task": int((s.chunk_task == t).sum()),
            "evaluated_after_chunks": int(s.eval_points[t]),
            "noise_rate_in_chunks": float(n.corrupt[in_task].mean()) if n.known and in_task.size else None,
        })
    per_class = noise_lib.realised_rates(n, p.num_classes)
    return {
        "dataset": p.dataset.name,
        "train_images": int(p.dataset.train.labels.size),
        "test_images": int(p.dataset.test.labels.size),
        "image_shape": list(p.dataset.train.images.shape[1:]),
        "num_classes": p.num_classes,
        "noise_known": n.known,
        "noise_rate_overall": float(n.corrupt.mean()) if n.known else None,
        "noise_rate_per_class": {p.dataset.class_names[c]: v["rate"] for c, v in per_class.items()}
        if n.known else None,
        "num_tasks": len(p.episodes),
        "chunk_size": s.chunk_size,
        "num_chunks": s.num_chunks,
        "stream_samples": int(s.task_available.sum()),  # training samples whose noisy label is in a task
        "samples_in_chunks": int(streamed.size),
        "noise_rate_in_chunks": float(n.corrupt[streamed].mean()) if n.known else None,
        "dropped_final_partial_chunk": s.dropped_tail,
        "dropped_partial_batches": int((s.task_available - s.task_streamed).sum()),
        "tasks": tasks,
    }


def format_stream_summary(d: dict) -> str:
    lines = [f"{d['dataset']}: {d['train_images']} training / {d['test_images']} test images "
             f"{tuple(d['image_shape'])}, {d['num_classes']} classes",
             f"stream: {d['stream_samples']} noisy samples in {d['num_tasks']} tasks -> {d['num_chunks']} chunks "
             f"of {d['chunk_size']} ({d['samples_in_chunks']} samples; dropped {d['dropped_partial_batches']} in "
             f"tasks' partial batches and {d['dropped_final_partial_chunk']} in the final partial chunk)"]
    if d["noise_known"]:
        lines.append(f"realised noise: {100 * d['noise_rate_overall']:.1f}% of the training set, "
                     f"{100 * d['noise_rate_in_chunks']:.1f}% of the streamed samples")
        lines.append("  per class: " + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in d["noise_rate_per_class"].items()))
    else:
        lines.append("noise: real (truth unknown)")
    for t in d["tasks"]:
        rate = "" if t["noise_rate_in_chunks"] is None else f", noise {100 * t['noise_rate_in_chunks']:.1f}%"
        lines.append(f"  task {t['task']}: classes {t['classes']}, {t['streamed']} streamed "
                     f"({t['dropped_partial_batch']} dropped){rate}, evaluated after chunk {t['evaluated_after_chunks']}")
    return "\n".join(lines)
