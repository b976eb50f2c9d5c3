"""SimCLR views as pure, vmapped JAX functions (docs/algorithm.md section 4), and the input normalisation
the encoders start with (it is an image transform too, and the release's webvision views apply it first).

Per image, with its own key: a random resized crop to the input size (scale 0.08-1, ratio 3/4-4/3) with
bilinear resampling, a horizontal flip (p = 0.5), and for RGB inputs a colour jitter (0.5, 0.5, 0.5, 0.2)
applied with p = 0.5, in that order, on float pixels in [0, 1]. Two semantics (`Views.semantics`):

- "release" (default): the reference release's kornia 0.4.1 ops. Crop sizes are truncated to integers and
  must be strictly smaller than the image; the crop is resampled as kornia's warp_affine does it with
  align_corners=False and zero padding (interp_taps: corners do not map onto corners, taps outside the
  image read zero). Jitter: brightness adds (b - 1), contrast multiplies by c, saturation
  scales S and hue shifts H in HSV, each op clamped to [0, 1]; the order of the four ops is one random
  permutation per call, i.e. per view batch. The two views are two calls.
- "torchvision": RandomResizedCrop (rounded sizes, the full image allowed, torch's align_corners=False
  resize), ColorJitter's blends (with black / the grey mean / greyscale), an op order per image.

Static shapes throughout:
- Every random choice of an image comes from one uniform draw of its key (NUM_UNIFORMS values): each
  separate jax.random call costs up to a second of XLA compile time on CPU.
- The crop takes 10 candidate (area, log-aspect) pairs at once and uses the first valid one, else the
  centre-crop fallback; offsets are drawn for every candidate and the chosen one's used.
- Crop + bilinear resize + flip are one separable linear map: out = Wy @ image @ Wx^T with per-image
  [H, H] and [W, W] interpolation matrices (two non-zeros per row); the flip reverses Wx's rows. The crop
  is never larger than the image, so resizing only ever upsamples and antialiasing changes nothing.
- Colour jitter: four slots, each picking its op by the slot's entry of a permutation (lax.switch; under
  vmap every op is computed and selected).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Views(NamedTuple):
    """How SimCLR's two views are made and forwarded (static: a jit argument)."""
    color_jitter: bool = False  # RGB data only
    semantics: str = "release"  # "release" (kornia 0.4.1, the reference) | "torchvision"
    normalize_first: str = ""  # "imagenet": normalise BEFORE augmenting (the release's order for webvision)
    separate_batches: bool = True  # forward the views as two batches (BatchNorm statistics per view)


SEMANTICS = ("release", "torchvision")

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10
JITTER = (0.5, 0.5, 0.5, 0.2)  # brightness, contrast, saturation, hue
JITTER_P = 0.5
FLIP_P = 0.5


