"""The plug-in seams: resolution by name or path, refusal of bad plug-ins before any training, identities in
the expert cache, the built-in policies and encoders, and the plug-ins of examples/ on the tiny config."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from spr_jax import buffers, configlib, experts, filters, models, plugins, run_loop, run_setup, settings
from spr_jax.filters import centrality
from spr_jax.buffers import baselines, purified


def _lines(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _launch(*args, pythonpath=""):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


# --- resolution -------------------------------------------------------------------------------------------

def test_builtin_names_and_paths_resolve_to_the_same_object():
    assert plugins.resolve("centrality", filters.FILTERS, "f") is centrality.purify_chunk
    assert plugins.resolve("spr_jax.filters.centrality:purify_chunk", filters.FILTERS, "f") is centrality.purify_chunk
    assert plugins.resolve("reservoir", buffers.POLICIES, "p") is baselines.RESERVOIR
    assert plugins.resolve("convnet", models.ENCODERS, "e") is models.ConvNet


@pytest.mark.parametrize("kind, message", [
    ("nope", "not a built-in"),
    ("no_such_module_xyz:fn", "cannot be imported"),
    ("spr_jax.filters.centrality:no_such_fn", "has no attribute 'no_such_fn'"),
    ("", "must be a built-in name"),
])
def test_unresolvable_names_are_refused_naming_the_field(kind, message):
    with pytest.raises(configlib.ConfigError, match=message) as e:
        plugins.resolve(kind, filters.FILTERS, "config.filter.kind")
    assert "config.filter.kind" in str(e.value)


def test_settings_fill_keyword_parameters_from_the_block():
    def fn(key, features, labels, *, num_classes, k=3, other=1):
        return k
    assert plugins.accepted_settings(fn, {"k": 7, "kind": "x", "num_classes": 2}, exclude=("num_classes",)) == {"k": 7}
    assert plugins.bind(fn, {"k": 7}) is plugins.bind(fn, {"k": 7})  # one object: compiled code is reused


def test_identity_changes_with_the_source(tmp_path, monkeypatch):
    (tmp_path / "idmod.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = plugins.identity("idmod:f", plugins.resolve("idmod:f", {}, "f"))
    assert first == plugins.identity("idmod:f", plugins.resolve("idmod:f", {}, "f"))
    (tmp_path / "idmod.py").write_text("def f(x):\n    return x + 1\n")
    sys.modules.pop("idmod")
    assert plugins.identity("idmod:f", plugins.resolve("idmod:f", {}, "f"))["source_sha256"] != first["source_sha256"]


# --- checks before training -------------------------------------------------------------------------------

def _build(config):
    return settings.build(config, image_shape=(8, 8, 1), num_classes=10, chunk_size=40)


def test_wrong_filter_outputs_are_refused(tiny_config, tmp_path, monkeypatch):
    (tmp_path / "badfilters.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp
        def one_output(key, features, labels, *, num_classes):
            return jnp.ones(labels.shape)
        def short(key, features, labels, *, num_classes):
            return jnp.ones(3), jnp.ones(3, bool)
        def float_keep(key, features, labels, *, num_classes):
            return jnp.ones(labels.shape), jnp.ones(labels.shape)
        def crashes(key, features, labels, *, num_classes):
            return features @ labels
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, message in [("one_output", "returns one array"), ("short", r"shapes \(3,\)"),
                          ("float_keep", "dtypes float32 and float32"), ("crashes", "fails on a chunk")]:
        tiny_config.filter.kind = f"badfilters:{name}"
        with pytest.raises(configlib.ConfigError, match=message) as e:
            _build(tiny_config)
        assert "config.filter.kind" in str(e.value)


def test_bad_policies_encoders_and_losses_are_refused(tiny_config):
    c = tiny_config
    c.buffer.policy = "spr_jax.buffers.purified:init_buffer"  # a function, not a policy
    with pytest.raises(configlib.ConfigError, match="config.buffer.policy.*BufferPolicy"):
        _build(c)
    c.buffer.policy = "purified"
    c.model.encoder = "spr_jax.losses:nt_xent"
    with pytest.raises(configlib.ConfigError, match="config.model.encoder"):
        _build(c)
    c.model.encoder = "mlp"
    c.eval.loss = "spr_jax.losses:nt_xent"
    with pytest.raises(configlib.ConfigError, match="config.eval.loss"):
        _build(c)


def test_a_filter_from_outside_the_package_runs_through_launch(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "myfilter.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp
        def keep_first_half(key, features, labels, *, num_classes):
            d = labels.shape[0]
            keep = jnp.arange(d) < d // 2
            return jnp.where(keep, 1.0, 0.0), keep
        def keep_first(key, features, labels, *, num_classes, share=0.5):
            d = labels.shape[0]
            keep = jnp.arange(d) < int(d * share)
            return jnp.where(keep, 1.0, 0.0), keep
        def wrong_shape(key, features, labels, *, num_classes):
            return jnp.ones(5), jnp.ones(5, bool)
    """))
    work = tmp_path / "run"
    r = _launch("--config=configs/tiny.py", "--config.filter.kind=myfilter:keep_first_half", f"--workdir={work}",
                pythonpath=str(plugin_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    chunks = [x for x in _lines(work) if x["type"] == "chunk"]
    assert chunks and all(x["kept"] == 20 for x in chunks)  # D = 40
    assert json.load(open(work / "summary.json"))["method"]["filter"] == "myfilter:keep_first_half"

    # A plug-in's keyword setting is a --config field: declared from its signature, parsed as its default's
    # type, passed to the plug-in, and refused with a did-you-mean when misspelt.
    work = tmp_path / "share"
    r = _launch("--config=configs/tiny.py", "--config.filter.kind=myfilter:keep_first", "--config.filter.share",
                "0.25", f"--workdir={work}", pythonpath=str(plugin_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {x["kept"] for x in _lines(work) if x["type"] == "chunk"} == {10}
    assert json.load(open(work / "config.json"))["config"]["filter"]["share"] == 0.25
    for arg, message in [("--config.filter.shar=0.25", "did you mean --config.filter.share"),
                         ("--config.filter.share=many", "filter.share='many' is not of type float")]:
        r = _launch("--config=configs/tiny.py", "--config.filter.kind=myfilter:keep_first", arg,
                    f"--workdir={tmp_path / 'bad'}", pythonpath=str(plugin_dir))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "bad").exists()

    for kind, message in [("myfilter:wrong_shape", "shapes (5,)"), ("myfilter:missing", "no attribute"),
                          ("nomodule:f", "cannot be imported")]:
        bad = tmp_path / kind.replace(":", "_")
        r = _launch("--config=configs/tiny.py", f"--config.filter.kind={kind}", f"--workdir={bad}",
                    pythonpath=str(plugin_dir))
        assert r.returncode != 0 and "config.filter.kind" in r.stderr and message in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "experts" not in r.stderr  # refused before any training


CAPPED_POLICY = textwrap.dedent("""
    import jax
    import jax.numpy as jnp
    import fifo_buffer
    from spr_jax import buffers

    def offer(state, key, c, *, num_classes, per_class=4):
        # First come, first kept, at most per_class samples of a class: needs the run's class count.
        del key
        size = state.valid.shape[0]

        def one(carry, x):
            s, counts = carry
            index, label, corrupt, clean_p, keep = x
            admit = keep & (counts[label] < per_class) & (s.next < size)
            slot = jnp.minimum(s.next, size - 1)
            put = lambda a, v: a.at[slot].set(jnp.where(admit, v, a[slot]))
            s = s.replace(index=put(s.index, index), label=put(s.label, label), corrupt=put(s.corrupt, corrupt),
                          clean_p=put(s.clean_p, clean_p), valid=put(s.valid, True),
                          next=s.next + admit.astype(jnp.int32))
            return (s, counts.at[label].add(admit.astype(jnp.int32))), None

        carry = (state, buffers.class_counts(state, num_classes))
        return jax.lax.scan(one, carry, (c.index, c.label, c.corrupt, c.clean_p, c.keep))[0][0]

    CAPPED = buffers.BufferPolicy(init=fifo_buffer.init, offer=offer, sample=buffers.sample_indices)
""")


def test_a_buffer_policy_takes_settings_and_the_class_count(tmp_path):
    """A policy's keyword setting is a config.buffer field (set on the command line, in a sweep, through
    load_config), and offer's keyword num_classes receives the run's class count."""
    import spr_jax
    from spr_jax import comparison
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "capped.py").write_text(CAPPED_POLICY)
    path = os.pathsep.join([str(plugin_dir), os.path.join(ROOT, "examples")])
    # A clean stream: first come, first kept holds right labels (40% noise would fill the memory's later classes
    # with early chunks' mislabelled samples, an accuracy at chance).
    common = ("--config=configs/tiny.py", "--config.noise.rate=0.0", "--config.filter.kind=none",
              "--config.buffer.policy=capped:CAPPED")
    counts = {}
    for per_class in (None, 3):
        work = tmp_path / f"run_{per_class}"
        r = _launch(*common, *([f"--config.buffer.per_class={per_class}"] if per_class else []), f"--workdir={work}",
                    pythonpath=path)
        assert r.returncode == 0, r.stderr[-3000:]
        counts[per_class] = json.load(open(work / "summary.json"))["final_buffer_counts"]
        assert json.load(open(work / "config.json"))["config"]["buffer"].get("per_class") == per_class
    assert counts == {None: [4] * 10, 3: [3] * 10}  # tiny: 10 classes, a memory of 40
    r = _launch(*common, "--config.buffer.per_clas=3", f"--workdir={tmp_path / 'bad'}", pythonpath=path)
    assert r.returncode == 2 and "did you mean --config.buffer.per_class" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()

    sys.path[:0] = path.split(os.pathsep)
    try:
        config = spr_jax.load_config("tiny", {"buffer.policy": "capped:CAPPED", "buffer.per_class": 2})
        assert config.buffer.per_class == 2
        sweep = spr_jax.load_config("tiny", {"buffer.policy": "capped:CAPPED"})
        assert comparison.parse_sweeps(sweep, ["buffer.per_class=1,2"]) == [{"buffer.per_class": 1},
                                                                             {"buffer.per_class": 2}]
        s = settings.build(config, image_shape=(8, 8, 1), num_classes=10, chunk_size=40)
        assert s.replay.policy.offer.keywords == {"num_classes": 10, "per_class": 2}
        assert s.replay.policy.init is plugins.resolve("capped:CAPPED", buffers.POLICIES, "p").init  # no settings
    finally:
        del sys.path[:2]
        sys.modules.pop("capped", None)


# --- identities in the expert cache ---------------------------------------------------------------------

def test_a_changed_filter_never_reuses_the_cached_experts(tiny_config, tmp_path, monkeypatch):
    tiny_config.cache.dir = str(tmp_path / "cache")
    tiny_config.expert.epochs = 2
    first = run_loop.run(tiny_config, str(tmp_path / "a"), progress=False)

    def keep_everything(key, features, labels, *, num_classes, num_graphs=5, max_iter=6000):
        return jnp.ones(labels.shape, jnp.float32), jnp.ones(labels.shape, bool)

    trained = []
    real_phase = experts.expert_phase

    def counting(*args, **kwargs):
        trained.append(len(kwargs["chunk_ids"]))
        return real_phase(*args, **kwargs)

    monkeypatch.setattr(centrality, "purify_chunk", keep_everything)  # "centrality" now names another function
    monkeypatch.setattr(experts, "expert_phase", counting)
    second = run_loop.run(tiny_config, str(tmp_path / "b"), progress=False)
    assert trained == [first["num_chunks"]]  # every chunk recomputed, none read from SPR's cache
    kept = [x["kept"] for x in _lines(tmp_path / "b") if x["type"] == "chunk"]
    assert all(k == tiny_config.stream.delayed_buffer_size for k in kept)
    assert second["final_purity"] != first["final_purity"] or second["accuracy_matrix"] != first["accuracy_matrix"]


# --- built-in policies ------------------------------------------------------------------------------------

def _cands(index, label, keep=None):
    index = jnp.asarray(index, jnp.int32)
    return buffers.Candidates(index=index, label=jnp.asarray(label, jnp.int32), corrupt=jnp.zeros(index.shape, bool),
                              clean_p=jnp.ones(index.shape, jnp.float32),
                              keep=jnp.ones(index.shape, bool) if keep is None else jnp.asarray(keep))


def test_reservoir_keeps_every_offered_sample_with_probability_size_over_n():
    size, d, chunks, runs = 10, 20, 5, 2000  # n = 100 offered samples, each kept with p = 0.1
    n = d * chunks

    @jax.jit
    def one_run(key):
        state = baselines.RESERVOIR.init(size, 3)
        for c in range(chunks):
            state = baselines.RESERVOIR.offer(state, jax.random.fold_in(key, c),
                                            _cands(jnp.arange(c * d, (c + 1) * d), jnp.zeros(d)))
        return state

    states = jax.vmap(one_run)(jax.random.split(jax.random.PRNGKey(0), runs))
    assert np.asarray(states.valid).all() and (np.asarray(states.seen) == n).all()
    hits = np.zeros(n)
    for row in np.asarray(states.index):
        assert len(set(row.tolist())) == size  # no sample twice
        hits[row] += 1
    # Each sample's count is Binomial(runs, size / n): mean 200, sd 13.4. Bounds at 5 sd for all 100 samples.
    expected, sd = runs * size / n, np.sqrt(runs * size / n * (1 - size / n))
    assert np.abs(hits - expected).max() < 5 * sd
    # Early and late samples alike (algorithm R's point): mean hits of the first and last chunk agree.
    assert abs(hits[:d].mean() - hits[-d:].mean()) < 3 * sd / np.sqrt(d) * np.sqrt(2)


def test_reservoir_skips_samples_the_filter_dropped():
    state = baselines.RESERVOIR.offer(baselines.RESERVOIR.init(4, 2), jax.random.PRNGKey(0),
                                    _cands([5, 6, 7, 8], [0, 1, 0, 1], keep=[True, False, True, False]))
    assert int(state.seen) == 2 and np.asarray(state.index).tolist() == [5, 7, -1, -1]


def test_class_balanced_policy_is_plain_replays_offer():
    k, size, d = 3, 6, 12
    key = jax.random.PRNGKey(4)
    c = _cands(np.arange(d), np.arange(d) % k)
    got = purified.CLASS_BALANCED.offer(purified.CLASS_BALANCED.init(size, k), key, c)
    want = purified.offer(purified.init_buffer(size, k), purified.offer_draws(key, d), c.index, c.label, c.corrupt,
                         c.clean_p, c.keep, plain_replay=True)
    jax.tree.map(np.testing.assert_array_equal, got, want)


# --- encoders ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 28, 28, 1), (2, 32, 32, 3)])
def test_convnet_gives_256_features_on_small_images(shape):
    model = models.make_simclr("convnet")
    v = jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), train=False), jax.random.PRNGKey(0))
    (h, z), _ = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=True, mutable=["batch_stats"]), v)
    assert h.shape == (2, 256) and z.shape == (2, 256)
    assert len(jax.tree_util.tree_leaves(v["batch_stats"])) == 2 * 4


