"""The scan over a segment of chunks traces a chunk's step once and zeroes padding rows; the host turns the
scan's per-chunk outputs into metrics, each chunk's turnover counted against the memory the chunk before it
left (checked here with Python sets)."""
import jax
import jax.numpy as jnp
import numpy as np

from spr_jax import segment_scan


def test_the_chunk_step_is_traced_once_and_padding_rows_are_zero():
    traces = []

    def real(state, indices, cp, kp):
        traces.append(1)
        return state + 1, {"sum": indices.sum(), "kept": kp.sum()}

    rows = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    run = jax.jit(lambda: segment_scan.scan_chunks(real, jnp.int32(0), rows, jnp.ones((3, 4)), jnp.ones((3, 4), bool),
                                                   jnp.array([True, True, False])))
    state, out = run()
    assert len(traces) == 1  # the skip branch takes its shapes from the real branch's trace
    assert int(state) == 2 and out["sum"].tolist() == [6, 22, 0] and out["kept"].tolist() == [4, 4, 0]


def _memory(index, corrupt, label):
    index = np.asarray(index, np.int32)
    return segment_scan.MemoryView(index=index, label=np.asarray(label, np.int32),
                                   corrupt=np.asarray(corrupt, bool), valid=index >= 0)


def test_segment_metrics_count_each_chunk_against_the_memory_before_it():
    before = _memory([4, 7, -1], [True, False, False], [1, 0, 0])
    after = [_memory([4, 7, 9], [True, False, True], [1, 0, 2]),   # 9 (noisy) comes in
             _memory([2, 7, 9], [False, False, True], [2, 0, 2])]  # 4 (noisy) leaves, 2 comes in
    keep = np.array([[True, False, True], [True, True, False]])
    corrupt = np.array([[True, False, False], [False, True, False]])
    clean_p = np.float32([[0.9, 0.2, 0.9], [0.5, 0.7, 0.1]])
    pad = _memory([0, 0, 0], [False] * 3, [0] * 3)
    outputs = {"base_loss": np.float32([1.5, 0.5, 0.0]), "replayed_buffer": np.array([False, True, False]),
               "clean_p": np.concatenate([clean_p, np.zeros((1, 3), np.float32)]),
               "keep": np.concatenate([keep, np.zeros((1, 3), bool)]),
               "corrupt": np.concatenate([corrupt, np.zeros((1, 3), bool)]),
               "memory": jax.tree.map(lambda *a: np.stack(a), *after, pad)}
    m = segment_scan.segment_metrics(outputs, before, np.array([True, True, False]), num_classes=3)
    held = [set(before.index[before.valid].tolist())] + [set(a.index[a.valid].tolist()) for a in after]
    for c in range(2):
        admitted, evicted = held[c + 1] - held[c], held[c] - held[c + 1]
        assert m["admitted"][c] == len(admitted) and m["evicted"][c] == len(evicted)
        assert m["kept"][c] == keep[c].sum() and m["kept_clean"][c] == (keep[c] & ~corrupt[c]).sum()
        assert m["buffer_counts"][c].tolist() == np.bincount(after[c].label[after[c].valid], minlength=3).tolist()
    assert m["admitted_noisy"].tolist() == [1, 0, 0] and m["evicted_noisy"].tolist() == [0, 1, 0]
    assert m["clean_p_max"][0] == np.float32(0.9) and m["kept_at_max"][0] == 2 and m["kept_noisy_at_max"][0] == 1
    assert m["base_loss"].tolist() == [1.5, 0.5, 0.0]
    for k, v in m.items():  # the padding row is zeros
        assert not np.any(v[2]), k
