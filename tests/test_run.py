"""SPR end to end on the tiny config: determinism, outputs, the replay switch, plain replay, and the
expert phase computed ahead equal to experts computed inside the loop (the reference's order)."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny as tiny_config
from spr_jax import checkpoint, compilation, expert_phase, experts, replay_phase, rng, run_identity, run_loop, run_setup, segment_scan
from spr_jax.filters import centrality


def _lines(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny"))
    return run_loop.run(tiny_config(), workdir, progress=False), workdir


def test_outputs_are_complete_and_finite(tiny_run):
    summary, workdir = tiny_run
    config = tiny_config()
    lines = _lines(workdir)
    chunks = [r for r in lines if r["type"] == "chunk"]
    evals = [r for r in lines if r["type"] == "eval"]
    assert len(chunks) == summary["num_chunks"] and len(evals) == len(config.episodes)
    m = np.asarray(summary["accuracy_matrix"], dtype=float)  # null (NaN here) where a task was not yet seen
    seen = np.tril(np.ones((5, 5), bool))
    assert m.shape == (5, 5) and np.isfinite(m[seen]).all() and ((0 <= m[seen]) & (m[seen] <= 1)).all()
    assert all(summary["accuracy_matrix"][i][j] is None for i in range(5) for j in range(i + 1, 5))
    description = json.load(open(os.path.join(workdir, "config.json")))
    assert description["config"] == json.loads(json.dumps(config.to_dict())) and description["versions"]["jax"]
    assert description["plugins"]["filter"]["kind"] == "centrality" and description["machine"]["platform"]
    if description["machine"]["platform"] == "cpu":  # the compiler's per-CPU choices are on record
        from spr_jax import compilation
        assert description["machine"]["cpu_compiler"] == compilation.cpu_choices(1, 0, quick=True)  # (tiny's)
    assert 0 <= summary["final_accuracy"] <= 1 and 0 <= summary["final_purity"] <= 1
    assert len(summary["purity_history"]) == summary["num_chunks"]
    for r in chunks:
        assert np.isfinite(r["base_loss"])
        assert r["buffer_size"] <= config.buffer.size and sum(r["buffer_counts"]) == r["buffer_size"]
    for key in ("average_accuracy", "forgetting", "wall_time_s", "compile_s"):
        assert key in summary
    assert os.path.exists(os.path.join(workdir, "summary.png"))
    # The synthetic classes are easy: the first task is learned, so the loop does train something.
    assert m[0, 0] > 0.6


def test_same_seed_same_summary(tiny_run, tmp_path):
    summary, _ = tiny_run
    again = run_loop.run(tiny_config(), str(tmp_path), progress=False)
    for s in (summary, again):
        s.pop("wall_time_s"), s.pop("compile_s")
    assert json.dumps(summary, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_replay_mixes_in_the_buffer_exactly_once_it_is_full(tiny_run):
    _, workdir = tiny_run
    chunks = [r for r in _lines(workdir) if r["type"] == "chunk"]
    size = tiny_config().buffer.size
    full_before = [False] + [r["buffer_size"] == size for r in chunks[:-1]]
    assert [r["replayed_buffer"] for r in chunks] == full_before
    assert any(full_before) and not all(full_before)


def test_plain_replay_offers_every_sample_and_trains_no_expert(tmp_path, monkeypatch):
    config = tiny_config()
    config.filter.kind, config.buffer.policy = "none", "class_balanced"
    monkeypatch.setattr(experts, "expert_phase", lambda *a, **k: pytest.fail("an expert was trained"))
    summary = run_loop.run(config, str(tmp_path / "new"), progress=False)
    chunks = [r for r in _lines(str(tmp_path / "new")) if r["type"] == "chunk"]
    assert all(r["kept"] == config.stream.delayed_buffer_size for r in chunks)
    assert summary["method"]["filter"] == "none" and summary["method"]["buffer_policy"] == "class_balanced"
    # The deprecated flag is the same run.
    old = tiny_config()
    old.buffer.plain_replay = True
    with pytest.warns(DeprecationWarning, match="plain_replay"):
        again = run_loop.run(old, str(tmp_path / "old"), progress=False)
    assert _without_walls(again) == _without_walls(summary)


def test_expert_phase_ahead_equals_experts_inside_the_loop(tmp_path):
    config = tiny_config()
    prepared, s = run_setup.prepare(config)
    model = s.model
    data = replay_phase.TrainData(images=jnp.asarray(prepared.dataset.train.images),
                                  noisy=jnp.asarray(prepared.noisy.noisy), corrupt=jnp.asarray(prepared.noisy.corrupt))
    ahead = expert_phase.run(s, run_identity.expert_chunk_descriptions(config, prepared, s.identities), prepared, data.images, str(tmp_path),
                             progress=False)
    chunks = prepared.stream.chunks
    n = chunks.shape[0]

    def inline_filter(chunk, indices):
        _, features, _ = experts.train_expert(
            model, data.images[indices], rng.chunk_key(config.seed, rng.EXPERT, chunk), epochs=config.expert.epochs,
            base_lr=config.ssl.lr, warmup_epochs=config.ssl.warmup_epochs)
        return centrality.purify_chunk(rng.chunk_key(config.seed, rng.FILTER, chunk), features, data.noisy[indices],
                                   num_classes=prepared.num_classes, num_graphs=config.filter.num_graphs,
                                   max_iter=config.filter.max_iter)

    def replay(**kw):
        state = replay_phase.init_state(model, config.seed, prepared.dataset.train.images.shape[1:],
                                        config.buffer.size, prepared.num_classes)
        return replay_phase.run_chunks(model, s.replay, state, data, chunks, ahead["clean_p"], ahead["keep"],
                                       np.ones(n, bool), **kw)

    state_a, m_a = replay()
    state_b, m_b = replay(inline_filter=inline_filter)
    np.testing.assert_array_equal(m_a["keep"], m_b["keep"])
    for field in ("index", "label", "valid"):
        np.testing.assert_array_equal(getattr(state_a.buffer, field), getattr(state_b.buffer, field))
    np.testing.assert_allclose(state_a.buffer.clean_p, state_b.buffer.clean_p, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), state_a.base.params,
                 state_b.base.params)


def _without_walls(summary):
    return {k: v for k, v in summary.items() if k not in ("wall_time_s", "compile_s")}  # timings differ


def test_a_killed_run_resumes_to_the_same_summary(tiny_run, tmp_path, monkeypatch):
    summary, _ = tiny_run
    real_run_chunks = replay_phase.run_chunks
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_run_chunks(*args, **kwargs)

    real_phase = experts.expert_phase

    def slow_phase(*args, **kwargs):  # the first session's experts take at least 3 s
        time.sleep(3.0)
        return real_phase(*args, **kwargs)

    monkeypatch.setattr(replay_phase, "run_chunks", dying)
    monkeypatch.setattr(experts, "expert_phase", slow_phase)
    with pytest.raises(KeyboardInterrupt):
        run_loop.run(tiny_config(), str(tmp_path), progress=False)
    assert os.listdir(tmp_path / "checkpoints")
    monkeypatch.setattr(replay_phase, "run_chunks", real_run_chunks)
    monkeypatch.setattr(experts, "expert_phase", real_phase)
    resumed = run_loop.run(tiny_config(), str(tmp_path), progress=False)
    assert _without_walls(resumed) == _without_walls(summary)
    # The resumed session read its experts from the cache; the first session's expert time still counts.
    assert resumed["wall_time_s"]["expert_phase_s"] >= 3.0
    lines = _lines(str(tmp_path))
    assert [r["chunk"] for r in lines if r["type"] == "chunk"] == list(range(summary["num_chunks"]))


def test_a_checkpoint_of_another_config_is_refused(tiny_run):
    _, workdir = tiny_run
    config = tiny_config()
    config.noise.rate = 0.2
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="noise.rate"):
        run_loop.run(config, workdir, progress=False)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_the_expert_cache_is_hit_by_a_second_run_and_missed_on_other_noise(tiny_run, tmp_path, monkeypatch):
    summary, workdir = tiny_run
    config = tiny_config()
    config.cache.dir = os.path.join(workdir, "expert_cache")  # the first run's cache, another workdir

    def no_training(*args, **kwargs):
        raise AssertionError("an expert was trained although every chunk is cached")

    real_phase = experts.expert_phase
    monkeypatch.setattr(experts, "expert_phase", no_training)
    again = run_loop.run(config, str(tmp_path / "second"), progress=False)
    assert _without_walls(again) == _without_walls(summary)

    trained = []

    def counting(*args, **kwargs):
        trained.append(len(kwargs["chunk_ids"]))
        return real_phase(*args, **kwargs)

    monkeypatch.setattr(experts, "expert_phase", counting)
    config.noise.rate = 0.3
    prepared, s = run_setup.prepare(config)
    out = expert_phase.run(s, run_identity.expert_chunk_descriptions(config, prepared, s.identities), prepared,
                           jnp.asarray(prepared.dataset.train.images), config.cache.dir, progress=False)
    assert out["trained"] == prepared.stream.num_chunks == trained[0] and out["cache_hits"] == 0


@pytest.mark.parametrize("method", ["gdumb_jocor", "multitask"])
def test_a_baseline_is_deterministic_and_resumes_to_the_same_summary(method, tmp_path, monkeypatch):
    from spr_jax import comparison as compare
    config = lambda: compare.method_config(tiny_config(), method, 0.4, 3)  # noqa: E731
    whole = run_loop.run(config(), str(tmp_path / "whole"), progress=False)
    real_run_chunks, calls = replay_phase.run_chunks, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_run_chunks(*args, **kwargs)

    monkeypatch.setattr(replay_phase, "run_chunks", dying)
    with pytest.raises(KeyboardInterrupt):
        run_loop.run(config(), str(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(replay_phase, "run_chunks", real_run_chunks)
    resumed = run_loop.run(config(), str(tmp_path / "resumed"), progress=False)
    assert _without_walls(resumed) == _without_walls(whole)
    assert resumed["final_purity"] is not None and 0 < whole["final_accuracy"] <= 1


def test_the_compile_speed_switches_change_nothing(tmp_path):
    """cache.warm_up compiles the replay and evaluation programs while the experts train, cache.cpu_opt_level
    lowers XLA's LLVM level: the same run with both off has the same summary and metrics.jsonl."""
    import threading
    from jax import monitoring
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append((threading.current_thread().name, str(kwargs.get("fun_name"))))

    c = tiny_config()
    c.cache.compile_dir = ""
    # Shapes and settings of their own, so that no earlier test in this process has compiled these programs.
    c.model.proj_dim, c.eval.batch_size, c.eval.test_batch_size = 24, 5, 37
    monitoring.register_event_duration_secs_listener(listener)
    try:
        fast = run_loop.run(c, str(tmp_path / "fast"), progress=False)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    by_thread = {name: {fun for thread, fun in compiled if thread == name} for name, _ in compiled}
    assert {"jit(run_chunks)", "jit(finetune)", "jit(predict)"} <= by_thread["spr_jax-warm-up"], by_thread
    assert not {"jit(run_chunks)", "jit(finetune)", "jit(predict)"} & by_thread["MainThread"], by_thread
    c.cache.warm_up, c.cache.cpu_opt_level = False, -1  # -1: XLA's default LLVM level, 3
    plain = run_loop.run(c, str(tmp_path / "plain"), progress=False)
    assert compilation.compiler_options("cpu") == {"xla_backend_optimization_level": 1}  # the run's level ended
    assert _without_walls(plain) == _without_walls(fast)
    # metrics.jsonl: the same records in the same order. The LLVM level can move the logged base_loss (not
    # the training: the weights are bit-identical) in its last bit.
    records = {}
    for name in ("fast", "plain"):
        with open(tmp_path / name / "metrics.jsonl") as f:
            records[name] = [json.loads(line) for line in f]
    assert len(records["fast"]) == len(records["plain"])
    assert [r["type"] for r in records["fast"]].count("eval") == len(c.episodes)
    for a, b in zip(records["fast"], records["plain"]):
        loss_a, loss_b = a.pop("base_loss", None), b.pop("base_loss", None)
        assert (loss_a is None) == (loss_b is None) and (loss_a is None or loss_a == pytest.approx(loss_b, rel=1e-6))
        assert a == b