# --- the examples -----------------------------------------------------------------------------------------

def test_the_examples_run_on_the_tiny_config(tiny_config, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    tiny_config.filter.kind = "knn_filter:knn_agreement"
    tiny_config.buffer.policy = "fifo_buffer:FIFO"
    tiny_config.model.encoder = "convnet"
    summary = run_loop.run(tiny_config, str(tmp_path), progress=False)
    chunks = [x for x in _lines(tmp_path) if x["type"] == "chunk"]
    assert all(0 < x["kept"] < 40 for x in chunks)  # k-NN agreement keeps some, drops some
    # FIFO: the buffer holds the 40 most recent kept samples: none of the first three tasks (classes 0-5).
    assert sum(summary["final_buffer_counts"][:6]) == 0 and sum(summary["final_buffer_counts"]) == 40
    assert summary["method"] == {"filter": "knn_filter:knn_agreement", "buffer_policy": "fifo_buffer:FIFO",
                                 "encoder": "convnet", "eval_loss": "cross_entropy", "self_supervised_base": True,
                                 "protocol": "spr"}


def test_knn_filter_keeps_samples_whose_neighbours_agree(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    import knn_filter
    # Two tight clusters; one sample of cluster 0 carries label 1.
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal([5, 0], 0.1, (10, 2)), rng.normal([0, 5], 0.1, (10, 2))]).astype(np.float32)
    labels = np.array([0] * 10 + [1] * 10)
    labels[3] = 1
    clean_p, keep = knn_filter.knn_agreement(None, jnp.asarray(features), jnp.asarray(labels), num_classes=2, k=5)
    assert not bool(keep[3]) and bool(np.delete(np.asarray(keep), 3).all())
    assert float(clean_p[3]) == 0.0 and float(clean_p[0]) == 1.0


