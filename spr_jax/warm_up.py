"""The background compile: a learner's programs compiled ahead of time, in a thread, while the experts train
(config.cache.warm_up)."""
import threading
from typing import Callable


class BackgroundCompile:
    """Runs `compile_ahead()` (a learner's `warm_up`) in a thread while the experts train.

    Started once the expert program is traced, while XLA compiles it: tracing is Python and holds one core,
    XLA's compilation and a training step leave part of the cores idle. Ahead-of-time compilation fills the same
    in-process cache (and the persistent one) that the learner's own jit calls look up, so they find their
    programs compiled. Result-neutral: the same programs; if the warm-up fails or misses (e.g. a first
    evaluation on a buffer that is not yet full), a program compiles when it is first called, as it would
    anyway.
    """

    def __init__(self, compile_ahead: Callable[[], None]):
        self.compile_ahead = compile_ahead
        self.thread = None

    def start(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="spr_jax-warm-up", daemon=True)
            self.thread.start()

    def join(self):
        if self.thread is not None:
            self.thread.join()

    def _work(self):
        try:
            self.compile_ahead()
        except Exception:  # noqa: BLE001 - a failed warm-up only means the programs compile when first called
            pass
