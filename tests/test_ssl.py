"""Augmentations, NT-Xent, schedules/optimisers and the pure contrastive steps."""
import colorsys
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spr_jax import augment, losses, models, optim, simclr


# ------------------------------------------------------------------ losses

def _nt_xent_numpy(za, zb, t):
    z = np.concatenate([za, zb]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2, n = len(z), len(za)
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        logits = np.array([z[i] @ z[k] / t for k in range(n2) if k != i])
        total += -z[i] @ z[j] / t + np.log(np.exp(logits).sum())
    return total / n2


def test_nt_xent_matches_numpy():
    rs = np.random.RandomState(0)
    for n, d, t in [(5, 7, 0.5), (12, 16, 0.1)]:
        za, zb = rs.randn(n, d).astype(np.float32), rs.randn(n, d).astype(np.float32)
        assert abs(float(losses.nt_xent(za, zb, t)) - _nt_xent_numpy(za, zb, t)) <= 1e-5


def test_nt_xent_is_lower_for_aligned_views():
    rs = np.random.RandomState(1)
    za = rs.randn(16, 32).astype(np.float32)
    aligned = float(losses.nt_xent(za, 3.0 * za))  # scale does not matter: cosine similarity
    random = float(losses.nt_xent(za, rs.randn(16, 32).astype(np.float32)))
    assert aligned < random


def test_cross_entropy_matches_numpy():
    rs = np.random.RandomState(2)
    logits, labels = rs.randn(6, 4).astype(np.float32), rs.randint(0, 4, 6)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), -np.log(p[np.arange(6), labels]).mean(),
                               rtol=1e-5)


# ------------------------------------------------------------------ schedules and optimisers

class _TorchCosine:
    """torch.optim.lr_scheduler.CosineAnnealingLR(T_max, eta_min=0), its recursive (chainable) form."""

    def __init__(self, base, t_max):
        self.base, self.t_max, self.last_epoch, self.lr = base, t_max, 0, base

    def step(self):
        self.last_epoch += 1
        e, t = self.last_epoch, self.t_max
        if (e - 1 - t) % (2 * t) == 0:
            self.lr = self.lr + self.base * (1 - math.cos(math.pi / t)) / 2
        else:
            self.lr = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t)) * self.lr


@pytest.mark.parametrize("epochs,calls", [(20, 1), (20, 3), (25, 4)])
def test_ssl_lr_matches_reference_loop(epochs, calls):
    """The reference: one scheduler per model, stepped after local epoch e when e >= 10, never reset."""
    base, warmup = 3e-4, 11
    sched = _TorchCosine(base, epochs)
    ks = 0
    for c in range(calls):
        for e in range(epochs):
            closed = base * (1 + math.cos(math.pi * ks / epochs)) / 2  # the text's closed form
            got = float(optim.ssl_lr(base, epochs, warmup, c, e))
            assert got == pytest.approx(sched.lr, rel=1e-5, abs=1e-12)
            assert got == pytest.approx(closed, rel=1e-5, abs=1e-12)
            if c == 0 and e < warmup:
                assert got == pytest.approx(base, rel=1e-7)
            if e >= warmup - 1:
                sched.step()
                ks += 1
    # Traced arguments give the same values (the scan uses them).
    es = jnp.arange(epochs)
    traced = jax.jit(jax.vmap(lambda e: optim.ssl_lr(base, epochs, warmup, calls - 1, e)))(es)
    eager = [float(optim.ssl_lr(base, epochs, warmup, calls - 1, e)) for e in range(epochs)]
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-12)


def test_finetune_schedule_steps_every_300():
    s = optim.finetune_schedule(2e-3, 300, 0.1)
    for step, want in [(0, 2e-3), (299, 2e-3), (300, 2e-4), (599, 2e-4), (600, 2e-5)]:
        assert float(s(step)) == pytest.approx(want, rel=1e-6)


def test_finetune_optimizer_clips_by_value_then_adam():
    tx = optim.finetune_optimizer(lr=2e-3, clip=0.5)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    upd, state = tx.update({"w": jnp.asarray([10.0, -0.1, -7.0])}, state, params)
    mu = jax.tree_util.tree_leaves(state[1])[1]  # ScaleByAdamState(count, mu, nu)
    np.testing.assert_allclose(mu, 0.1 * np.asarray([0.5, -0.1, -0.5]), rtol=1e-6)
    np.testing.assert_allclose(upd["w"], -2e-3 * np.sign([1, -1, -1]), rtol=1e-4)  # Adam's first step