def test_gdumb_memory_stays_class_balanced_and_within_size_on_random_streams():
    size, k, d = 24, 6, 30
    for seed in range(4):
        rng = np.random.default_rng(seed)
        state = baselines.GDUMB.init(size, k)
        largest_when_full = size
        for c in range(16):
            classes_now = min(k, 1 + c // 2)  # classes arrive over time, as in a class-incremental stream
            label = rng.integers(0, classes_now, d)
            keep = rng.random(d) < 0.8
            state = baselines.GDUMB.offer(state, jax.random.PRNGKey(100 * seed + c),
                                        _cands(np.arange(c * d, (c + 1) * d), label, keep=keep))
            counts = np.asarray(buffers.class_counts(state, k))
            seen = int((np.asarray(state.offers) > 0).sum())
            assert counts.sum() <= size and int(state.valid.sum()) == counts.sum()
            assert seen <= min(k, 1 + c // 2)
            if counts.sum() == size:  # full: the largest class never grows (it gives way to smaller ones)
                assert counts.max() <= largest_when_full, (counts, largest_when_full)
                largest_when_full = counts.max()
        # Every class offered often enough: balanced to within a sample or two.
        assert counts.sum() == size and counts.max() - counts.min() <= 2, counts
        assert len(set(np.asarray(state.index)[np.asarray(state.valid)].tolist())) == size


def test_sl_loss_matches_a_numpy_transcription():
    from spr_jax import losses
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 7)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = -np.log(p[np.arange(7), labels]).mean()
    q = np.eye(5)[labels]
    log_q = np.where(q > 0, 0.0, -4.0)  # log 0 taken as A = -4
    rce = -(p * log_q).sum(1).mean()
    for alpha, beta in [(0.1, 1.0), (1.0, 0.5)]:
        got = losses.symmetric_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), sl_alpha=alpha, sl_beta=beta)
        np.testing.assert_allclose(got, alpha * ce + beta * rce, rtol=1e-5)
    assert plugins.resolve("sl", losses.EVAL_LOSSES, "config.eval.loss") is losses.symmetric_cross_entropy


