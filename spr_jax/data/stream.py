"""Episodes -> the noisy stream, cut into chunks of D samples (docs/algorithm.md sections 1-2).

Task t holds every training sample whose NOISY label is in task t's classes, shuffled by the seed. The
stream is the tasks in order, read in batches of `batch` samples; a task's last partial batch is dropped.
The delayed buffer is not emptied at task boundaries, so the stream is simply cut into chunks of D
consecutive samples (a chunk may span two tasks) and a final partial chunk is never processed.

Evaluation happens at every task boundary, before the first batch of the next task: at that point exactly
floor(samples streamed so far / D) chunks have been processed, because a chunk is processed the moment the
delayed buffer fills. A chunk that spans a boundary is therefore processed after the evaluation of the
task it started in, and belongs (`chunk_task`) to the task of its last sample, during which it is
processed. The last evaluation is after the whole stream.

Everything is fixed-shape index arrays into the training arrays, so the replay loop can run under jit and
scan.
"""
import dataclasses

import numpy as np

_STREAM_SEED = 102
_SUBSET_SEED = 103


@dataclasses.dataclass(frozen=True)
class Stream:
    chunks: np.ndarray  # int32 [num_chunks, D]: training-set indices, in stream order
    chunk_task: np.ndarray  # int32 [num_chunks]: task during which the chunk is processed
    eval_points: tuple  # chunks processed at each evaluation: one per task (boundaries, then the end)
    task_available: np.ndarray  # int [T]: samples whose noisy label is in the task
    task_streamed: np.ndarray  # int [T]: samples of the task that entered the stream
    dropped_tail: int  # samples of the final partial chunk, never processed

    @property
    def num_chunks(self) -> int:
        return int(self.chunks.shape[0])

    @property
    def chunk_size(self) -> int:
        return int(self.chunks.shape[1])

    @property
    def num_tasks(self) -> int:
        return len(self.eval_points)


def validate_episodes(episodes, num_classes: int) -> list:
    """Returns the episodes as lists of ints, or raises ValueError naming the fix."""
    if len(episodes) == 0:
        raise ValueError("episodes is empty: give at least one task, e.g. --config.episodes='[[0,1],[2,3]]'")
    seen = {}
    out = []
    for t, task in enumerate(episodes):
        task = [int(k) for k in task]
        if not task:
            raise ValueError(f"task {t} of the episodes is empty; every task needs at least one class id")
        for k in task:
            if not 0 <= k < num_classes:
                raise ValueError(f"class id {k} in task {t} is out of range: this dataset has classes "
                                 f"0..{num_classes - 1}")
            if k in seen:
                raise ValueError(f"class {k} is in task {seen[k]} and task {t}; a class may be in one task only")
            seen[k] = t
        out.append(task)
    return out


def build_stream(seed: int, noisy_labels: np.ndarray, episodes, num_classes: int, *,
                 chunk_size: int, batch: int = 10) -> Stream:
    """spr_jax's own stream: each task's members (ascending index) shuffled by a numpy generator of the seed."""
    episodes = validate_episodes(episodes, num_classes)
    noisy_labels = np.asarray(noisy_labels)
    rng = np.random.default_rng([seed, _STREAM_SEED])
    orders = []
    for t, task in enumerate(episodes):
        members = np.flatnonzero(np.isin(noisy_labels, task))
        need_members(t, task, members.size)
        orders.append(members[rng.permutation(members.size)])
    return chunk_stream(orders, chunk_size=chunk_size, batch=batch)


def need_members(t: int, task, size: int) -> None:
    if size == 0:
        raise ValueError(f"task {t} (classes {task}) has no training sample; check the episodes and the "
                         f"dataset's classes")


def chunk_stream(task_orders, *, chunk_size: int, batch: int = 10) -> Stream:
    """The stream from each task's samples in the order they arrive: a task's last partial batch dropped,
    the rest cut into chunks of `chunk_size` (the final partial chunk never processed)."""
    order, available, streamed = [], [], []
    for members in task_orders:
        members = np.asarray(members)
        kept = members.size - members.size % batch  # drop the task's last partial batch
        order.append(members[:kept])
        available.append(members.size)
        streamed.append(kept)
    order = np.concatenate(order).astype(np.int32)
    num_chunks = order.size // chunk_size
    if num_chunks == 0:
        raise ValueError(f"the stream has {order.size} samples, fewer than one chunk of D={chunk_size}; "
                         f"lower config.stream.delayed_buffer_size or use more data")
    chunks = order[:num_chunks * chunk_size].reshape(num_chunks, chunk_size)
    ends = np.cumsum(streamed)  # stream position after each task
    # Task of each chunk's last sample: the first task whose end lies at or after that position.
    last_pos = (np.arange(num_chunks) + 1) * chunk_size
    chunk_task = np.searchsorted(ends, last_pos, side="left").astype(np.int32)
    eval_points = tuple(int(e) // chunk_size for e in ends[:-1]) + (num_chunks,)
    return Stream(chunks=chunks, chunk_task=chunk_task, eval_points=eval_points,
                  task_available=np.asarray(available), task_streamed=np.asarray(streamed),
                  dropped_tail=int(order.size - num_chunks * chunk_size))


def class_balanced_subset(seed: int, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Sorted indices of `per_class` seeded random samples of each class (taken before any noise)."""
    rng = np.random.default_rng([seed, _SUBSET_SEED])
    return per_class_subset(labels, per_class, lambda members: rng.choice(members, size=per_class, replace=False))


def per_class_subset(labels: np.ndarray, per_class: int, pick) -> np.ndarray:
    """Sorted indices of `pick(members)` for each class's members (ascending class id), after checking each
    class has `per_class` samples."""
    labels = np.asarray(labels)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(f"class {c} has only {members.size} training samples, fewer than "
                             f"config.dataset.subset_per_class={per_class}; lower it or set it to 0 (all)")
        picked.append(pick(members))
    return np.sort(np.concatenate(picked))  # dataset order is kept: symmetric noise takes the first samples