def test_ssl_optimizer_is_adam_with_given_lr():
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    tx, ref = optim.ssl_optimizer(), optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)
    assert optim.ssl_optimizer() is tx  # one object: part of the TrainState's static structure
    s, r = tx.init(params), ref.init(params)
    for i in range(3):
        g = {"w": jnp.asarray([0.3, -1.0 * i, 2.0])}
        u, s = tx.update(g, optim.with_lr(s, 1e-3), params)
        v, r = ref.update(g, r, params)
        np.testing.assert_array_equal(u["w"], v["w"])  # the same arithmetic, bit for bit


# ------------------------------------------------------------------ augmentations

def _images(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, 256, shape), jnp.uint8)


_views = jax.jit(augment.views, static_argnames=("color_jitter", "spec"))
TV = "torchvision"


def test_views_shape_range_and_keys():
    x = _images((6, 12, 12, 1))
    a = _views(jax.random.PRNGKey(0), x)
    assert a.shape == (12, 12, 12, 1) and a.dtype == jnp.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, _views(jax.random.PRNGKey(0), x))
    b = _views(jax.random.PRNGKey(1), x)
    assert not np.allclose(a, b)
    assert not np.allclose(a[:6], a[6:])  # the two views of an image differ


def _u(area, ratio, flip, top=0.0, left=0.0):
    u = np.full(augment.NUM_UNIFORMS, 0.9, np.float32)
    u[augment._AREA], u[augment._RATIO] = area, ratio
    u[augment._TOP], u[augment._LEFT] = top, left
    u[augment._FLIP] = flip
    return jnp.asarray(u)


@pytest.mark.parametrize("semantics", ["torchvision", "release"])
def test_crop_full_image_is_identity_and_flip_reverses(semantics):
    img = _images((9, 7, 2)).astype(jnp.float32) / 255
    # Area 1, aspect 1 on a 9x7 image: invalid (w = h = 8 > 7; truncated, 7 is not smaller than 7), so every
    # candidate fails and the centre-crop fallback (whole image, in ratio) is used.
    ident = augment.resized_crop_flip(_u(1.0, 0.5, 0.9), img, semantics)
    np.testing.assert_allclose(ident, img, atol=1e-6)
    np.testing.assert_allclose(augment.resized_crop_flip(_u(1.0, 0.5, 0.1), img, semantics), img[:, ::-1], atol=1e-6)
    top, left, h, w = augment.crop_params(_u(1.0, 0.5, 0.9), 9, 7, semantics=semantics)
    assert (int(top), int(left), int(h), int(w)) == augment._centre_crop(9, 7) == (0, 0, 9, 7)


def test_crop_params_are_valid_and_first_valid_candidate_wins():
    u = jax.random.uniform(jax.random.PRNGKey(0), (500, augment.NUM_UNIFORMS))
    top, left, h, w = jax.vmap(lambda u: augment.crop_params(u, 28, 20, semantics=TV))(u)
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= 28) and np.all(left + w <= 20)
    assert np.all(h >= 1) and np.all(w >= 1)
    # candidate 0 invalid (too wide), candidate 1 valid: the crop is candidate 1's.
    area = np.full(augment.ATTEMPTS, 0.5, np.float32); area[0] = 1.0
    ratio = np.full(augment.ATTEMPTS, 0.5, np.float32); ratio[0] = 1.0
    uu = _u(area, ratio, 0.9, top=0.0, left=0.0)
    _, _, h1, w1 = augment.crop_params(uu, 28, 20, semantics=TV)
    side = round(math.sqrt(28 * 20 * (0.08 + 0.92 * 0.5)))
    assert (int(h1), int(w1)) == (side, side)


def test_upsampling_interpolation_matches_torch_rule():
    # A 2-pixel crop resized to 4 pixels with align_corners=False: sources -0.25->0, 0.25, 0.75, 1.25->1.
    lo, hi, frac = augment.interp_taps(jnp.int32(3), jnp.int32(2), 4, TV)
    row = np.asarray([0, 0, 0, 10.0, 20.0, 0])
    out = (1 - np.asarray(frac)) * row[np.asarray(lo)] + np.asarray(frac) * row[np.asarray(hi)]
    np.testing.assert_allclose(out, [10.0, 12.5, 17.5, 20.0], rtol=1e-6)


def test_colour_jitter_only_with_flag_and_rgb():
    x = _images((8, 10, 10, 3))
    plain = _views(jax.random.PRNGKey(3), x, spec=augment.Views(False, TV))
    jit = _views(jax.random.PRNGKey(3), x, spec=augment.Views(True, TV))
    assert float(jit.min()) >= 0.0 and float(jit.max()) <= 1.0
    changed = np.abs(np.asarray(jit) - np.asarray(plain)).reshape(16, -1).max(1) > 1e-4
    assert 0 < changed.sum() < 16  # RandomApply p=0.5: some views jittered, some not
    with pytest.raises(ValueError, match="RGB"):
        augment.views(jax.random.PRNGKey(0), _images((2, 10, 10, 1)), color_jitter=True)


