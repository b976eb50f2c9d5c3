"""The clean_p diagnostics and the memory's turnover in metrics.jsonl's chunk records, checked against numpy,
scipy and a replay of the buffer's offers computed here from the run's own inputs (its expert cache)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import tiny as tiny_config
from spr_jax import buffers, chunk_diagnostics, expert_phase, outputs, rng, run_identity, run_loop, run_setup

EDGES32 = chunk_diagnostics.CLEAN_P_EDGES.astype(np.float32)  # compared in float32, as the device does


def _auc(clean_p, keep, corrupt):
    """ROC-AUC of clean_p, kept clean against kept noisy, from scipy's Mann-Whitney U (ties counted half)."""
    x, y = clean_p[keep & ~corrupt], clean_p[keep & corrupt]
    if not (x.size and y.size):
        return None
    return stats.mannwhitneyu(x, y, alternative="two-sided").statistic / (x.size * y.size)


def _device_fields(clean_p, keep, corrupt, known=True):
    m = {k: np.asarray(v) for k, v in chunk_diagnostics.clean_p_diagnostics(
        jnp.asarray(clean_p), jnp.asarray(keep), jnp.asarray(corrupt)).items()}
    m.update(kept=keep.sum(), kept_clean=(keep & ~corrupt).sum(), admitted=0, admitted_noisy=0, evicted=0,
             evicted_noisy=0)
    return chunk_diagnostics.record_fields(m, known)


def test_histograms_ties_and_auc_against_numpy_and_scipy():
    rng_ = np.random.default_rng(0)
    for trial in range(20):
        d = 97
        # A few saturated values (ties at the top, as the filter's lookup table gives), float32 edge values
        # (0.7 rounds below 0.7 in float32, 0.3 above it), 0 and 1, and the rest uniform.
        pool = np.float32([1.0, 1.0, 0.7, 0.3, 0.0, 0.5, np.float32(0.7) - np.float32(1e-7)])
        clean_p = np.where(rng_.random(d) < 0.4, rng_.choice(pool, d), rng_.random(d)).astype(np.float32)
        keep = rng_.random(d) < (0.2 if trial == 0 else 0.7)
        corrupt = rng_.random(d) < (0.0 if trial == 1 else 0.3)
        r = _device_fields(clean_p, keep, corrupt)
        want_clean = np.histogram(clean_p[keep & ~corrupt], bins=EDGES32)[0]
        want_noisy = np.histogram(clean_p[keep & corrupt], bins=EDGES32)[0]
        assert r["clean_p_hist_clean"] == want_clean.tolist() and r["clean_p_hist_noisy"] == want_noisy.tolist()
        assert r["clean_p_hist"] == (want_clean + want_noisy).tolist() and sum(r["clean_p_hist"]) == keep.sum()
        top = clean_p[keep].max()
        assert r["clean_p_max"] == float(top)
        tied = keep & (clean_p == top)
        assert r["clean_p_tied_share"] == pytest.approx(tied.sum() / keep.sum())
        assert r["clean_p_tied_noisy_share"] == pytest.approx((tied & corrupt).sum() / tied.sum())
        want = _auc(clean_p, keep, corrupt)
        assert (r["clean_p_auc"] is None) == (want is None) == (trial == 1)  # trial 1: no noisy sample
        if want is not None:
            assert r["clean_p_auc"] == pytest.approx(want, abs=1e-12)


def test_auc_counts_ties_half_and_orders_by_clean_p():
    keep = np.ones(4, bool)
    corrupt = np.array([False, False, True, True])
    assert _device_fields(np.float32([0.9, 0.8, 0.1, 0.2]), keep, corrupt)["clean_p_auc"] == 1.0
    assert _device_fields(np.float32([0.1, 0.2, 0.9, 0.8]), keep, corrupt)["clean_p_auc"] == 0.0
    tied = _device_fields(np.float32([1.0, 1.0, 1.0, 0.5]), keep, corrupt)
    assert tied["clean_p_auc"] == 0.75 and tied["clean_p_tied_share"] == 0.75  # (1 + 0.5) * 2 / 4
    assert tied["clean_p_hist"] == [0] * 5 + [1] + [0] * 3 + [3]  # 1.0 in the last, closed bin


