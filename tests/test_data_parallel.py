"""config.base.data_parallel: self-replay batches split over 4 simulated devices give the same run as one
device (GSPMD keeps gradients and BatchNorm statistics global, so only float summation order differs)."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from configs import tiny
from spr_jax import replay_phase, run_loop, run_setup
out = {}
for dp in (False, True):
    c = tiny.get_config(); c.base.data_parallel = dp
    c.filter.kind, c.buffer.policy = "none", "class_balanced"
    p, s = run_setup.prepare(c)
    data = replay_phase.TrainData(jnp.asarray(p.dataset.train.images), jnp.asarray(p.noisy.noisy), jnp.asarray(p.noisy.corrupt))
    state = replay_phase.init_state(s.model, c.seed, p.dataset.train.images.shape[1:], c.buffer.size, p.num_classes,
                                    s.replay.policy)
    if s.replay.data_parallel > 1:
        state = replay_phase.replicate(state, s.replay.data_parallel)
        data = replay_phase.replicate(data, s.replay.data_parallel)
    n = 3  # the buffer (P = D) is full after chunk 0, so chunks 1-2 run the mixed batches
    chunks = p.stream.chunks[:n]
    state, metrics = replay_phase.run_chunks(s.model, s.replay, state, data, chunks, np.ones(chunks.shape, np.float32),
                                             np.ones(chunks.shape, bool), np.ones(n, bool))
    out[str(dp)] = {"devices": s.replay.data_parallel, "loss": np.asarray(metrics["base_loss"]).tolist(),
                    "mixed": np.asarray(metrics["replayed_buffer"]).tolist(),
                    "buffer": np.asarray(state.buffer.index).tolist()}
print(json.dumps(out))
'''


def test_data_parallel_self_replay_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    one, four = out["False"], out["True"]
    assert one["devices"] == 1 and four["devices"] == 4
    assert four["mixed"] == one["mixed"] == [False, True, True]
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-4)
    assert four["buffer"] == one["buffer"]
