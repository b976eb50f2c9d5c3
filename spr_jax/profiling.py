"""An optional jax.profiler trace of a run's first replay segments (config.logging.profile_segments).

The trace goes to WORKDIR/profile/plugins/profile/<time>/: `*.xplane.pb` for TensorBoard's profile plug-in
(`tensorboard --logdir WORKDIR/profile`, with tensorboard-plugin-profile installed) and `*.trace.json.gz`
for Perfetto or chrome://tracing. It covers the compiled replay steps of those segments (and an evaluation
that falls among them), so the expert phase, which can be long, is not in it. Tracing changes no result.
"""
import os

import jax


class SegmentProfiler:
    def __init__(self, workdir: str, segments: int):
        self.folder = os.path.join(workdir, "profile")
        self.left = max(0, int(segments))
        self.tracing = False

    def before_segment(self) -> None:
        if self.left > 0 and not self.tracing:
            jax.profiler.start_trace(self.folder)
            self.tracing = True

    def after_segment(self) -> None:
        if self.tracing:
            self.left -= 1
            if self.left == 0:
                self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
