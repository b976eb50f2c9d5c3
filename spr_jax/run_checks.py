"""The checks of a run's own results: a diverged or rule-breaking replay stopped before anything of it is
written, the warnings that say when an evaluation's numbers mean little, and the divergence rule judged at
the end of a run (exploding losses, an accuracy at chance), whose verdict ends the run with exit status 3."""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from spr_jax.errors import Diverged, UserError


def check_replay(names: dict, s, state, m, n: int, start: int, stream, keep, end: int) -> None:
    """The chunks [start, end) just replayed left a usable state: Diverged (naming the chunk and the field
    to change) if the base's loss or weights are non-finite; UserError if the buffer policy admitted a
    sample the filter did not keep. Run before anything of these chunks is written. `names` holds the
    config values the messages quote ({"ssl.lr": ..., "buffer.policy": ...})."""
    if s.replay.epochs > 0:  # (an untrained base reports a NaN loss by design)
        bad = np.flatnonzero(~np.isfinite(np.asarray(m["base_loss"])[:n]))
        what = "loss" if bad.size else _non_finite_part(state.base)  # (Adam's moments overflow first at times)
        if what:
            c = start + int(bad[0]) if bad.size else end - 1
            raise Diverged(f"diverged: the base's self-supervised training gave a non-finite {what} at chunk {c}; "
                           f"nothing of it was written",
                           f"{likely_fields(names, SSL_FIELDS)}; {_kept(start)}")
    buffer = jax.device_get(state.buffer)
    index, valid = np.asarray(buffer.index), np.asarray(buffer.valid)
    if index.ndim == 2:  # replicated over data-parallel devices
        index, valid = index[0], valid[0]
    if s.buffer_size and valid.any():
        offered = stream.chunks[:end][np.asarray(keep[:end], bool)]
        stray = ~np.isin(index[valid], offered)
        if stray.any():
            raise UserError(f"config.buffer.policy={names['buffer.policy']!r} admitted {int(stray.sum())} samples "
                            f"the filter did not keep (e.g. training sample {int(index[valid][stray][0])}), by "
                            f"chunk {end - 1}",
                            "a buffer policy may only store candidates with keep=True (docs/extending.md)")


