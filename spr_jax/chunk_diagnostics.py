"""SPR's own per-chunk diagnostics: why the purified buffer got purer or not.

The buffer admits the filter's kept samples and evicts, within a class, the lowest clean_p, the oldest among
equals; so its purity follows how the kept noisy samples rank by clean_p against the kept clean ones, above
all how many share the chunk's highest clean_p exactly (the filter's lookup table saturates, and among those
eviction is oldest-first, blind to the label). Per chunk, of the kept samples:
- clean_p histograms, right and wrong labels apart: bin k counts CLEAN_P_EDGES[k] <= clean_p <
  CLEAN_P_EDGES[k + 1] (k/10 to (k+1)/10, compared in float32 as clean_p is), the last bin closed at 1; a
  value outside [0, 1] counts in the end bin on its side, so the bins add up to `kept`;
- the highest clean_p and how many kept samples (and how many noisy ones) share it exactly;
- the ROC-AUC of clean_p at telling a right label from a wrong one: U / (n_clean n_noisy), U the Mann-Whitney
  statistic, pairs (clean, noisy) with the clean one above counted 1 and ties 1/2;
and of the memory, its admissions and evictions over the chunk, of clean and noisy samples.

Computed on the host, once a segment of chunks is back from the device, from what each chunk's step hands
back (segment_scan.chunk_outputs: its clean_p, keep and noisy flags and the memory's slots); masks and integer
counts only, so nothing rounds, and none of it is compiled into the training programs (it was a quarter of
a tiny online learner's segment program's XLA compile time). `record_fields` turns them into metrics.jsonl's fields (None where a value is
undefined: nothing kept, an empty group, noise not known).
"""
import numpy as np

CLEAN_P_BINS = 10
CLEAN_P_EDGES = np.linspace(0.0, 1.0, CLEAN_P_BINS + 1)


def clean_p_histogram(clean_p, mask) -> np.ndarray:
    """int64 [CLEAN_P_BINS]: the masked samples per clean_p bin (float32 clean_p against float32 edges)."""
    inner = CLEAN_P_EDGES[1:-1].astype(np.float32)
    bins = np.sum(np.asarray(clean_p, np.float32)[:, None] >= inner[None, :], axis=1)
    return np.bincount(bins[np.asarray(mask, bool)], minlength=CLEAN_P_BINS)


def clean_p_diagnostics(clean_p, keep, corrupt) -> dict:
    """The kept samples' clean_p histograms (right and wrong labels apart), the chunk's highest kept clean_p
    (-inf if nothing was kept), how many kept (and kept noisy) samples share it, and twice the Mann-Whitney U
    of clean kept against noisy kept (an integer: ties count 1)."""
    clean_p = np.nan_to_num(np.asarray(clean_p, np.float32), nan=0.0, posinf=1.0, neginf=0.0)  # as stored
    keep, corrupt = np.asarray(keep, bool), np.asarray(corrupt, bool)
    clean_kept, noisy_kept = keep & ~corrupt, keep & corrupt
    top = np.max(np.where(keep, clean_p, -np.inf)).astype(np.float32)
    tied = keep & (clean_p == top)
    # Per clean kept sample, the noisy kept ones strictly below it and at or below it: lookups in their
    # sorted clean_p.
    noisy_sorted = np.sort(clean_p[noisy_kept])
    below = np.searchsorted(noisy_sorted, clean_p, side="left")
    at_or_below = np.searchsorted(noisy_sorted, clean_p, side="right")
    return {
        "clean_p_hist_clean": clean_p_histogram(clean_p, clean_kept),
        "clean_p_hist_noisy": clean_p_histogram(clean_p, noisy_kept),
        "clean_p_max": top,
        "kept_at_max": int(tied.sum()),
        "kept_noisy_at_max": int((tied & corrupt).sum()),
        "auc_twice_u": int(np.sum(np.where(clean_kept, below + at_or_below, 0))),
    }


def buffer_turnover(before, after) -> dict:
    """The memory's admissions and evictions over a chunk, for any policy's state (anything with [size]
    `index`, `valid` and `corrupt`), by membership of training indices (the stream never repeats one):
    admitted = in the memory after the chunk and not before it, evicted = before and not after. Net over the
    chunk, so that buffer_size and its clean count move by exactly admitted - evicted: a sample that entered
    and left within the chunk is neither."""
    b_index, b_valid, b_corrupt = (np.asarray(getattr(before, f)) for f in ("index", "valid", "corrupt"))
    a_index, a_valid, a_corrupt = (np.asarray(getattr(after, f)) for f in ("index", "valid", "corrupt"))
    admitted = a_valid & ~np.isin(a_index, b_index[b_valid])
    evicted = b_valid & ~np.isin(b_index, a_index[a_valid])
    return {"admitted": int(admitted.sum()), "admitted_noisy": int((admitted & a_corrupt).sum()),
            "evicted": int(evicted.sum()), "evicted_noisy": int((evicted & b_corrupt).sum())}


def auc_from_twice_u(twice_u: int, n_clean: int, n_noisy: int):
    """ROC-AUC from twice the Mann-Whitney U; None if a group is empty."""
    return twice_u / (2 * n_clean * n_noisy) if n_clean and n_noisy else None


def record_fields(m, known: bool) -> dict:
    """metrics.jsonl's diagnostic fields of a chunk from its per-chunk metrics `m` (host values); the right /
    wrong label splits are None when the noise is not known (every corrupt flag is then False)."""
    kept, kept_clean = int(m["kept"]), int(m["kept_clean"])
    hist_clean, hist_noisy = (np.asarray(m[k], np.int64) for k in ("clean_p_hist_clean", "clean_p_hist_noisy"))
    at_max, noisy_at_max = int(m["kept_at_max"]), int(m["kept_noisy_at_max"])
    admitted, evicted = int(m["admitted"]), int(m["evicted"])
    admitted_noisy, evicted_noisy = int(m["admitted_noisy"]), int(m["evicted_noisy"])

    def split(v):
        return v if known else None

    return {
        "clean_p_hist": (hist_clean + hist_noisy).tolist(),  # every kept sample
        "clean_p_hist_clean": split(hist_clean.tolist()),
        "clean_p_hist_noisy": split(hist_noisy.tolist()),
        "clean_p_max": float(m["clean_p_max"]) if kept else None,
        "clean_p_tied_share": at_max / kept if kept else None,  # kept samples at clean_p_max exactly
        "clean_p_tied_noisy_share": split(noisy_at_max / at_max if at_max else None),  # of those tied
        "clean_p_auc": split(auc_from_twice_u(int(m["auc_twice_u"]), kept_clean, kept - kept_clean)),
        "buffer_admitted": admitted,
        "buffer_admitted_clean": split(admitted - admitted_noisy),
        "buffer_admitted_noisy": split(admitted_noisy),
        "buffer_evicted": evicted,
        "buffer_evicted_clean": split(evicted - evicted_noisy),
        "buffer_evicted_noisy": split(evicted_noisy),
    }