def _centre_crop(height: int, width: int, ratio=RATIO):
    """torchvision's fallback after 10 failed attempts (static: depends on the shape only)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# One uniform draw per image feeds every random choice (each separate jax.random call site costs up to a
# second of XLA compile time on CPU): slices of the draw, in this order.
_AREA, _RATIO, _TOP, _LEFT = (slice(k * ATTEMPTS, (k + 1) * ATTEMPTS) for k in range(4))
_FLIP, _APPLY = 4 * ATTEMPTS, 4 * ATTEMPTS + 1
_FACTORS = slice(4 * ATTEMPTS + 2, 4 * ATTEMPTS + 6)
_ORDER = slice(4 * ATTEMPTS + 6, 4 * ATTEMPTS + 10)
NUM_UNIFORMS = 4 * ATTEMPTS + 10


def crop_params(u, height: int, width: int, scale=SCALE, ratio=RATIO, semantics: str = "release"):
    """The crop box from uniforms u [NUM_UNIFORMS]: (top, left, h, w) as int32 scalars.

    torchvision: sizes rounded, at most the image. release (kornia 0.4.1): sizes truncated, strictly
    smaller than the image. Both: the first valid of 10 candidates, else the centre crop."""
    area = height * width
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[_AREA])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[_RATIO])
    if semantics == "release":
        w = jnp.sqrt(target_area * aspect).astype(jnp.int32)  # truncation toward zero
        h = jnp.sqrt(target_area / aspect).astype(jnp.int32)
        valid = (w > 0) & (w < width) & (h > 0) & (h < height)
    else:
        # jnp.round rounds half to even, like Python's round().
        w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
        h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # randint(0, H - h + 1) for every candidate, as floor(u * (H - h + 1)).
    i = jnp.floor(u[_TOP] * (height - h + 1).astype(jnp.float32)).astype(jnp.int32)
    j = jnp.floor(u[_LEFT] * (width - w + 1).astype(jnp.float32)).astype(jnp.int32)
    i, j = jnp.minimum(i, height - h), jnp.minimum(j, width - w)  # u * n may round up to n in float32
    first = jnp.argmax(valid)
    ci, cj, ch, cw = _centre_crop(height, width, ratio)
    ok = valid.any()
    pick = lambda v, fallback: jnp.where(ok, v[first], jnp.int32(fallback))
    return pick(i, ci), pick(j, cj), pick(h, ch), pick(w, cw)


def interp_taps(start, size, out_size: int, semantics: str = "release", in_size: int | None = None):
    """Bilinear taps resizing pixels [start, start + size) of an in_size-pixel axis to out_size pixels.

    Returns (lo [out], hi [out], frac [out]), absolute pixel indices into the axis: output pixel
    o = (1 - frac) * in[lo] + frac * in[hi], where a tap outside [0, in_size - 1] reads zero (interp_matrix
    gives it no column).

    release (kornia 0.4.1's crop_by_boxes -> warp_affine with align_corners=False and zero padding): the
    box's corner pixels are matched to the output's corner pixels in pixel space, the warp normalises pixels
    by 2 / (N - 1), and grid_sample un-normalises with align_corners=False, so per axis of N pixels
        source(o) = (start + (o + 0.5) * (size - 1) / out_size) * N / (N - 1) - 0.5,
    with both taps free to leave the box (no clamp) and taps outside the image zero. A crop is pushed up to
    half a pixel away from the image centre and darkens at the image's border. The full image (start 0,
    size N, out N) maps onto itself. A 1-pixel box (kornia's warp is singular there) reads one point.
    torchvision (torch's align_corners=False resize of the crop): source = (o + 0.5) * size / out_size - 0.5,
    clamped to the crop's pixels.
    """
    o = jnp.arange(out_size, dtype=jnp.float32)
    size_f = jnp.asarray(size).astype(jnp.float32)
    if semantics == "release":
        if in_size is None:
            raise ValueError("interp_taps: the release's resampling depends on the image size; pass in_size")
        n = float(in_size)
        start_f = jnp.asarray(start).astype(jnp.float32)
        src = (start_f + (o + 0.5) * ((size_f - 1.0) / out_size)) * (n / max(n - 1.0, 1.0)) - 0.5
        lo = jnp.floor(src).astype(jnp.int32)
        return lo, lo + 1, src - lo.astype(jnp.float32)
    src = jnp.maximum((o + 0.5) * (size_f / out_size) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), size - 1)
    frac = src - i0.astype(jnp.float32)
    i1 = jnp.minimum(i0 + 1, size - 1)
    return start + i0, start + i1, frac


def interp_matrix(start, size, out_size: int, in_size: int, semantics: str = "release"):
    """[out_size, in_size] bilinear weights of interp_taps: two non-zeros per row, fewer where a tap falls
    outside the image (release: zero padding) or both taps coincide (torchvision: the crop's last pixel)."""
    lo, hi, frac = interp_taps(start, size, out_size, semantics, in_size)
    cols = jnp.arange(in_size, dtype=jnp.int32)[None, :]
    return (1.0 - frac)[:, None] * (cols == lo[:, None]) + frac[:, None] * (cols == hi[:, None])


def resized_crop_flip(u, img, semantics: str = "release"):
    """Random resized crop to the input size, then a random horizontal flip, of one float image [H, W, C]."""
    height, width, _ = img.shape
    top, left, h, w = crop_params(u, height, width, semantics=semantics)
    wy = interp_matrix(top, h, height, height, semantics)
    wx = interp_matrix(left, w, width, width, semantics)
    wx = jnp.where(u[_FLIP] < FLIP_P, wx[::-1], wx)  # flipping the output = reversing Wx's rows
    # Two small matmuls per image (batched under vmap): faster on CPU than gathering rows and columns.
    # Full fp32 precision, so that accelerators' reduced-precision matmuls (TF32) do not round the pixels.
    rows = jnp.einsum("yh,hwc->ywc", wy, img, precision="highest")
    return jnp.einsum("ywc,xw->yxc", rows, wx, precision="highest")


# ---------------------------------------------------------------- input normalisation
# (the encoders' first step, config.model.input_norm; the release's webvision views run on normalised values)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_input(x, input_norm: str):
    """'' keeps pixels in [0, 1]; 'imagenet' subtracts the ImageNet mean and divides by its std (webvision)."""
    if input_norm == "":
        return x
    if input_norm == "imagenet":
        return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    raise ValueError(f"input_norm={input_norm!r} is unknown; use '' or 'imagenet'")


def denormalize_input(x, input_norm: str):
    """The inverse of normalize_input (augmentations that run on normalised values hand pixels back)."""
    if input_norm == "":
        return x
    if input_norm == "imagenet":
        return x * jnp.asarray(IMAGENET_STD, x.dtype) + jnp.asarray(IMAGENET_MEAN, x.dtype)
    raise ValueError(f"input_norm={input_norm!r} is unknown; use '' or 'imagenet'")


# ---------------------------------------------------------------- colour jitter

def _grey(img):
    return 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def _blend(img, other, ratio):
    return jnp.clip(ratio * img + (1.0 - ratio) * other, 0.0, 1.0)


def adjust_brightness(img, f):
    return _blend(img, 0.0, f)


def adjust_contrast(img, f):
    return _blend(img, jnp.mean(_grey(img)), f)


def adjust_saturation(img, f):
    return _blend(img, _grey(img)[..., None], f)


def rgb_to_hsv(img):
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    maxc = jnp.max(img, axis=-1)
    minc = jnp.min(img, axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / jnp.where(eqc, 1.0, maxc)
    crd = jnp.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def hsv_to_rgb(h, s, v):
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    pick = lambda *c: jnp.select([i == k for k in range(6)], c)
    return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], axis=-1)


def adjust_hue(img, f):
    h, s, v = rgb_to_hsv(img)
    return hsv_to_rgb(jnp.mod(h + f, 1.0), s, v)


def jitter_factors(u, strength=JITTER):
    """Per-image (brightness, contrast, saturation, hue) factors from uniforms u [NUM_UNIFORMS]."""
    b, c, s, h = strength
    lo = jnp.asarray([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h], jnp.float32)
    hi = jnp.asarray([1 + b, 1 + c, 1 + s, h], jnp.float32)
    return lo + (hi - lo) * u[_FACTORS]


def release_brightness(img, f):
    """kornia 0.4.1: adds f - 1 (f ~ U(0.5, 1.5)), clamped to [0, 1]."""
    return jnp.clip(img + (f - 1.0), 0.0, 1.0)


def release_contrast(img, f):
    """kornia 0.4.1: multiplies by f, clamped (no blend with the mean)."""
    return jnp.clip(img * f, 0.0, 1.0)


def release_saturation(img, f):
    """kornia 0.4.1: scales S in HSV by f (S clamped to [0, 1]), back to RGB, clamped."""
    h, s, v = rgb_to_hsv(img)
    return jnp.clip(hsv_to_rgb(h, jnp.clip(s * f, 0.0, 1.0), v), 0.0, 1.0)


def release_hue(img, f):
    """kornia 0.4.1: shifts H by f of a full turn (f ~ U(-0.2, 0.2)), back to RGB, clamped."""
    h, s, v = rgb_to_hsv(img)
    return jnp.clip(hsv_to_rgb(jnp.mod(h + f, 1.0), s, v), 0.0, 1.0)


def jitter_colors(u, img, strength=JITTER, order=None, semantics: str = "release"):
    """ColorJitter(brightness, contrast, saturation, hue) on one RGB image, its ops in `order` (a
    permutation of 0..3; default: this image's own random permutation from u)."""
    factors = jitter_factors(u, strength)
    if order is None:
        order = jnp.argsort(u[_ORDER])  # a uniform random permutation, as torch.randperm(4)
    if semantics == "release":
        fns = (release_brightness, release_contrast, release_saturation, release_hue)
    else:
        fns = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    ops = [lambda x, fn=fn, i=i: fn(x, factors[i]) for i, fn in enumerate(fns)]
    for slot in range(4):
        img = jax.lax.switch(order[slot], ops, img)
    return img


# ---------------------------------------------------------------- views

def augment_one(key, image_uint8, *, color_jitter: bool = False, views: Views = None, order=None):
    """One augmented float32 view of one uint8 image [H, W, C] (in [0, 1], or normalised per
    views.normalize_first); `order`: the batch's jitter op order (release semantics)."""
    views = views or Views(color_jitter=color_jitter)
    channels = image_uint8.shape[-1]
    u = jax.random.uniform(key, (NUM_UNIFORMS,))
    img = image_uint8.astype(jnp.float32) * (1.0 / 255.0)
    if views.normalize_first:
        # The release normalises before augmenting: its [0, 1] clamps then act on normalised values.
        img = normalize_input(img, views.normalize_first)
        out = resized_crop_flip(u, img, views.semantics)
    else:
        out = jnp.clip(resized_crop_flip(u, img, views.semantics), 0.0, 1.0)
    if views.color_jitter:
        if channels != 3:
            raise ValueError(f"colour jitter needs RGB images, got {channels} channels")
        out = jnp.where(u[_APPLY] < JITTER_P, jitter_colors(u, out, order=order, semantics=views.semantics), out)
    if views.normalize_first:  # back to pixel units: the model normalises its input itself
        out = denormalize_input(out, views.normalize_first)
    return out


def augment(key, images_uint8, *, color_jitter: bool = False, views: Views = None):
    """One view per image of a uint8 batch [B, H, W, C] -> float32 [B, H, W, C]; one key per image.

    Release semantics draw one jitter op order for the whole batch (kornia draws it per call)."""
    views = views or Views(color_jitter=color_jitter)
    if views.semantics == "release":
        k_order, key = jax.random.split(key)
        order = jnp.argsort(jax.random.uniform(k_order, (4,)))
    else:
        order = None
    keys = jax.random.split(key, images_uint8.shape[0])
    return jax.vmap(lambda k, x: augment_one(k, x, views=views, order=order))(keys, images_uint8)


def views(key, images_uint8, *, color_jitter: bool = False, spec: Views = None):
    """Two views per image: float32 [2B, H, W, C]; rows b and B + b are the views of image b.

    release: two calls, one per view (each with its own jitter op order). torchvision: one call over the
    2B images."""
    spec = spec or Views(color_jitter=color_jitter)
    if spec.semantics == "release":
        k_a, k_b = jax.random.split(key)
        return jnp.concatenate([augment(k_a, images_uint8, views=spec), augment(k_b, images_uint8, views=spec)])
    both = jnp.concatenate([images_uint8, images_uint8], axis=0)
    return augment(key, both, views=spec)