def check_online(names: dict, state, m, n: int, start: int, end: int) -> None:
    """An online learner's chunks [start, end) left finite losses and weights, else Diverged naming the chunk
    and config.online.lr. Run before anything of these chunks is written."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(m["base_loss"])[:n]))
    what = "loss" if bad.size else _non_finite_part(state.learner)
    if not what and state.label_logits is not None and not bool(jnp.isfinite(state.label_logits).all()):
        what = "Pencil label logit"  # (online Pencil's learned labels)
    if what:
        raise Diverged(f"diverged: the online learner's training gave a non-finite {what} at chunk "
                       f"{start + int(bad[0]) if bad.size else end - 1}; nothing of it was written",
                       f"{likely_fields(names, ONLINE_FIELDS)}; {_kept(start)}")


def _kept(start: int) -> str:
    return f"the checkpoint before chunk {start} is kept" if start else "no checkpoint was written"


def _non_finite_part(train_state) -> str:
    """'weight', 'BatchNorm statistic' or 'optimizer state' for the first part of a TrainState holding a
    non-finite value, or ''."""
    for part, name in (("params", "weight"), ("batch_stats", "BatchNorm statistic"), ("opt_state", "optimizer state")):
        leaves = [x for x in jax.tree.leaves(getattr(train_state, part, None)) if jnp.issubdtype(x.dtype, jnp.inexact)]
        if not all(bool(jnp.isfinite(x).all()) for x in leaves):
            return name
    return ""


# The fields a divergence's hint names, by the phase that diverged (ssl.* is shared by experts and base).
SSL_FIELDS = ("ssl.lr", "ssl.temperature")
FINETUNE_FIELDS = ("eval.lr", "eval.clip")
ONLINE_FIELDS = ("online.lr",)


def _default(field: str):
    from spr_jax import configlib
    section, name = field.split(".")
    return configlib.base_config()[section][name]


def ordered_fields(values: dict, fields) -> list:
    """The fields of `fields` that `values` holds, farthest from their defaults (configlib.base_config) first:
    the likely cause first (distance: the ratio's order of magnitude for positive numbers)."""
    def distance(field):
        v, d = values[field], _default(field)
        try:
            return abs(math.log10(float(v) / float(d))) if float(v) > 0 and float(d) > 0 else float(v != d)
        except (TypeError, ValueError):
            return float(v != d)
    return sorted(dict.fromkeys(f for f in fields if f in values), key=distance, reverse=True)


def likely_fields(values: dict, fields) -> str:
    """'check config.ssl.temperature=1e-06 (the default is 0.5) first, then config.ssl.lr=0.0003 (its
    default)': ordered_fields in words; `values`: the run's value of each field."""
    parts = [f"config.{f}={values[f]!r} " + ("(its default)" if values[f] == _default(f)
                                             else f"(the default is {_default(f)!r})")
             for f in ordered_fields(values, fields)]
    if not parts:
        return ""
    return "check " + parts[0] + (" first, then " + ", then ".join(parts[1:]) if parts[1:] else "")


def evaluation_warnings(s, record: dict, chunk_records: list, episodes, task: int, clean_stream: bool = False) -> list:
    """What makes an evaluation's numbers meaningless, in words: a memory too small to fine-tune on, or a
    filter that kept nothing over the task's chunks (`clean_stream`: the stream has no wrong label, where
    SPR's filter often keeps nothing)."""
    out = []
    size = record.get("buffer_size", 0)
    if s.online is None and size < s.eval.batch_size:
        out.append(f"after task {task}: the memory holds {size} samples, fewer than config.eval.batch_size="
                   f"{s.eval.batch_size}, so the classifier was not fine-tuned and its accuracy is chance level")
    per_class = np.asarray(record.get("class_accuracy", []))
    seen = sorted({k for t in range(task + 1) for k in episodes[t]}) if per_class.size else []
    if len(seen) > 2 and np.sum(per_class[seen] == 1.0) == 1 and np.sum(per_class[seen] > 0) == 1:
        k = seen[int(np.argmax(per_class[seen]))]
        out.append(f"after task {task}: the classifier predicts class {k} for every test sample of the classes "
                   f"seen (a collapsed fine-tuning or base; check config.eval.lr and config.ssl.lr)")
    mine = [r for r in chunk_records if r["task"] == task]
    if mine and s.online is None and sum(r["kept"] for r in mine) == 0:
        why = ('on a stream without wrong labels SPR\'s filter often keeps nothing: docs/algorithm.md, "Noise 0.0 '
               'with this filter"' if clean_stream else "check config.ssl.lr and config.ssl.temperature: the experts' "
               "features may have collapsed")
        out.append(f"task {task}: the filter kept no sample in any of its {len(mine)} chunks ({why})")
    return out


# --- The divergence rule ---------------------------------------------------------------------------------
# A run whose training diverged or collapsed ends with exit status 3 (errors.Diverged). A non-finite loss,
# feature or weight stops it at once, nothing non-finite written (check_replay, check_online, expert_phase,
# evaluate). The rest is judged at the end (`divergence`), once its files are written, summary.json's
# "diverged" holding the verdict; a finished run's rerun repeats it. Thresholds, with the measurements of
# healthy runs they come from (metrics.jsonl and the expert caches; AMD EPYC CPU):
#
# SSL_CEILING: an expert's final loss or the base's loss of any chunk above 1.5 x ln(2b - 1), the NT-Xent of
#   an encoder mapping every view alike, i.e. what no learning at all gives (b: the batch; a whole chunk for
#   an expert). Healthy, loss / ln(2b - 1): tiny (seeds 0 and 1, noise 0.2 and 0.4, a kNN filter, buffer 20
#   and 40) experts 0.997-1.002 and base 0.98-1.003; digits (seed 0) experts 0.84-0.91, base 0.80-0.89;
#   fashion_mnist_cpu on the release's stream (seeds 1-7) experts 0.84-0.88, base 0.78-0.85. On tiny,
#   ssl.temperature=0.01 (poor but learning: 40% accuracy) peaks at 1.04, 1e-3 at 1.42-1.94 (experts) and
#   2.3 (base), 1e-6 above 1000; a collapsed encoder (ssl.lr=1e4) gives 1.000 exactly.
# SSL_GROWTH: the base's loss of some chunk above 1.5 x its first chunk's (healthy: at most 1.010, digits).
# FINETUNE_CEILING: an evaluation's fine-tune loss of some epoch above 5 x ln K (K classes: the cross-entropy
#   of a uniform prediction, where a fresh head starts). Healthy: at most 1.85 ln K (GDumb + JoCoR's joint
#   loss of two networks, tiny); cross-entropy at most 1.0 ln K (tiny), 0.93 (digits), 0.73
#   (fashion_mnist_cpu). On tiny, eval.lr=0.1 gives 33-57 ln K in the first epoch, eval.lr=1e4 about 1e16.
# FINETUNE_GROWTH: some epoch's loss above 3 x the first epoch's (healthy: never above the first one). With
#   Pencil (eval.loss=pencil) only its first stage's epochs: its later stages minimise KL(f || learned labels)
#   plus other terms, which on fashion_mnist_cpu at 60% noise grew from 0.88-1.58 to 2.83-4.87 in healthy runs
#   (final accuracy 40.1 +- 8.1%, GDumb + SL's 38.6 on the same config).
# ONLINE_CEILING: an online learner's last-step loss of a chunk above 5 x ln K, chunks starting a new task
#   left out. Healthy, fashion_mnist_cpu seed 0 at 40% noise: finetune, EWC, ER, MIR and PRS at most 2.3
#   (0.99 ln K) on the other chunks, 2.2-13.3 on the first chunk of a task (a batch of unseen classes; a
#   growth rule of 4x the first chunk's loss flagged all five); tiny: at most 2.9. Also finetune and ER + CE,
#   SL, JoCoR at 20, 40 and 60% noise (tiny seeds 0 and 1, fashion_mnist_cpu seed 1): at most 2.7 ln K on
#   the other chunks, up to 7.8 ln K (18.0, finetune) on a task's first chunk. On tiny, online.lr=0.1
#   gives 52 at chunk 0 (and chance accuracy; 12.6-32.9 ln K for finetune, ER, ER + JoCoR), lr=1 1.9e4.
# Chance: the final accuracy at most chance + max(CHANCE_SDS sd of a chance classifier's accuracy on the N
#   test samples, CHANCE_MIN_MARGIN x chance), chance being the best constant prediction's accuracy on the
#   test samples of the episodes' classes, on a stream whose noisy labels leave each class's majority label
#   right (noise.kind=real: assumed), for the spr protocol (SPR, plain replay, GDumb, multitask). Not for the
#   online baselines: their chance-level results at 60% noise are published results (README: finetune
#   11.3 +- 2.3%, ER + CE 13.1 +- 2.5% on fashion_mnist_cpu). Thresholds: tiny 16.4% (healthy: at least
#   20%, SPR with buffer.size=20; SPR's own settings 50-74%), digits 18.7% (healthy 78.3%),
#   fashion_mnist_cpu 12.5% (healthy spr-protocol runs: 29% and up).
SSL_CEILING = 1.5
SSL_GROWTH = 1.5
FINETUNE_CEILING = 5.0
FINETUNE_GROWTH = 3.0
ONLINE_CEILING = 5.0
CHANCE_SDS = 3.0
CHANCE_MIN_MARGIN = 0.25


def nt_xent_of_no_learning(batch: int) -> float:
    """The NT-Xent of 2 x batch views an encoder maps alike (every similarity equal): ln(2 batch - 1)."""
    return math.log(2 * batch - 1)


def expert_divergence(final_losses, chunk_size: int) -> Optional[str]:
    """A phrase if some expert's final loss (NaN where unknown) is above SSL_CEILING x the loss of no
    learning, else None."""
    losses = np.asarray(final_losses, float)
    limit = SSL_CEILING * nt_xent_of_no_learning(chunk_size)
    bad = np.flatnonzero(np.isfinite(losses) & (losses > limit))
    if not bad.size:
        return None
    worst = int(bad[np.argmax(losses[bad])])
    return (f"the experts' self-supervised loss ended above {limit:.3g} ({SSL_CEILING:g} x ln(2D - 1), what no "
            f"learning gives) in {bad.size} of {losses.size} chunks (up to {losses[worst]:.3g}, chunk {worst})")


def base_divergence(chunk_records: list, batch_size: int, chunk_size: int) -> Optional[str]:
    """A phrase if the base's self-supervised loss per chunk exploded (SSL_CEILING, SSL_GROWTH), else None."""
    losses = [(r["chunk"], r["base_loss"]) for r in chunk_records if r.get("base_loss") is not None]
    if not losses:
        return None
    limit = SSL_CEILING * nt_xent_of_no_learning(min(batch_size, chunk_size))
    first = losses[0][1]
    chunk, worst = max(losses, key=lambda x: x[1])
    if worst > limit:
        return (f"the base's self-supervised loss reached {worst:.3g} at chunk {chunk}, above {limit:.3g} "
                f"({SSL_CEILING:g} x ln(2B - 1), what no learning gives)")
    if first > 0 and worst > SSL_GROWTH * first:
        return (f"the base's self-supervised loss grew from {first:.3g} (chunk {losses[0][0]}) to {worst:.3g} "
                f"(chunk {chunk}), more than {SSL_GROWTH:g}x")
    return None


def finetune_divergence(evals: list, num_classes: int, growth_epochs: Optional[int] = None) -> Optional[str]:
    """A phrase if some evaluation's fine-tune loss per epoch exploded (FINETUNE_CEILING, FINETUNE_GROWTH; the
    growth judged on the first `growth_epochs` epochs, all by default: Pencil's later stages minimise another
    loss, its first stage's epochs alone are comparable)."""
    limit = FINETUNE_CEILING * math.log(max(num_classes, 2))
    for r in evals:
        curve = r.get("finetune_loss") or []
        if not curve:
            continue
        worst = max(curve)
        if worst > limit:
            return (f"the fine-tune's loss reached {worst:.3g} after task {r['after_task']}, above {limit:.3g} "
                    f"({FINETUNE_CEILING:g} x ln {num_classes}, where a fresh classifier starts)")
        grown = max(curve[:growth_epochs]) if curve[:growth_epochs] else 0.0
        if curve[0] > 0 and grown > FINETUNE_GROWTH * curve[0]:
            return (f"the fine-tune's loss grew from {curve[0]:.3g} to {grown:.3g} after task {r['after_task']}, "
                    f"more than {FINETUNE_GROWTH:g}x its first epoch")
    return None


def online_divergence(chunk_records: list, num_classes: int) -> Optional[str]:
    """A phrase if an online learner's loss per chunk (its last step's, metrics.jsonl's base_loss) exploded,
    above ONLINE_CEILING x ln K in a chunk that does not start a new task; else None. The first chunk of a new
    task ends on that task's first batches, classes the learner has never been trained on, so its loss is
    judged by nothing (healthy learners reach 13 there, see ONLINE_CEILING). No growth rule: the online
    learner's problem grows with every task (more classes, the same noise), and so does its loss."""
    losses = [(r["chunk"], r["base_loss"]) for i, r in enumerate(chunk_records) if r.get("base_loss") is not None
              and (i == 0 or r.get("task") == chunk_records[i - 1].get("task"))]
    if not losses:
        return None
    limit = ONLINE_CEILING * math.log(max(num_classes, 2))
    chunk, worst = max(losses, key=lambda x: x[1])
    if worst > limit:
        return (f"the online learner's loss reached {worst:.3g} at chunk {chunk}, above {limit:.3g} "
                f"({ONLINE_CEILING:g} x ln {num_classes}, where a fresh classifier starts)")
    return None


def chance_level(test_labels, episodes) -> tuple:
    """(chance, limit): the accuracy of the best constant prediction on the test samples of the episodes'
    classes, and the accuracy at or below which a run counts as at chance (see CHANCE_SDS)."""
    labels = np.asarray(test_labels)
    labels = labels[np.isin(labels, np.concatenate([np.asarray(t) for t in episodes]))]
    if not labels.size:
        return 0.0, 0.0
    chance = float(np.bincount(labels).max() / labels.size)
    margin = max(CHANCE_SDS * math.sqrt(chance * (1 - chance) / labels.size), CHANCE_MIN_MARGIN * chance)
    return chance, chance + margin


def learnable(prepared) -> bool:
    """Whether the stream's noisy labels leave every class's majority label right: among the streamed samples
    of each true class of the episodes, its own label is the most frequent, strictly (so a classifier fitting
    the noisy labels predicts the true class). Real noise (truth unknown) counts as learnable."""
    noisy = prepared.noisy
    if not noisy.known:
        return True
    streamed = np.asarray(prepared.stream.chunks).reshape(-1)
    true, seen = np.asarray(noisy.true)[streamed], np.asarray(noisy.noisy)[streamed]
    classes = np.unique(np.concatenate([np.asarray(t) for t in prepared.episodes]))
    for k in np.intersect1d(np.unique(true), classes):
        counts = np.bincount(seen[true == k], minlength=int(k) + 1)
        if counts[k] <= np.max(np.delete(counts, k), initial=0):
            return False
    return True


def divergence(s, prepared, chunk_records: list, evals: list, expert_losses, values: dict) -> Optional[dict]:
    """The divergence rule's verdict on a finished run: None, or {"message": one line, "hint": one line,
    "fields": the config fields named, likely first} when a loss exploded (experts, base, fine-tune) or the
    final accuracy is at chance on a learnable stream (spr protocol). `values`: the run's value of every field
    a hint may name (run_identity's `quoted`)."""
    causes = []  # (phrase, fields)
    if expert_losses is not None:
        phrase = expert_divergence(expert_losses, prepared.stream.chunk_size)
        if phrase:
            causes.append((phrase, SSL_FIELDS))
    if s.online is None and s.replay.epochs > 0:
        phrase = base_divergence(chunk_records, s.replay.batch_size, prepared.stream.chunk_size)
        if phrase:
            causes.append((phrase, SSL_FIELDS))
    if s.online is not None:
        phrase = online_divergence(chunk_records, prepared.num_classes)
        if phrase:
            causes.append((phrase, ONLINE_FIELDS))
    phrase = finetune_divergence(evals, prepared.num_classes,
                                 s.eval.pencil[4] if getattr(s.eval, "pencil", ()) else None)
    if phrase:
        causes.append((phrase, ONLINE_FIELDS if s.online is not None else FINETUNE_FIELDS))
    special_hint = ""
    if s.online is None and evals and learnable(prepared):
        chance, limit = chance_level(prepared.dataset.test.labels, prepared.episodes)
        last = evals[-1]
        if last["accuracy"] <= limit:
            phrase = (f"the final accuracy {100 * last['accuracy']:.1f}% is at chance ({100 * chance:.1f}%; "
                      f"{100 * limit:.1f}% or less counts as chance here) on a stream whose majority labels are right")
            fields = () if causes else SSL_FIELDS + ("eval.lr",)
            counts = np.asarray(chunk_records[-1].get("buffer_counts", []) if chunk_records else [])
            starved = ""  # what the memory lacked at the end, if that explains it
            if not last.get("finetune_loss"):  # the memory held less than a batch: no fine-tune
                starved = (f"the memory held {last.get('buffer_size', 0)} samples, fewer than config.eval."
                           f"batch_size={s.eval.batch_size}, so the classifier was never fine-tuned")
            elif counts.size and np.count_nonzero(counts) == 1:
                starved = (f"the memory held samples of class {int(np.flatnonzero(counts)[0])} alone "
                           f"({int(counts.sum())}), so the classifier learned that class")
            if starved and s.buffer_size < s.eval.batch_size:
                phrase += ": " + starved
                fields = ("buffer.size", "eval.batch_size")
                special_hint = (f"config.buffer.size={values.get('buffer.size')} is smaller than a fine-tune "
                                f"batch (config.eval.batch_size={s.eval.batch_size}); raise it")
            elif starved:
                kept = sum(r.get("kept", 0) for r in chunk_records)
                phrase += f": {starved} (the filter kept {kept} samples over {len(chunk_records)} chunks)"
                fields = SSL_FIELDS
                if float(values.get("noise.rate", 1.0)) == 0.0:
                    special_hint = ('on a stream without wrong labels SPR\'s filter often keeps nothing '
                                    '(docs/algorithm.md, "Noise 0.0 with this filter"); for a clean-stream '
                                    'baseline use --config.filter.kind=none')
            causes.append((phrase, fields))
    if not causes:
        return None
    fields = [f for _, fs in causes for f in fs]
    word = "collapsed" if all(p.startswith("the final accuracy") for p, _ in causes) else "diverged"
    return {"message": f"{word}: " + "; ".join(p for p, _ in causes) + "; the run's files are written",
            "hint": special_hint or likely_fields(values, fields), "fields": ordered_fields(values, fields)}
