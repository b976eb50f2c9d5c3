"""The classifier of the AUM and INCV filters: a linear softmax classifier on one chunk's expert features.

Both papers train a deep network on the noisy data itself. Inside the filter seam the expert's features are
what a chunk offers (the SimCLR expert trained on that chunk alone, docs/algorithm.md section 3.1), so here the
network is a linear head on those features, trained from zero weights by full-batch gradient descent on the
(weighted) mean cross-entropy: one step plays the part of one epoch. It is a pure function of its inputs
(no draws), float32 with every matmul at full precision, and cheap: a chunk is a few hundred samples.

    logits = x W + b,  x the feature row scaled to unit length (a zero row stays zero)
    step:  G = w (softmax(logits) - onehot(y)) / sum(w),  W <- W - lr x^T G,  b <- b - lr sum_i G_i

The gradient is written out (it is the exact gradient of the loss), so the tests can transcribe it in numpy.
"""
import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def unit_rows(features):
    """Rows scaled to unit L2 length (float32); an all-zero row stays zero."""
    f = features.astype(jnp.float32)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def logits_of(x, params):
    w, b = params
    return jnp.dot(x, w, precision=_HI) + b


def margins(logits, labels):
    """z_y - max_{j != y} z_j of every row: the margin of the assigned label y ([D] float32)."""
    num_outputs = logits.shape[-1]
    own = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jnp.arange(num_outputs)[None, :] == labels[:, None], -jnp.inf, logits)
    return own - jnp.max(others, axis=-1)


def train(x, labels, weight, *, num_outputs: int, steps: int, lr: float, track_margins: bool = False):
    """`steps` full-batch gradient steps from zero weights on samples `weight` (float [D], 0 = not trained on).

    x: [D, F] unit-length features; labels: [D] int in [0, num_outputs). Returns (params, margin_sum): the
    final (W [F, K], b [K]), and with `track_margins` the sum over the steps of every sample's margin
    (`margins`) under the weights after each step (zeros otherwise). A sample of weight 0 still gets its
    margins: it is evaluated, not trained on.
    """
    d, f = x.shape
    onehot = jax.nn.one_hot(labels, num_outputs, dtype=jnp.float32)
    weight = weight.astype(jnp.float32)
    scale = weight / jnp.maximum(jnp.sum(weight), 1e-12)  # all-zero weights: no step moves the classifier

    def step(carry, _):
        params, logits = carry
        g = (jax.nn.softmax(logits, axis=-1) - onehot) * scale[:, None]
        w, b = params
        params = (w - lr * jnp.dot(x.T, g, precision=_HI), b - lr * jnp.sum(g, axis=0))
        logits = logits_of(x, params)
        m = margins(logits, labels) if track_margins else jnp.zeros((d,), jnp.float32)
        return (params, logits), m

    params0 = (jnp.zeros((f, num_outputs), jnp.float32), jnp.zeros((num_outputs,), jnp.float32))
    logits0 = jnp.zeros((d, num_outputs), jnp.float32)
    (params, _), m = jax.lax.scan(step, (params0, logits0), None, length=steps)
    return params, jnp.sum(m, axis=0)
