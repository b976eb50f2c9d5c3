"""config.base.data_parallel: self-replay batches split over 4 simulated devices give the same run as one
device (GSPMD keeps gradients and BatchNorm statistics global, so only float summation order differs)."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import importlib.util, json, sys
import jax, jax.numpy as jnp, numpy as np
from spr_jax import episode, experiment, models, train
spec = importlib.util.spec_from_file_location("tiny", "configs/tiny.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
out = {}
for dp in (False, True):
    c = m.get_config(); c.base.data_parallel = dp; c.buffer.plain_replay = True
    p = experiment.prepare(c)
    model = models.make_simclr(c.model.encoder, c.model.proj_dim)
    settings = train.replay_settings(c, 1)
    data = episode.TrainData(jnp.asarray(p.dataset.train.images), jnp.asarray(p.noisy.noisy), jnp.asarray(p.noisy.corrupt))
    state = episode.init_state(model, c.seed, p.dataset.train.images.shape[1:], c.buffer.size, p.num_classes)
    if settings.data_parallel > 1:
        state, data = episode.replicate(state, settings.data_parallel), episode.replicate(data, settings.data_parallel)
    n = 3  # the buffer (P = D) is full after chunk 0, so chunks 1-2 run the mixed batches
    chunks = p.stream.chunks[:n]
    state, metrics = episode.run_chunks(model, settings, state, data, chunks, np.full(chunks.shape, .5, np.float32),
                                        np.ones(chunks.shape, bool), np.ones(n, bool))
    out[str(dp)] = {"devices": settings.data_parallel, "loss": np.asarray(metrics["base_loss"]).tolist(),
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
