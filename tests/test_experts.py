"""The expert phase: vmapped groups and device sharding give the experts of one-by-one training."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr_jax import experts, models, rng

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 7
# A few epochs only: a vmap of 1 or 2 (or 1 vs 4 devices) rounds differently, and Adam amplifies float
# rounding chaotically (1e-7 -> 1e-3 within about ten epochs on some chunks); a mixed-up key or chunk would
# show at once as O(0.1) differences. Warmup 3 of 4 epochs: the constant phase and one cosine step.
KW = dict(epochs=4, base_lr=1e-3, warmup_epochs=3)
# Two programs with different float summation orders (1 vs 4 devices, a vmap of 2 vs one at a time) agree to
# rounding only, and how far training carries the rounding depends on the CPU: the largest feature difference
# after these 4 epochs measured 7e-6 on one AMD EPYC machine of this project's kind, 4.8e-5 on another (and 0
# for the vmap on the first). FEATURE_ATOL sits 20x above that and 270x below the smallest difference between
# two chunks' features (0.27), so a mixed-up key or chunk still fails; the losses agree to 1e-6 relative.
FEATURE_ATOL = 1e-3


def assert_same_training(got, want):
    """got and want trained the same experts, in possibly different float summation orders."""
    np.testing.assert_allclose(got["features"], want["features"], rtol=0, atol=FEATURE_ATOL, err_msg="features")
    for name in ("losses", "final_loss"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # Decisions made from the features agree wherever the feature is not within rounding of the threshold.
    clear = np.abs(want["features"][..., 0]) > FEATURE_ATOL
    np.testing.assert_array_equal(got["keep"][clear], want["keep"][clear], err_msg="keep")
    assert clear.mean() > 0.95


def _data():
    """120 8x8 images of one blurred blob each, plus pixel noise (structured: pure noise is the most chaotic)."""
    rs = np.random.RandomState(0)
    yy, xx = np.mgrid[:8, :8]
    blobs = [255 * np.exp(-((yy - rs.uniform(1, 7)) ** 2 + (xx - rs.uniform(1, 7)) ** 2) / rs.uniform(2, 8))
             + rs.randint(0, 30, (8, 8)) for _ in range(120)]
    images = np.clip(np.stack(blobs), 0, 255)[..., None].astype(np.uint8)
    chunks = rs.permutation(120)[:80].reshape(5, 16).astype(np.int32)
    labels = rs.randint(0, 3, (5, 16)).astype(np.int32)
    return images, chunks, labels


def _post(chunk_index, features, labels):
    """A stand-in for the self-centered filter: per-chunk outputs computed from features and labels."""
    return {"keep": features[:, 0] > 0, "label_sum": jnp.sum(labels), "chunk": chunk_index}


def _phase(devices=None, group_size=2):
    images, chunks, labels = _data()
    return experts.expert_phase(images, chunks, SEED, model=models.make_simclr("mlp"), group_size=group_size,
                                devices=devices, post_fn=_post, post_args=labels, progress=False, **KW)


@pytest.fixture(scope="module")
def one_device():
    return _phase(devices=jax.local_devices()[:1], group_size=2)  # 3 rounds of 2, the last padded


def test_expert_phase_outputs(one_device):
    _, chunks, labels = _data()
    out = one_device
    assert out["features"].shape == (5, 16, 256) and out["features"].dtype == np.float32
    assert out["final_loss"].shape == (5,) and out["losses"].shape == (5, 4)
    np.testing.assert_array_equal(out["final_loss"], out["losses"][:, -1])
    np.testing.assert_allclose(np.linalg.norm(out["features"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["chunk"], np.arange(5))
    np.testing.assert_array_equal(out["label_sum"], labels.sum(1))
    np.testing.assert_array_equal(out["keep"], out["features"][:, :, 0] > 0)
    # Different chunks' experts differ far beyond the tolerance the cross-program tests allow.
    for a in range(5):
        for b in range(a + 1, 5):
            assert np.abs(out["features"][a] - out["features"][b]).max() > 100 * FEATURE_ATOL


def test_expert_phase_equals_one_by_one_training(one_device):
    images, chunks, _ = _data()
    model = models.make_simclr("mlp")
    for c in range(len(chunks)):
        _, features, losses = experts.train_expert(model, jnp.asarray(images[chunks[c]]),
                                                   rng.chunk_key(SEED, rng.EXPERT, c), **KW)
        np.testing.assert_allclose(one_device["features"][c], features, rtol=0, atol=FEATURE_ATOL)
        np.testing.assert_allclose(one_device["losses"][c], losses, rtol=1e-4, atol=1e-5)


_FOUR_DEVICES = textwrap.dedent("""
    import sys
    import jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    sys.path.insert(0, {tests!r})
    import test_experts as t
    out = t._phase(devices=None, group_size=1)  # 2 rounds of 4 chunks, the last padded with 3 repeats
    np.savez({path!r}, devices=jax.device_count(), **out)