@pytest.mark.parametrize("batch_size", [40, 20])  # one chunk batch per epoch before the buffer is full, or two
def test_self_replay_with_one_step_program_trains_as_the_two_branch_form(batch_size):
    """Where the batch shapes allow it the replay program holds one SimCLR step (the n1 chunk batches padded
    to n2, then a loop of n steps); it must train exactly as the two-branch form, which holds one step per
    regime (n1 = D // B chunk batches, then n2 = D // (B / 2) mixed ones), through the chunk the buffer
    fills on."""
    from spr_jax import buffers
    c = tiny_config()
    c.base.batch_size = batch_size
    c.filter.kind, c.buffer.policy = "none", "class_balanced"
    p, s = run_setup.prepare(c)
    data = replay_phase.TrainData(jnp.asarray(p.dataset.train.images), jnp.asarray(p.noisy.noisy),
                                  jnp.asarray(p.noisy.corrupt))
    chunks = jnp.asarray(p.stream.chunks[:3])  # the buffer (P = D) fills on chunk 0: chunks 1-2 mix it in

    def run(one_step_program):
        def chunk(state, indices):
            base, loss, mixed = replay_phase.self_replay(
                s.model, s.replay, state.base, data.images[indices], state.buffer, data,
                segment_scan.chunk_key(state, rng.REPLAY), state.chunk, one_step_program=one_step_program)
            offered = buffers.Candidates(index=indices, label=data.noisy[indices], corrupt=data.corrupt[indices],
                                         clean_p=jnp.ones(indices.shape), keep=jnp.ones(indices.shape, bool))
            buffer = s.replay.policy.offer(state.buffer, segment_scan.chunk_key(state, rng.BUFFER), offered)
            return state.replace(base=base, buffer=buffer, chunk=state.chunk + 1), (loss, mixed)

        state = replay_phase.init_state(s.model, c.seed, p.dataset.train.images.shape[1:], c.buffer.size,
                                        p.num_classes, s.replay.policy)
        return jax.device_get(jax.jit(lambda state: jax.lax.scan(chunk, state, chunks))(state))

    (one, (one_loss, one_mixed)), (two, (two_loss, two_mixed)) = run(True), run(False)
    assert one_mixed.tolist() == two_mixed.tolist() == [False, True, True]
    np.testing.assert_array_equal(one_loss, two_loss)
    for a, b in zip(jax.tree.leaves(one.base), jax.tree.leaves(two.base)):
        np.testing.assert_array_equal(a, b)
