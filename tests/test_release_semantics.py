"""The release's augmentation semantics (kornia 0.4.1) and per-view BatchNorm, against direct numpy
transcriptions of docs/algorithm.md section 4 (written from the description, not from kornia's code)."""
import colorsys
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr_jax import augment, losses, models, simclr

R = augment.Views(color_jitter=True, semantics="release")


def _px(seed, shape=(5, 4, 3)):
    return np.random.RandomState(seed).rand(*shape).astype(np.float32)


def _hsv(img):
    return np.array([colorsys.rgb_to_hsv(*p) for p in img.reshape(-1, 3)])


def _rgb(hsv, shape):
    return np.array([colorsys.hsv_to_rgb(*p) for p in hsv]).reshape(shape)


# --- numpy transcriptions of the four ops --------------------------------------------------------------

def np_brightness(img, f):
    return np.clip(img + (f - 1.0), 0, 1)


def np_contrast(img, f):
    return np.clip(img * f, 0, 1)


def np_saturation(img, f):
    hsv = _hsv(img)
    hsv[:, 1] = np.clip(hsv[:, 1] * f, 0, 1)
    return np.clip(_rgb(hsv, img.shape), 0, 1)


def np_hue(img, f):
    hsv = _hsv(img)
    hsv[:, 0] = (hsv[:, 0] + f) % 1.0
    return np.clip(_rgb(hsv, img.shape), 0, 1)


NP_OPS = (np_brightness, np_contrast, np_saturation, np_hue)


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.3, 1.5])
def test_each_jitter_op_matches_its_definition(factor):
    img = _px(1)
    hue = (factor - 1.0) * 0.4  # within (-0.2, 0.2)
    for fn, np_fn, f in [(augment.release_brightness, np_brightness, factor),
                         (augment.release_contrast, np_contrast, factor),
                         (augment.release_saturation, np_saturation, factor),
                         (augment.release_hue, np_hue, hue)]:
        np.testing.assert_allclose(fn(jnp.asarray(img), f), np_fn(img, f), atol=2e-5, err_msg=fn.__name__)


def test_brightness_is_additive_and_contrast_purely_multiplicative():
    img = np.full((2, 2, 3), 0.4, np.float32)
    assert np.allclose(augment.release_brightness(jnp.asarray(img), 1.2), 0.6)  # + (1.2 - 1), not x 1.2
    assert np.allclose(augment.release_contrast(jnp.asarray(img), 1.5), 0.6)  # x 1.5, no blend with the mean


def test_one_op_order_per_batch():
    rs = np.random.RandomState(2)
    images = jnp.asarray(rs.randint(0, 256, (6, 8, 8, 3)), jnp.uint8)
    spec = R
    own_order_differs = False
    for seed in range(4):
        key = jax.random.PRNGKey(seed)
        out = np.asarray(augment.augment(key, images, views=spec))
        k_order, k = jax.random.split(key)
        order = np.argsort(np.asarray(jax.random.uniform(k_order, (4,))))
        keys = jax.random.split(k, images.shape[0])
        for i in range(images.shape[0]):
            u = jax.random.uniform(keys[i], (augment.NUM_UNIFORMS,))
            cropped = np.asarray(jnp.clip(augment.resized_crop_flip(
                u, images[i].astype(jnp.float32) / 255, "release"), 0, 1))
            if not float(u[augment._APPLY]) < augment.JITTER_P:
                np.testing.assert_allclose(out[i], cropped, atol=1e-6)
                continue
            factors = np.asarray(augment.jitter_factors(u))
            want = cropped
            for op in order:
                want = NP_OPS[op](want, factors[op])
            np.testing.assert_allclose(out[i], want, atol=5e-5)
            own = np.argsort(np.asarray(u[augment._ORDER]))
            own_order_differs |= not np.array_equal(own, order)
    assert own_order_differs  # the batch's order, not each image's own


def test_the_two_views_are_two_calls_with_their_own_order():
    images = jnp.asarray(np.random.RandomState(3).randint(0, 256, (4, 8, 8, 3)), jnp.uint8)
    key = jax.random.PRNGKey(9)
    both = np.asarray(augment.views(key, images, spec=R))
    k_a, k_b = jax.random.split(key)
    np.testing.assert_array_equal(both[:4], augment.augment(k_a, images, views=R))
    np.testing.assert_array_equal(both[4:], augment.augment(k_b, images, views=R))


# --- crop ------------------------------------------------------------------------------------------------

def test_crop_sizes_are_truncated_and_never_the_full_image():
    u = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3000, augment.NUM_UNIFORMS)))
    for height, width in [(28, 28), (32, 32), (8, 8)]:
        top, left, h, w = (np.asarray(a) for a in jax.vmap(
            lambda u: augment.crop_params(u, height, width, semantics="release"))(jnp.asarray(u)))
        assert (h < height).all() and (w < width).all() and (h >= 1).all() and (w >= 1).all()
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
        # The first valid candidate's sizes, truncated: recomputed in float64 from the same uniforms.
        area = height * width * (0.08 + 0.92 * u[:, augment._AREA].astype(np.float64))
        aspect = np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[:, augment._RATIO].astype(np.float64))
        cw, ch = np.floor(np.sqrt(area * aspect)), np.floor(np.sqrt(area / aspect))
        valid = (cw > 0) & (cw < width) & (ch > 0) & (ch < height)
        first = valid.argmax(1)
        rows = np.arange(len(u))
        ok = valid.any(1)
        agree = (ch[rows, first] == h) & (cw[rows, first] == w)
        assert agree[ok].mean() > 0.995  # float32 vs float64 may differ at an exact integer boundary