""")


def test_expert_phase_on_four_simulated_devices_equals_one(one_device, tmp_path):
    path = str(tmp_path / "four.npz")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = _FOUR_DEVICES.format(tests=os.path.join(ROOT, "tests"), path=path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = np.load(path)
    assert int(four["devices"]) == 4
    assert_same_training(four, one_device)
    for name in ("label_sum", "chunk"):
        np.testing.assert_array_equal(four[name], one_device[name], err_msg=name)


def test_expert_settings_from_config():
    from spr_jax import configlib, settings
    c = configlib.cifar10_base()
    s = settings.build(c, image_shape=(32, 32, 3), num_classes=10, chunk_size=500)
    kw = s.expert.phase_kwargs()
    assert kw["views"].color_jitter and kw["epochs"] == 4000 and kw["warmup_epochs"] == 11 and kw["group_size"] == 2
    assert isinstance(kw["model"].encoder, models.ResNet18) and kw["base_lr"] == pytest.approx(3e-4)
    assert s.replay.views.color_jitter and s.eval.classifier.encoder == kw["model"].encoder
    grey = settings.build(configlib.base_config(), image_shape=(28, 28, 1), num_classes=10, chunk_size=300)
    assert not grey.expert.views.color_jitter and not grey.replay.views.color_jitter
    assert s.expert.views.semantics == "release" and s.expert.views.separate_batches


def test_a_chunk_recomputed_alone_equals_its_row(one_device):
    images, chunks, labels = _data()
    out = experts.expert_phase(images, chunks[[3]], SEED, model=models.make_simclr("mlp"), group_size=2,
                               devices=jax.local_devices()[:1], post_fn=_post, post_args=labels[[3]],
                               chunk_ids=[3], progress=False, **KW)
    np.testing.assert_allclose(out["features"][0], one_device["features"][3], rtol=0, atol=FEATURE_ATOL)
    assert int(out["chunk"][0]) == 3 and out["features"].shape == (1, 16, 256)


def test_group_size_zero_is_chosen_for_the_backend():
    from spr_jax import settings
    model = models.make_simclr("mlp")
    assert settings.expert_group_size(5, model, (28, 28, 1), 300) == 5  # an explicit value is kept
    assert settings.expert_group_size(0, model, (28, 28, 1), 300) == 1  # CPU: one expert at a time

    class FakeGPU:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 80 * 2 ** 30}

    big = settings.expert_group_size(0, model, (28, 28, 1), 300, device=FakeGPU())
    small = settings.expert_group_size(0, models.make_simclr("resnet18"), (32, 32, 3), 500, device=FakeGPU())
    assert big > small >= 1 and big >= 32  # MLP experts are small: many fit an 80 GiB card


class _Bar:
    def __init__(self):
        self.n, self.moves = 0, []

    def update(self, k):
        self.n += k
        self.moves.append(self.n)

    def close(self):
        pass


def test_round_progress_counts_experts_from_the_epochs_reported():
    progress, bar = experts.RoundProgress(), _Bar()
    progress.epoch_done(0)  # watching nothing: no bar to move
    progress.watch(bar, epochs=3, total=4)
    for e in (0, 0, 1, 1, 2):  # two experts in parallel: after 5 of their 6 epochs, one expert's worth
        progress.epoch_done(e)
    progress.epoch_done(2)
    progress.experts_done(1)  # the host's count never moves the bar back
    assert bar.moves == [1, 2]
    for _ in range(9):  # a padded last round repeats real chunks: the bar stops at the phase's experts
        progress.epoch_done(0)
    assert bar.n == 4
    progress.watch(None)
    progress.epoch_done(0)
    assert bar.n == 4


def test_an_expert_phase_moves_its_bar_from_inside_a_round(monkeypatch):
    images, chunks, _ = _data()
    bar = _Bar()
    monkeypatch.setattr(experts, "_progress", lambda total, enabled: bar)
    model = models.make_simclr("mlp")
    experts.expert_phase(images, chunks[:4], SEED, model=model, group_size=4, devices=jax.local_devices()[:1],
                         progress=True, epochs=2, base_lr=1e-3, warmup_epochs=1)
    # One round of 4 experts: the bar moved from inside it, before the round's results arrived.
    assert bar.moves[0] < 4 and bar.moves[-1] == 4 and bar.moves == sorted(set(bar.moves)), bar.moves


def test_with_one_expert_per_round_the_bar_moves_as_results_arrive_without_a_callback_per_epoch(monkeypatch):
    images, chunks, _ = _data()
    bar, calls = _Bar(), []
    monkeypatch.setattr(experts, "_progress", lambda total, enabled: bar)
    monkeypatch.setattr(experts.RoundProgress, "epoch_done", lambda self, e: calls.append(e))
    experts.expert_phase(images, chunks[:3], SEED, model=models.make_simclr("mlp"), group_size=1,
                         devices=jax.local_devices()[:1], progress=True, epochs=2, base_lr=1e-3, warmup_epochs=1)
    assert bar.moves == [1, 2, 3] and not calls  # (a host callback's program misses the disk cache)