def test_gdumb_with_sl_runs_as_a_memory_only_learner(tiny_config, tmp_path):
    from spr_jax import outputs
    c = tiny_config
    c.filter.kind, c.buffer.policy, c.base.epochs, c.eval.loss = "none", "gdumb", 0, "sl"
    summary = run_loop.run(c, str(tmp_path), progress=False)
    chunks = [x for x in _lines(tmp_path) if x["type"] == "chunk"]
    assert all(x["base_loss"] is None for x in chunks)  # the base is never trained
    assert not summary["method"]["self_supervised_base"] and summary["method"]["eval_loss"] == "sl"
    assert "memory-only" in outputs.method_name(summary["method"]) and 0 <= summary["final_accuracy"] <= 1


def test_online_experience_replay_learns_and_fills_its_reservoir(tiny_config, tmp_path):
    from spr_jax import outputs
    c = tiny_config
    c.protocol, c.filter.kind, c.buffer.policy = "online", "none", "reservoir"
    summary = run_loop.run(c, str(tmp_path / "er"), progress=False)
    chunks = [x for x in _lines(tmp_path / "er") if x["type"] == "chunk"]
    assert all(x["replayed_buffer"] for x in chunks)  # from the second stream batch on
    assert chunks[-1]["buffer_size"] == c.buffer.size and all(np.isfinite(x["base_loss"]) for x in chunks)
    assert summary["final_accuracy"] > 0.3 and "online learner" in outputs.method_name(summary["method"])
    # Without replay (fine-tuning) the memory is never used, and the run differs.
    c.online.replay = False
    plain = run_loop.run(c, str(tmp_path / "ft"), progress=False)
    assert not any(x["replayed_buffer"] for x in _lines(tmp_path / "ft") if x["type"] == "chunk")
    assert plain["accuracy_matrix"] != summary["accuracy_matrix"]