def np_kornia_crop(img, top, left, h, w, out_h, out_w):
    """kornia 0.4.1's crop_by_boxes, step by step in float64 (docs/algorithm.md section 4): the perspective
    transform taking the box's corner pixels to the output's, warp_affine's pixel normalisation (2 / (N - 1)),
    affine_grid and grid_sample with align_corners=False, bilinear, zeros outside the image."""
    in_h, in_w = img.shape[:2]
    src = [(left, top), (left + w - 1, top), (left + w - 1, top + h - 1), (left, top + h - 1)]
    dst = [(0, 0), (out_w - 1, 0), (out_w - 1, out_h - 1), (0, out_h - 1)]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):  # the 8-unknown linear system of get_perspective_transform
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); rhs.append(u)
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y]); rhs.append(v)
    m = np.append(np.linalg.solve(np.array(rows, float), np.array(rhs, float)), 1.0).reshape(3, 3)

    def normal(hh, ww):
        return np.array([[2.0 / (ww - 1), 0, -1], [0, 2.0 / (hh - 1), -1], [0, 0, 1]])

    dst_norm_from_src_norm = normal(out_h, out_w) @ m @ np.linalg.inv(normal(in_h, in_w))
    theta = np.linalg.inv(dst_norm_from_src_norm)[:2]
    out = np.zeros((out_h, out_w) + img.shape[2:])
    for i in range(out_h):
        for j in range(out_w):
            gx, gy = theta @ np.array([(2 * j + 1) / out_w - 1, (2 * i + 1) / out_h - 1, 1.0])
            ix, iy = ((gx + 1) * in_w - 1) / 2, ((gy + 1) * in_h - 1) / 2
            x0, y0 = int(np.floor(ix)), int(np.floor(iy))
            for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
                for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
                    if 0 <= yy < in_h and 0 <= xx < in_w:
                        out[i, j] += wy * wx * img[yy, xx]
    return out


def np_axis_source(start, size, out, n):
    """The per-axis source coordinate of docs/algorithm.md section 4."""
    return (start + (np.arange(out) + 0.5) * (size - 1) / out) * n / (n - 1) - 0.5


# Boxes (top, left, h, w) on a 6x8 image: interior, touching each border, non-square, tiny, nearly full,
# and the full image.
BOXES = [(1, 2, 3, 4), (0, 0, 5, 7), (1, 1, 5, 7), (0, 3, 2, 5), (4, 0, 2, 2), (2, 5, 3, 3), (0, 0, 2, 2),
         (3, 6, 2, 2), (0, 0, 6, 8)]


@pytest.mark.parametrize("box", BOXES)
def test_release_resampling_is_kornias_warp(box):
    img = _px(5, (6, 8, 2))
    top, left, h, w = box
    wy = augment.interp_matrix(jnp.int32(top), jnp.int32(h), 6, 6, "release")
    wx = augment.interp_matrix(jnp.int32(left), jnp.int32(w), 8, 8, "release")
    got = np.einsum("yh,hwc,xw->yxc", np.asarray(wy), img, np.asarray(wx))
    want = np_kornia_crop(img, top, left, h, w, 6, 8)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # The closed form, and what it implies: the full image is the identity, any other box is pushed off its
    # corner pixels (corner to corner would put output pixel 0 on the box's first pixel exactly).
    lo, hi, frac = (np.asarray(a) for a in augment.interp_taps(jnp.int32(left), jnp.int32(w), 8, "release", 8))
    np.testing.assert_allclose(lo + frac, np_axis_source(left, w, 8, 8), atol=2e-6)
    np.testing.assert_array_equal(hi, lo + 1)
    if (h, w) == (6, 8):
        np.testing.assert_allclose(got, img, atol=2e-6)
    else:
        assert not np.allclose(got[0, 0], img[top, left], atol=1e-3)


def test_release_resampling_reads_zero_outside_the_image():
    # A box on the left/top border of a constant image: the first output pixel's source lies left of pixel
    # 0, so part of its weight reads the zero padding and it comes out darker than the image.
    img = np.ones((8, 8, 1), np.float32)
    wy = augment.interp_matrix(jnp.int32(0), jnp.int32(3), 8, 8, "release")
    wx = augment.interp_matrix(jnp.int32(0), jnp.int32(3), 8, 8, "release")
    got = np.einsum("yh,hwc,xw->yxc", np.asarray(wy), img, np.asarray(wx))[..., 0]
    src = np_axis_source(0, 3, 8, 8)
    assert src[0] < 0  # -0.5 + 0.125 * 8/7
    edge = 1 + src[0]  # the weight left on pixel 0
    np.testing.assert_allclose(got[0, 0], edge * edge, atol=1e-6)
    np.testing.assert_allclose(got[3:, 3:], 1.0, atol=1e-6)
    # The far side of a box ending at the image's last pixel also leaves the image.
    tail = np_axis_source(5, 3, 8, 8)
    assert tail[-1] > 7
    wx = np.asarray(augment.interp_matrix(jnp.int32(5), jnp.int32(3), 8, 8, "release"))
    assert wx[-1].sum() < 1 - 1e-3