def test_colour_ops_match_definitions():
    rs = np.random.RandomState(4)
    px = rs.rand(50, 3).astype(np.float32)
    h, s, v = augment.rgb_to_hsv(jnp.asarray(px))
    want = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    np.testing.assert_allclose(np.stack([h, s, v], 1), want, atol=1e-5)
    np.testing.assert_allclose(augment.hsv_to_rgb(h, s, v), px, atol=1e-5)
    shifted = np.asarray(augment.adjust_hue(jnp.asarray(px), 0.1))  # torchvision's ops
    want = np.array([colorsys.hsv_to_rgb((a + 0.1) % 1.0, b, c) for a, b, c in want])
    np.testing.assert_allclose(shifted, want, atol=1e-5)
    img = jnp.asarray(rs.rand(4, 4, 3).astype(np.float32))
    np.testing.assert_allclose(augment.adjust_brightness(img, 1.5), np.clip(1.5 * np.asarray(img), 0, 1), atol=1e-6)
    grey = np.asarray(img) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(augment.adjust_saturation(img, 0.0), np.repeat(grey[..., None], 3, -1), atol=1e-6)
    np.testing.assert_allclose(augment.adjust_contrast(img, 0.0), np.full((4, 4, 3), grey.mean()), atol=1e-6)


# ------------------------------------------------------------------ steps

def _patterns(n, size=8, seed=0):
    """n uint8 images of 4 kinds of bars, with pixel noise: easy to tell apart, hard to memorise."""
    rs = np.random.RandomState(seed)
    imgs = rs.randint(0, 60, (n, size, size, 1))
    for i in range(n):
        k = i % 4
        if k == 0:
            imgs[i, :, : size // 2] += 180
        elif k == 1:
            imgs[i, : size // 2] += 180
        elif k == 2:
            imgs[i, ::2] += 180
        else:
            imgs[i, :, ::2] += 180
    return jnp.asarray(np.clip(imgs, 0, 255), jnp.uint8)


def test_contrastive_fit_lowers_the_loss_and_embed_is_normalised():
    model = models.make_simclr("mlp")
    x = _patterns(32)
    state = simclr.init_state(model, jax.random.PRNGKey(0), x.shape[1:])
    state, hist = simclr.contrastive_fit(model, state, x, jax.random.PRNGKey(1), epochs=40, base_lr=1e-3,
                                        warmup_epochs=11)
    hist = np.asarray(hist)
    assert hist.shape == (40,) and np.all(np.isfinite(hist))
    assert hist[-5:].mean() < hist[:5].mean() - 0.2, hist
    z = simclr.embed(model, state.params, state.batch_stats, x)
    assert z.shape == (32, 256)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, rtol=1e-5)


def test_contrastive_step_is_the_fit_body():
    """One fit epoch at lr0 equals one contrastive_step on the same key (fit folds the epoch into its key)."""
    model = models.make_simclr("mlp")
    x = _patterns(8)
    s0 = simclr.init_state(model, jax.random.PRNGKey(0), x.shape[1:])
    copy = lambda s: jax.tree_util.tree_map(jnp.array, s)
    s1, l1 = simclr.contrastive_step(model, copy(s0), x, jax.random.fold_in(jax.random.PRNGKey(5), 0), 3e-4)
    s2, l2 = simclr.contrastive_fit(model, copy(s0), x, jax.random.PRNGKey(5), epochs=1, base_lr=3e-4,
                                   warmup_epochs=11)
    assert float(l1) == pytest.approx(float(l2[0]), rel=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1.params, s2.params)
    assert not np.allclose(s1.params["projector"]["fc2"]["bias"], s0.params["projector"]["fc2"]["bias"])


class _TinyBN(nn.Module):
    """A BatchNorm encoder that compiles fast (ResNet-18's 20 random conv inits take seconds of CPU compile)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = models.TorchDense(8)(x.reshape(x.shape[0], -1))
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))


def test_contrastive_step_threads_batchnorm_statistics():
    model = models.SimCLRModel(_TinyBN(), proj_dim=16)
    x = _images((4, 6, 6, 3))
    state = simclr.init_state(model, jax.random.PRNGKey(0), x.shape[1:])
    before = np.asarray(state.batch_stats["encoder"]["BatchNorm_0"]["mean"])
    state, loss = simclr.contrastive_step(model, state, x, jax.random.PRNGKey(1), 3e-4)
    assert np.isfinite(float(loss))
    after = np.asarray(state.batch_stats["encoder"]["BatchNorm_0"]["mean"])
    assert np.all(before == 0) and not np.allclose(after, 0)
    z = simclr.embed(model, state.params, state.batch_stats, x)
    assert z.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, rtol=1e-5)