def test_small_loss_selection_keeps_exactly_the_lowest_loss_share():
    from spr_jax import losses
    rng = np.random.default_rng(3)
    for n, share in [(16, 0.6), (16, 1.0), (10, 0.25), (7, 0.01), (300, 0.55)]:
        loss = rng.normal(size=n).astype(np.float32)
        keep = np.asarray(losses.small_loss_selection(jnp.asarray(loss), share))
        count = max(1, int(np.floor(share * n + 1e-6)))
        assert keep.sum() == count
        assert set(np.flatnonzero(keep)) == set(np.argsort(loss, kind="stable")[:count])
    # The forget rate ramps linearly from 0 to the noise rate over T_k epochs, then stays.
    rates = [float(losses.forget_rate_schedule(e, forget_rate=0.4, gradual_epochs=5)) for e in range(8)]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4], atol=1e-7)


def test_jocor_loss_matches_a_numpy_transcription():
    from spr_jax import losses
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 16, 5)).astype(np.float32) * 2
    labels = rng.integers(0, 5, 16)
    lam, rate, epoch, tk = 0.3, 0.4, 2, 5
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ce = -np.log(p[:, np.arange(16), labels])
    kl = (p[0] * np.log(p[0] / p[1])).sum(-1) + (p[1] * np.log(p[1] / p[0])).sum(-1)
    joint = (1 - lam) * ce.sum(0) + lam * kl
    remember = int((1 - rate * epoch / (tk - 1)) * 16)  # JoCoR: int(remember_rate * batch)
    want = np.sort(joint)[:remember].mean()
    got = losses.jocor(jnp.asarray(logits), jnp.asarray(labels), epoch, noise_rate=rate, jocor_lambda=lam,
                       jocor_gradual_epochs=tk)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert plugins.resolve("jocor", losses.EVAL_LOSSES, "config.eval.loss") is losses.jocor