def test_release_resampling_of_a_one_pixel_box_reads_one_point():
    # kornia's perspective transform is singular for a 1-pixel side; the closed form reads one source point.
    lo, hi, frac = (np.asarray(a) for a in augment.interp_taps(jnp.int32(3), jnp.int32(1), 8, "release", 8))
    np.testing.assert_allclose(lo + frac, np_axis_source(3, 1, 8, 8), atol=1e-6)
    assert np.ptp(lo + frac) == 0


def test_release_resampling_on_drawn_boxes_and_flip():
    # Boxes drawn as the augmentation draws them on 28x28 images, through resized_crop_flip itself.
    img = _px(7, (28, 28, 1))
    u = jax.random.uniform(jax.random.PRNGKey(4), (12, augment.NUM_UNIFORMS))
    for k in range(12):
        top, left, h, w = (int(a) for a in augment.crop_params(u[k], 28, 28, semantics="release"))
        want = np_kornia_crop(img, top, left, h, w, 28, 28)
        if float(u[k, augment._FLIP]) < augment.FLIP_P:
            want = want[:, ::-1]
        got = np.asarray(augment.resized_crop_flip(u[k], jnp.asarray(img), "release"))
        np.testing.assert_allclose(got, want, atol=5e-6)


def test_normalise_first_clamps_normalised_values():
    # The release's order for webvision: normalise, augment (the [0, 1] clamps act on normalised values),
    # then the model normalises nothing more. Handed back in pixel units, what the model sees is
    # clamp(normalised) for the jitter's ops.
    images = jnp.asarray(np.random.RandomState(6).randint(0, 256, (4, 8, 8, 3)), jnp.uint8)
    spec = augment.Views(color_jitter=True, semantics="release", normalize_first="imagenet")
    out = augment.augment(jax.random.PRNGKey(1), images, views=spec)
    seen = np.asarray(augment.normalize_input(out, "imagenet"))  # what the encoder computes on
    jittered = [i for i in range(4) if float(jax.random.uniform(
        jax.random.split(jax.random.split(jax.random.PRNGKey(1))[1], 4)[i],
        (augment.NUM_UNIFORMS,))[augment._APPLY]) < augment.JITTER_P]
    assert jittered
    for i in jittered:
        assert seen[i].min() >= -1e-5 and seen[i].max() <= 1 + 1e-5
    after = augment.augment(jax.random.PRNGKey(1), images, views=spec._replace(normalize_first=""))
    assert not np.allclose(np.asarray(after), np.asarray(out))


# --- per-view BatchNorm ----------------------------------------------------------------------------------

def test_separate_view_batches_equal_two_apply_calls_threading_batch_stats():
    model = models.SimCLRModel(models.ConvNet(widths=(4, 4, 8, 8)), proj_dim=16)
    x = jax.random.uniform(jax.random.PRNGKey(0), (6, 8, 8, 3))
    v = model.init(jax.random.PRNGKey(1), x, train=False)
    params, stats = v["params"], v["batch_stats"]
    loss, new_stats = simclr.contrastive_loss(model, params, stats, x, separate_batches=True)
    (_, z_a), up_a = model.apply({"params": params, "batch_stats": stats}, x[:3], train=True, mutable=["batch_stats"])
    (_, z_b), up_b = model.apply({"params": params, "batch_stats": up_a["batch_stats"]}, x[3:], train=True,
                                 mutable=["batch_stats"])
    np.testing.assert_allclose(loss, losses.nt_xent(z_a, z_b), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_stats, up_b["batch_stats"])
    # Running statistics moved twice: mean = 0.9 (0.9 * 0 + 0.1 m_a) + 0.1 m_b, unlike one batch of 6.
    joint_loss, joint_stats = simclr.contrastive_loss(model, params, stats, x, separate_batches=False)
    assert not np.allclose(joint_loss, loss)
    assert not np.allclose(joint_stats["encoder"]["bn1"]["mean"], new_stats["encoder"]["bn1"]["mean"])


def test_views_without_batchnorm_give_the_same_loss_either_way():
    model = models.make_simclr("mlp")
    x = jax.random.uniform(jax.random.PRNGKey(0), (6, 8, 8, 1))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    a, _ = simclr.contrastive_loss(model, params, {}, x, separate_batches=True)
    b, _ = simclr.contrastive_loss(model, params, {}, x, separate_batches=False)
    assert float(a) == float(b) and math.isfinite(float(a))
