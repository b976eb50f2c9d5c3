"""The background compile: the replay and evaluation programs compiled ahead of time, in a thread, while the
experts train (config.cache.warm_up)."""
import threading

import jax

from spr_jax import evaluate
from spr_jax import replay_phase
from spr_jax import settings as settings_lib


class BackgroundCompile:
    """Compiles the replay and evaluation programs in a thread while the experts train (`config.cache.warm_up`).

    Started once the expert program is traced, while XLA compiles it: tracing is Python and holds one core,
    XLA's compilation and a training step leave part of the cores idle. Ahead-of-time compilation fills the same
    in-process cache (and the persistent one) that the replay phase's and the first evaluation's jit calls
    look up, so they find their programs compiled. Result-neutral: the same programs; if the warm-up fails or
    misses (e.g. a first evaluation on a buffer that is not yet full), a program compiles when it is first
    called, as it would anyway. Only for the SPR protocol on one device, and only while experts train.
    """

    def __init__(self, s, prepared, data, test_images, piece: int):
        self.args = (s, prepared, data, test_images, piece)
        self.thread = None

    def start(self):
        s = self.args[0]
        if self.thread is None and s.online is None and s.replay.data_parallel == 1:
            self.thread = threading.Thread(target=self._work, name="spr_jax-warm-up", daemon=True)
            self.thread.start()

    def join(self):
        if self.thread is not None:
            self.thread.join()

    def _work(self):
        s, prepared, data, test_images, piece = self.args
        ds = prepared.dataset
        try:
            # The replay's initial state, made (and discarded) here so that its init program is compiled too.
            make = lambda: replay_phase.init_state(s.model, s.seed, ds.train.images.shape[1:], s.buffer_size,
                                                   prepared.num_classes, s.replay.policy)
            make()
            state = jax.eval_shape(make)  # (weak types as the replay's own call has them)
            abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)
            with settings_lib.matmul_precision(s):
                replay_phase.warm_up(s.model, s.replay, state, abstract, prepared.stream.chunk_size, piece)
            evaluate.warm_up(s.eval, state.base, s.buffer_size, test_images, abstract.images)
        except Exception:  # noqa: BLE001 - a failed warm-up only means the programs compile when first called
            pass