def test_undefined_values_are_none_and_unknown_noise_splits_nothing():
    nothing = _device_fields(np.float32([0.5, 1.0]), np.zeros(2, bool), np.array([False, True]))
    assert nothing["clean_p_hist"] == [0] * 10 and nothing["clean_p_max"] is None
    assert nothing["clean_p_tied_share"] is None and nothing["clean_p_auc"] is None
    unknown = _device_fields(np.float32([0.5, 1.0]), np.ones(2, bool), np.zeros(2, bool), known=False)
    assert unknown["clean_p_hist"] == [0] * 5 + [1] + [0] * 3 + [1] and unknown["clean_p_max"] == 1.0
    for k in ("clean_p_hist_clean", "clean_p_hist_noisy", "clean_p_tied_noisy_share", "clean_p_auc",
              "buffer_admitted_clean", "buffer_admitted_noisy", "buffer_evicted_clean", "buffer_evicted_noisy"):
        assert unknown[k] is None, k
    assert unknown["buffer_admitted"] == 0 and unknown["buffer_evicted"] == 0
    json.dumps(nothing, allow_nan=False), json.dumps(unknown, allow_nan=False)


def test_turnover_by_membership_of_indices():
    from spr_jax.buffers.purified import init_buffer
    before = init_buffer(4, 2).replace(index=jnp.array([5, 9, 2, -1]), valid=jnp.array([True, True, True, False]),
                                       corrupt=jnp.array([True, False, True, False]))
    # 9 stays (in another slot), 5 and 2 leave, 7 (noisy) and 3 and 11 come in.
    after = before.replace(index=jnp.array([7, 3, 9, 11]), valid=jnp.ones(4, bool),
                           corrupt=jnp.array([True, False, False, False]))
    got = {k: int(v) for k, v in chunk_diagnostics.buffer_turnover(before, after).items()}
    assert got == {"admitted": 3, "admitted_noisy": 1, "evicted": 2, "evicted_noisy": 2}
    assert {int(v) for v in chunk_diagnostics.buffer_turnover(after, after).values()} == {0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("diagnostics"))
    run_loop.run(tiny_config(), workdir, progress=False)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return workdir, [r for r in records if r["type"] == "chunk"]


def _run_inputs(workdir):
    """The run's clean_p and keep per chunk (its own expert cache: nothing is retrained) and its stream."""
    config = tiny_config()
    prepared, s = run_setup.prepare(config)
    out = expert_phase.run(s, run_identity.expert_chunk_descriptions(config, prepared, s.identities), prepared,
                           jnp.asarray(prepared.dataset.train.images), os.path.join(workdir, "expert_cache"),
                           progress=False)
    assert out["trained"] == 0  # the run's own cached clean_p and keep
    return prepared, s, np.asarray(out["clean_p"]), np.asarray(out["keep"], bool)


def test_a_runs_clean_p_diagnostics_match_numpy_on_its_own_inputs(tiny_run):
    workdir, chunks = tiny_run
    prepared, _, clean_p, keep = _run_inputs(workdir)
    corrupt = prepared.noisy.corrupt[prepared.stream.chunks]
    assert len(chunks) == clean_p.shape[0] and prepared.noisy.known
    aucs = []
    for r, cp, kp, cr in zip(chunks, clean_p, keep, corrupt):
        assert r["clean_p_hist_clean"] == np.histogram(cp[kp & ~cr], bins=EDGES32)[0].tolist()
        assert r["clean_p_hist_noisy"] == np.histogram(cp[kp & cr], bins=EDGES32)[0].tolist()
        assert sum(r["clean_p_hist"]) == r["kept"] == kp.sum()
        top = cp[kp].max()
        assert r["clean_p_max"] == float(top)
        assert r["clean_p_tied_share"] == pytest.approx(np.mean(cp[kp] == top))
        assert r["clean_p_tied_noisy_share"] == pytest.approx(np.mean(cr[kp & (cp == top)]))
        want = _auc(cp, kp, cr)
        assert (r["clean_p_auc"] is None) == (want is None)
        if want is not None:
            assert r["clean_p_auc"] == pytest.approx(want, abs=1e-12)
            aucs.append(want)
    assert aucs and max(aucs) > 0.5  # the tiny filter does rank (the test is not vacuous)


