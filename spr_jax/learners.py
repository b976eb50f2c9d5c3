"""The learner a run drives chunk segment by chunk segment: one protocol, SPR's replay and the online
baselines implementing it, so the run's loop (run_loop.py) has no branch on the protocol.

A learner is built at the edge from the run's settings and data, then:
- `warm_up(piece)`: compiles its programs for segments of `piece` chunks ahead of time (run in a background
  thread while the experts train, warm_up.py; the same programs, so no result changes);
- `init_state()`: the state of chunk 0 (a pytree, checkpointed as it is);
- `run_segment(state, chunk_indices, clean_p, keep, active)`: the chunks of one segment (padded to its
  fixed length, `active` marking the real ones), returning the new state and per-chunk metrics (host arrays);
- `check_segment(state, metrics, n, start, end, keep)`: raises before anything of the segment is written if it
  left an unusable state (see run_checks; `keep`: the filter's decisions for every chunk);
- `evaluate(state, task)`: metrics.jsonl's evaluation record after `task`.
A new protocol is one more class here.
"""
from typing import Protocol

import jax
import numpy as np

from spr_jax import compilation
from spr_jax import evaluate as evaluate_lib
from spr_jax import online
from spr_jax import online_methods
from spr_jax import replay_phase
from spr_jax import rng
from spr_jax import run_checks
from spr_jax import segment_scan


class Learner(Protocol):
    def warm_up(self, piece: int) -> None: ...

    def init_state(self): ...

    def run_segment(self, state, chunk_indices, clean_p, keep, active): ...

    def check_segment(self, state, metrics: dict, n: int, start: int, end: int, keep) -> None: ...

    def evaluate(self, state, task: int) -> dict: ...


class _Common:
    def __init__(self, s, prepared, data, test_images, names: dict):
        """names: the config values the checks' messages quote ({"ssl.lr": ..., "buffer.policy": ...})."""
        self.s, self.prepared, self.data, self.test_images, self.names = s, prepared, data, test_images, names
        self.meta = None  # L2R's clean meta set (eval.loss=l2r): training samples with their true labels
        if s.eval.l2r:
            self.meta = online_methods.meta_set(prepared.dataset.train.labels, s.eval.l2r_meta_per_class, s.seed)

    def _evaluation_inputs(self) -> dict:
        p = self.prepared
        return dict(test_images=self.test_images, test_labels=p.dataset.test.labels, episodes=p.episodes,
                    num_classes=p.num_classes, noise_known=p.noisy.known)

    def _segment(self, run_chunks, state, *xs):
        """run_chunks(state, chunk_indices, clean_p, keep, active) -> (state, chunk outputs), and the segment's
        metrics counted on the host against the memory the segment started from."""
        before = jax.device_get(segment_scan.memory_view(state.buffer))  # (the state is donated)
        state, out = run_chunks(state, *xs)
        return state, segment_scan.segment_metrics(out, before, xs[-1], self.prepared.num_classes)


class ReplayLearner(_Common):
    """SPR's protocol: self-supervised replay of the base on chunks and the purified memory, evaluations
    fine-tuning a copy of the base on the memory (replay_phase, evaluate)."""

    def __init__(self, s, *args, **kwargs):
        super().__init__(s, *args, **kwargs)
        if s.replay.data_parallel > 1:  # the data, replicated over the local devices (and the state below)
            self.data = replay_phase.replicate(self.data, s.replay.data_parallel)

    def warm_up(self, piece):
        """The replay segment's and the first evaluation's programs (on one device; with data parallelism they
        compile when first called)."""
        s = self.s
        if s.replay.data_parallel > 1:
            return
        self.init_state()  # (made and discarded, so that its init program is compiled too)
        state = jax.eval_shape(self.init_state)  # (weak types as the replay's own call has them)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.data)
        with compilation.matmul_precision(s.precision):
            replay_phase.warm_up(s.model, s.replay, state, abstract, self.prepared.stream.chunk_size, piece)
        evaluate_lib.warm_up(s.eval, state.base, s.buffer_size, self.test_images, abstract.images)

    def init_state(self):
        s, p = self.s, self.prepared
        state = replay_phase.init_state(s.model, s.seed, p.dataset.train.images.shape[1:], s.buffer_size,
                                        p.num_classes, s.replay.policy)
        return replay_phase.replicate(state, s.replay.data_parallel) if s.replay.data_parallel > 1 else state

    def run_segment(self, state, chunk_indices, clean_p, keep, active):
        return self._segment(lambda st, *xs: replay_phase.run_chunks(self.s.model, self.s.replay, st, self.data, *xs),
                             state, chunk_indices, clean_p, keep, active)

    def check_segment(self, state, metrics, n, start, end, keep):
        run_checks.check_replay(self.names, self.s, state, metrics, n, start, self.prepared.stream, keep, end)

    def evaluate(self, state, task):
        return evaluate_lib.evaluation_record(
            self.s.eval, base=state.base, buffer=state.buffer, train_images=self.data.images,
            key=rng.chunk_key(self.s.seed, rng.EVAL, task), after_task=task, chunks_processed=int(state.chunk),
            meta=self._meta_images(), **self._evaluation_inputs())

    def _meta_images(self):
        if self.meta is None:
            return None
        images = self.prepared.dataset.train.images[np.asarray(self.meta.index)]
        return jax.numpy.asarray(images), self.meta.label


class OnlineLearner(_Common):
    """The online baselines (config.protocol = "online"): a supervised classifier trained on the stream as it
    arrives, with or without replay from a memory (online.py)."""

    def warm_up(self, piece):
        pass  # its programs compile when first called

    def init_state(self):
        return online.init_state(self.s.online, self.s.seed, self.prepared.dataset.train.images.shape[1:],
                                 self.s.buffer_size, self.meta, noisy_labels=self.data.noisy)

    def run_segment(self, state, chunk_indices, clean_p, keep, active):
        return self._segment(lambda st, *xs: online.run_chunks(self.s.online, st, self.data, *xs),
                             state, chunk_indices, clean_p, keep, active)

    def check_segment(self, state, metrics, n, start, end, keep):
        run_checks.check_online(self.names, state, metrics, n, start, end)  # (its memory takes every sample)

    def evaluate(self, state, task):
        return online.evaluation_record(self.s.online, state, after_task=task,
                                        test_batch_size=self.s.eval.test_batch_size, **self._evaluation_inputs())


def build(s, prepared, data, test_images, names: dict) -> Learner:
    """The learner of a run's settings."""
    cls = OnlineLearner if s.online is not None else ReplayLearner
    return cls(s, prepared, data, test_images, names)