def test_gdumb_jocor_trains_two_networks_and_so_does_online_replay(tiny_config, tmp_path):
    c = tiny_config
    c.filter.kind, c.buffer.policy, c.base.epochs, c.eval.loss = "none", "gdumb", 0, "jocor"
    s = run_setup.prepare(c)[1]
    assert s.eval.networks == 2 and not s.eval.pretrained_base
    assert s.eval.loss.keywords["noise_rate"] == c.noise.rate  # the forget rate defaults to the noise rate
    summary = run_loop.run(c, str(tmp_path / "jocor"), progress=False)
    assert summary["method"]["eval_loss"] == "jocor" and 0 <= summary["final_accuracy"] <= 1
    c.eval.loss = "cross_entropy"
    ce = run_loop.run(c, str(tmp_path / "ce"), progress=False)
    assert ce["accuracy_matrix"] != summary["accuracy_matrix"]
    # Experience replay with JoCoR: two classifiers, stacked, trained online; the first one is tested.
    from spr_jax import online
    c.protocol, c.buffer.policy, c.eval.loss = "online", "reservoir", "jocor"
    prepared, s = run_setup.prepare(c)
    state = online.init_state(s.online, s.seed, prepared.dataset.train.images.shape[1:], s.buffer_size)
    kernels = [a for a in jax.tree.leaves(state.learner.params) if a.ndim == 3]
    assert s.online.networks == 2 and kernels and all(k.shape[0] == 2 for k in kernels)
    assert not any(np.array_equal(k[0], k[1]) for k in kernels)  # two different initialisations
    er_jocor = run_loop.run(c, str(tmp_path / "er_jocor"), progress=False)
    c.eval.loss = "cross_entropy"
    er_ce = run_loop.run(c, str(tmp_path / "er_ce"), progress=False)
    assert er_jocor["accuracy_matrix"] != er_ce["accuracy_matrix"] and 0 < er_jocor["final_accuracy"] <= 1


def test_buffer_size_zero_is_a_memory_of_the_whole_stream(tiny_config, tmp_path):
    c = tiny_config
    c.filter.kind, c.buffer.policy, c.buffer.size, c.base.epochs = "none", "reservoir", 0, 0
    prepared, s = run_setup.prepare(c)
    assert s.buffer_size == prepared.stream.chunks.size
    with pytest.raises(ValueError, match="stream's length"):  # without the data, 0 cannot be resolved
        settings.build(c, image_shape=(8, 8, 1), num_classes=10, chunk_size=40)
    run_loop.run(c, str(tmp_path), progress=False)
    evals = [x for x in _lines(tmp_path) if x["type"] == "eval"]
    offered = np.cumsum([np.sum(prepared.stream.chunk_task == t) for t in range(len(evals))]) * \
        prepared.stream.chunk_size
    assert [e["buffer_size"] for e in evals] == offered.tolist()  # every sample offered so far is held