def test_a_runs_admissions_and_evictions_match_a_replay_of_its_buffer(tiny_run):
    """The purified buffer's offers replayed here, chunk by chunk, from the run's inputs and keys (its offers
    do not depend on the base's training); the turnover counted with Python sets of training indices."""
    workdir, chunks = tiny_run
    prepared, s, clean_p, keep = _run_inputs(workdir)
    noisy, corrupt = prepared.noisy.noisy, prepared.noisy.corrupt
    buf = s.replay.policy.init(s.buffer_size, prepared.num_classes)
    held, turnover = set(), []
    for c, indices in enumerate(prepared.stream.chunks):
        cands = buffers.Candidates(index=jnp.asarray(indices), label=jnp.asarray(noisy[indices]),
                                   corrupt=jnp.asarray(corrupt[indices]), clean_p=jnp.asarray(clean_p[c]),
                                   keep=jnp.asarray(keep[c]))
        buf = s.replay.policy.offer(buf, rng.chunk_key(s.seed, rng.BUFFER, c), cands)
        now = set(np.asarray(buf.index)[np.asarray(buf.valid)].tolist())
        assert chunks[c]["buffer_size"] == len(now)  # the replayed buffer is the run's
        assert chunks[c]["buffer_purity"] == pytest.approx(np.mean(~corrupt[list(now)]))
        admitted, evicted = now - held, held - now
        turnover.append({"buffer_admitted": len(admitted), "buffer_admitted_noisy": int(corrupt[list(admitted)].sum()),
                         "buffer_evicted": len(evicted), "buffer_evicted_noisy": int(corrupt[list(evicted)].sum())})
        held = now
    for r, want in zip(chunks, turnover):
        assert {k: r[k] for k in want} == want
        assert r["buffer_admitted_clean"] == want["buffer_admitted"] - want["buffer_admitted_noisy"]
        assert r["buffer_evicted_clean"] == want["buffer_evicted"] - want["buffer_evicted_noisy"]
    assert sum(t["buffer_evicted"] for t in turnover) > 0  # the buffer filled and turned over


def test_records_only_gained_keys_in_a_stable_order(tiny_run):
    _, chunks = tiny_run
    first = ["type", "chunk", "task", "base_loss", "replayed_buffer", "kept", "filter_precision", "filter_recall",
             "buffer_size", "buffer_purity", "buffer_counts"]
    new = ["clean_p_hist", "clean_p_hist_clean", "clean_p_hist_noisy", "clean_p_max", "clean_p_tied_share",
           "clean_p_tied_noisy_share", "clean_p_auc", "buffer_admitted", "buffer_admitted_clean",
           "buffer_admitted_noisy", "buffer_evicted", "buffer_evicted_clean", "buffer_evicted_noisy"]
    for r in chunks:
        assert list(r) == first + new
        json.dumps(r, allow_nan=False)


def test_the_record_writes_what_the_device_counted():
    m = {"base_loss": 1.0, "replayed_buffer": True, "kept": 5, "kept_clean": 3, "clean": 7, "buffer_valid": 4,
         "buffer_clean": 3, "buffer_counts": np.array([2, 2]), "clean_p_hist_clean": np.array([0] * 9 + [3]),
         "clean_p_hist_noisy": np.array([1] + [0] * 8 + [1]), "clean_p_max": np.float32(1.0), "kept_at_max": 4,
         "kept_noisy_at_max": 1, "auc_twice_u": 9, "admitted": 2, "admitted_noisy": 1, "evicted": 2,
         "evicted_noisy": 0}
    r = outputs.chunk_record(0, 0, m, known=True)
    assert r["clean_p_hist"] == [1] + [0] * 8 + [4] and r["clean_p_tied_share"] == 0.8
    assert r["clean_p_tied_noisy_share"] == 0.25 and r["clean_p_auc"] == 9 / (2 * 3 * 2)
    assert (r["buffer_admitted_clean"], r["buffer_admitted_noisy"], r["buffer_evicted_clean"],
            r["buffer_evicted_noisy"]) == (1, 1, 2, 0)
