"""Encoders, heads and their PyTorch-like initialisation (docs/algorithm.md section 4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr_jax import models


def _shapes(model, shape):
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), train=False), jax.random.PRNGKey(0))


def test_resnet18_has_torchvision_param_count():
    v = _shapes(models.make_simclr("resnet18"), (2, 32, 32, 3))
    # torchvision resnet18: 11,689,512 params, minus its fc layer (512 * 1000 + 1000).
    assert models.param_count(v["params"]["encoder"]) == 11_176_512
    # BN running statistics: one mean and one var per BN channel, 20 BatchNorms.
    assert len(jax.tree_util.tree_leaves(v["batch_stats"])) == 2 * 20


def test_mlp_param_count_and_projection_head():
    v = _shapes(models.make_simclr("mlp"), (2, 28, 28, 1))
    assert models.param_count(v["params"]["encoder"]) == 784 * 512 + 512 + 512 * 512 + 512 == 664_576
    head = v["params"]["projector"]
    assert head["fc1"]["kernel"].shape == (512, 512) and head["fc2"]["kernel"].shape == (512, 256)
    assert "batch_stats" not in v


@pytest.mark.parametrize("encoder,shape", [("mlp", (2, 28, 28, 1)), ("resnet18", (2, 32, 32, 3))])
def test_classifier_encoder_tree_matches_simclr(encoder, shape):
    s = _shapes(models.make_simclr(encoder), shape)
    c = _shapes(models.make_classifier(encoder, 10), shape)
    for col in s:
        assert (jax.tree_util.tree_structure(s[col]["encoder"]) == jax.tree_util.tree_structure(c[col]["encoder"]))
        same = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, s[col]["encoder"], c[col]["encoder"])
        assert all(jax.tree_util.tree_leaves(same))
    assert c["params"]["head"]["kernel"].shape == (models.make_encoder(encoder).features, 10)


def test_copied_encoder_gives_same_features():
    sim, clf = models.make_simclr("mlp"), models.make_classifier("mlp", 3)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1))
    ps = jax.jit(sim.init)(jax.random.PRNGKey(2), x)["params"]
    pc = jax.jit(clf.init)(jax.random.PRNGKey(3), x)["params"]
    pc = {**pc, "encoder": ps["encoder"]}
    h, _ = jax.jit(sim.apply)({"params": ps}, x)
    logits = jax.jit(clf.apply)({"params": pc}, x)
    np.testing.assert_allclose(logits, h @ pc["head"]["kernel"] + pc["head"]["bias"], rtol=1e-5, atol=1e-5)


def test_linear_init_is_torch_default():
    x = jnp.zeros((2, 28, 28, 1))
    p = jax.jit(models.make_simclr("mlp").init)(jax.random.PRNGKey(0), x)["params"]
    for layer, fan_in in [(p["encoder"]["fc1"], 784), (p["projector"]["fc1"], 512)]:
        bound = 1 / np.sqrt(fan_in)
        for leaf in (layer["kernel"], layer["bias"]):
            leaf = np.asarray(leaf)
            assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.95 * bound
        np.testing.assert_allclose(np.std(layer["kernel"]), bound / np.sqrt(3), rtol=0.02)


def test_resnet18_forward_init_and_batchnorm_momentum():
    model = models.make_simclr("resnet18")
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))

    # One compile (ResNet-18's 20 random conv inits dominate CPU compile time): init in eval mode, then a
    # forward in train mode.
    @jax.jit
    def init_and_train_forward(key):
        (h_eval, _), v = model.init_with_output(key, x, train=False)
        return h_eval, v, model.apply(v, x, train=True, mutable=["batch_stats"])

    h_eval, v, ((h, z), upd) = init_and_train_forward(jax.random.PRNGKey(1))
    assert h_eval.shape == (2, 512)
    enc = v["params"]["encoder"]
    # torchvision: kaiming-normal, fan_out, ReLU gain.
    k = np.asarray(enc["layer3_0"]["conv2"]["kernel"])  # 3x3, 256 -> 256
    np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * 256)), rtol=0.02)
    assert np.all(np.asarray(enc["bn1"]["scale"]) == 1) and np.all(np.asarray(enc["bn1"]["bias"]) == 0)
    assert h.shape == (2, 512) and z.shape == (2, 256)
    assert np.all(np.isfinite(np.asarray(z)))
    # torch momentum 0.1: running_mean = 0.9 * 0 + 0.1 * batch mean of the stem's BN input.
    conv = jax.lax.conv_general_dilated(x, enc["conv1"]["kernel"], (2, 2), [(3, 3), (3, 3)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(upd["batch_stats"]["encoder"]["bn1"]["mean"], 0.1 * conv.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("encoder,shape", [("mlp", (28, 28, 1)), ("convnet", (16, 16, 3))])
def test_an_evaluation_classifier_is_the_base_encoder_plus_the_head_a_whole_init_draws(encoder, shape):
    from spr_jax import evaluate, simclr
    base = simclr.init_state(models.make_simclr(encoder, 32), jax.random.PRNGKey(1), shape)
    clf = models.make_classifier(encoder, 10)
    got = evaluate.classifier_variables(clf, base, jax.random.PRNGKey(2), shape)
    whole = clf.init(jax.random.PRNGKey(2), jnp.zeros((1,) + shape), train=False)  # head drawn with the encoder
    assert jax.tree.structure(got) == jax.tree.structure(whole)
    for a, b in zip(jax.tree.leaves(got["params"]["head"]), jax.tree.leaves(whole["params"]["head"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(got["params"]["encoder"]), jax.tree.leaves(base.params["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if "batch_stats" in whole:
        for a, b in zip(jax.tree.leaves(got["batch_stats"]), jax.tree.leaves(base.batch_stats["encoder"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The head's init is compiled, the whole init runs op by op: the same bits for other keys too.
    features = jnp.zeros((1, models.make_encoder(encoder).features))
    for seed in range(3, 13):
        head = evaluate.classifier_variables(clf, base, jax.random.PRNGKey(seed), shape)["params"]["head"]
        eager = clf.init(jax.random.PRNGKey(seed), features, method=models.Classifier.head_only)["params"]["head"]
        for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(eager)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
