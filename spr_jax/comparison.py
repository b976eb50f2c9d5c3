"""The comparison: methods x noise rates x seeds on one config, as `launch.py --mode=compare`.

Each method is a composition of plug-ins, i.e. a few config overrides (METHODS). Every run goes to
WORKDIR/<method>/rate_<r>/seed_<s> through the ordinary run loop, so a finished run is reused and an
interrupted one resumes: an interrupted comparison picks up where it stopped. Writes WORKDIR/compare.json
(one row per method, rate and seed under "runs"; per cell, i.e. method (sweep point) x rate, the seed
statistics of every metric under "cells"), compare.md (per cell: mean +- sd [95% t interval] over seeds, the
run's wall time among them), compare.tex (the paper's table: methods x noise rates, final accuracy mean +- sd,
the best per column in bold, each method's wall time per run) and compare.png (final accuracy vs noise rate per method, or a bar per method at one rate; final buffer purity
per method; error bars: the 95% interval over seeds).
"""
import json
import os

import numpy as np
from tqdm.auto import tqdm

from spr_jax import files
from spr_jax import interrupt
from spr_jax import metrics
from spr_jax import run_loop
from spr_jax.errors import ConfigError, Diverged

# Online EWC's penalty weight (docs/algorithm.md, "Baselines": how it was chosen).
EWC_LAMBDA = 10.0
# name -> (config overrides, one line on what it is). Hyperparameters are the config's unless stated.
METHODS = {
    "spr": ({}, "SPR: self-supervised base, centrality filter, purified buffer"),
    "plain_replay": ({"filter.kind": "none", "buffer.policy": "class_balanced"},
                     "SPR without the filter: every sample offered, uniform eviction within the chosen class"),
    "gdumb_ce": ({"filter.kind": "none", "buffer.policy": "gdumb", "base.epochs": 0},
                 "GDumb's greedy class-balanced memory; a classifier trained on it alone (cross-entropy) at "
                 "every evaluation, with SPR's fine-tuning recipe (our choice, not GDumb's)"),
    "gdumb_sl": ({"filter.kind": "none", "buffer.policy": "gdumb", "base.epochs": 0, "eval.loss": "sl"},
                 "as gdumb_ce with symmetric cross-entropy (alpha 0.1, beta 1, A = -4)"),
    "gdumb_jocor": ({"filter.kind": "none", "buffer.policy": "gdumb", "base.epochs": 0, "eval.loss": "jocor"},
                    "as gdumb_ce with JoCoR: two networks on one joint loss (lambda 0.1), small-loss selection with "
                    "the forget rate ramped to the noise rate over 10 epochs; the first network is tested"),
    "multitask": ({"filter.kind": "none", "buffer.policy": "reservoir", "buffer.size": 0, "base.epochs": 0,
                   "eval.epochs": 20, "eval.decay_every": 3000},
                  "upper bound: at each evaluation a classifier trained from scratch, offline, on every (noisy) "
                  "sample of the stream so far (cross-entropy, SPR's recipe but 20 epochs and x0.1 every 3,000 "
                  "steps, our choice)"),
    "finetune": ({"protocol": "online", "online.replay": False, "filter.kind": "none", "buffer.policy": "reservoir"},
                 "lower bound: a classifier trained online on the stream (Adam 1e-3, batches of 10), no memory"),
    "reservoir_ce": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir"},
                     "experience replay: each stream batch of 10 plus 10 from a reservoir memory of the buffer's "
                     "size, cross-entropy, online (Adam 1e-3)"),
    "reservoir_sl": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir", "eval.loss": "sl"},
                     "as reservoir_ce with symmetric cross-entropy"),
    "reservoir_jocor": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir",
                         "eval.loss": "jocor"},
                        "as reservoir_ce with JoCoR's two classifiers and joint loss on each step's batch of 20; "
                        "the forget rate ramps to the noise rate over the first 10 chunks (our choice: no epochs "
                        "online)"),
    "spr_aum": ({"filter.kind": "aum"},
                "SPR with AUM's filter (Pleiss et al. 2020) in place of the centrality filter: per chunk, a linear "
                "classifier on the expert's features (400 full-batch steps, lr 1) trained twice, each time with "
                "D // (C + 1) threshold samples moved to an extra class; kept when a sample's area under the margin "
                "exceeds the threshold samples' 99th percentile; clean_p = sigmoid(AUM - threshold)"),
    "spr_incv": ({"filter.kind": "incv"},
                 "SPR with INCV's filter (Chen et al. 2019): per chunk, 4 rounds of two-fold cross-validation of a "
                 "linear classifier on the expert's features (25 full-batch steps, lr 1); kept: the samples a "
                 "held-out classifier predicts as labelled; large-loss removals at the rate the first round's noise "
                 "estimate implies; clean_p = the held-out probability of the label"),
    "spr_knn": ({"filter.kind": "knn"},
                "SPR with the k-NN agreement filter: kept when more than half of the 10 nearest chunk samples "
                "(cosine similarity of the expert's features) carry the sample's label; clean_p = that share"),
    "ewc": ({"protocol": "online", "online.replay": False, "filter.kind": "none", "buffer.policy": "reservoir",
             "online.ewc_lambda": EWC_LAMBDA},
            f"online EWC (Schwarz et al. 2018): the online learner without memory, its loss plus (lambda / 2) "
            f"sum F* (theta - theta*)^2 with lambda {EWC_LAMBDA:g}; the Fisher of the stream batches, averaged over "
            f"each chunk, consolidated (F* <- F* + F_chunk) and the anchor theta* moved at each chunk's end"),
    "mir": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir", "online.retrieval": "mir"},
               "MIR (Aljundi et al. 2019): as reservoir_ce, but the 10 replayed samples are those of 50 random "
               "memory samples whose loss a virtual SGD step (size 0.1) on the stream batch raises most"),
    "mir_sl": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir", "online.retrieval": "mir",
                "eval.loss": "sl"},
               "as mir with symmetric cross-entropy (the retrieval scores the SL loss)"),
    "mir_jocor": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir",
                   "online.retrieval": "mir", "eval.loss": "jocor"},
                  "as mir with JoCoR's two classifiers (the virtual step is one of both on their joint loss; "
                  "each candidate scored by its own joint loss)"),
    "prs_ce": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "class_balanced"},
               "PRS (Kim et al. 2020, power 0, the release's base buffer): as reservoir_ce with the memory of "
               "partitioning reservoir sampling (admission min(1, (P/C)/n_k), eviction from a class drawn by "
               "softmax(count - P/C), uniform within it): buffer.policy=class_balanced"),
    "prs_sl": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "class_balanced", "eval.loss": "sl"},
               "as prs_ce with symmetric cross-entropy"),
    "prs_jocor": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "class_balanced",
                   "eval.loss": "jocor"},
                  "as prs_ce with JoCoR (as reservoir_jocor)"),
    "reservoir_l2r": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir", "eval.loss": "l2r"},
                      "as reservoir_ce with learning to reweight (Ren et al. 2018): each step's 20 samples weighted "
                      "by how much a virtual step on them lowers the cross-entropy of a clean meta set, 10 training "
                      "samples per class with their TRUE labels (extra supervision no other method gets)"),
    "prs_l2r": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "class_balanced", "eval.loss": "l2r"},
                "as prs_ce with learning to reweight (as reservoir_l2r)"),
    "mir_l2r": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir", "online.retrieval": "mir",
                 "eval.loss": "l2r"},
                "as mir with learning to reweight (as reservoir_l2r; MIR scores the unweighted cross-entropy)"),
    "reservoir_pencil": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir",
                          "eval.loss": "pencil"},
                         "as reservoir_ce with Pencil (Yi & Wu 2019), its three stages over the stream: cross-entropy "
                         "for the first 22% of the chunks, then each sample's label distribution learned whenever it "
                         "is in a step's batch, streamed or replayed (alpha 0.1, beta 0.8, label step 75 per batch of "
                         "20) for the next 41%, then the learned labels alone"),
    "prs_pencil": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "class_balanced",
                    "eval.loss": "pencil"},
                   "as prs_ce with Pencil over the stream (as reservoir_pencil)"),
    "mir_pencil": ({"protocol": "online", "filter.kind": "none", "buffer.policy": "reservoir",
                    "online.retrieval": "mir", "eval.loss": "pencil"},
                   "as mir with Pencil over the stream (as reservoir_pencil; MIR scores the cross-entropy)"),
    "gdumb_pencil": ({"filter.kind": "none", "buffer.policy": "gdumb", "base.epochs": 0, "eval.loss": "pencil"},
                     "as gdumb_ce with Pencil (Yi & Wu 2019) in every fine-tuning: 11 epochs of cross-entropy, 20 "
                     "learning each memory sample's label distribution with the network (alpha 0.1, beta 0.8, label "
                     "step 75 per batch of 16), 19 on the learned labels"),
    "gdumb_l2r": ({"filter.kind": "none", "buffer.policy": "gdumb", "base.epochs": 0, "eval.loss": "l2r"},
                  "as gdumb_ce with learning to reweight in every fine-tuning step (as reservoir_l2r)"),
}

# Named lists for --methods. paper: every row of the paper's comparison (Table 1 of Kim et al. 2021) that
# spr_jax has, in the paper's order (CRS is reservoir_*): all 24 of them.
METHOD_LISTS = {
    "paper": ("multitask", "finetune", "ewc", "reservoir_ce", "reservoir_l2r", "reservoir_pencil", "reservoir_sl",
              "reservoir_jocor", "prs_ce", "prs_l2r", "prs_pencil", "prs_sl", "prs_jocor", "mir", "mir_l2r",
              "mir_pencil", "mir_sl", "mir_jocor", "gdumb_ce", "gdumb_l2r", "gdumb_pencil", "gdumb_sl", "gdumb_jocor",
              "spr"),
}
# Bounds, not continual learners: shown in compare.tex but never marked best.
BOUNDS = ("multitask",)


def expand_methods(names) -> list:
    """--methods with the named lists (METHOD_LISTS) replaced by their methods, duplicates dropped, order kept."""
    out = []
    for name in names:
        out += METHOD_LISTS.get(name, (name,))
    return list(dict.fromkeys(out))


def method_config(config, method: str, rate: float, seed: int):
    if method not in METHODS:
        raise ConfigError(f"--methods: unknown method {method!r}; use some of {', '.join(METHODS)}, or a named "
                          f"list: {', '.join(METHOD_LISTS)}")
    c = config.copy_and_resolve_references()
    for key, value in METHODS[method][0].items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    c.noise.rate = float(rate)
    c.seed = int(seed)
    return c


def parse_sweeps(config, specs) -> list[dict]:
    """["buffer.size=100,300", "expert.epochs=5,10"] -> the product of the values, as [{field: value}, ...];
    every field is checked (with a did-you-mean) and every value parsed as the field's type."""
    import itertools
    from spr_jax import config_files
    from spr_jax.errors import UserError
    axes = []
    for spec in specs:
        field, sep, values = spec.partition("=")
        if not sep or not values:
            raise UserError(f"--sweep={spec}: expected FIELD=V1,V2,..., e.g. --sweep=buffer.size=100,300")
        config_files.declare_plugin_settings(config, {field: values}, prefix="--sweep=")  # a plug-in's keyword setting
        config_files.check_field(config, field, prefix="--sweep=")
        node = config
        for part in field.split("."):
            node = node[part]
        axes.append([(field, config_files.parse_text(v.strip(), node, field, prefix="--sweep="))
                     for v in values.split(",")])
    return [dict(point) for point in itertools.product(*axes)]


def sweep_label(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


# The metrics of a row that compare.json's cells and compare.md summarise over seeds, in table order:
# (key, compare.md's column, scale of the shown value: 100 for a share shown in %).
METRICS = (("final_accuracy", "final accuracy (%)", 100), ("average_accuracy", "average accuracy (%)", 100),
           ("forgetting", "forgetting (%)", 100), ("final_purity", "buffer purity (%)", 100),
           ("filter_precision", "filter precision (%)", 100), ("noisy_removed", "noisy removed (%)", 100),
           ("wall_time_s", "wall time (s)", 1))
INTERVAL = ("mean +- sample sd (ddof=1) [95% confidence interval of the mean over seeds: mean +- t(0.975, n-1) "
            "sd / sqrt(n)]")


class Comparison(list):
    """compare.json's rows (a list, one per run), with `cells`: compare.json's per-cell seed statistics."""

    def __init__(self, rows, cells):
        super().__init__(rows)
        self.cells = cells


def run(config, workdir: str, methods=(), rates=(), seeds=(), progress: bool = True, sweeps=()) -> Comparison:
    """Runs (or reuses) every method x sweep point x rate x seed and writes the three outputs; returns the
    rows (with .cells, the seed statistics per cell). `sweeps`: ["FIELD=V1,V2", ...], the product of their
    values (none: the config's values)."""
    from spr_jax import config_files
    methods = expand_methods(methods) or list(METHODS)
    rates = [float(r) for r in rates] or [float(config.noise.rate)]
    seeds = [int(s) for s in seeds] or [int(config.seed)]
    points = parse_sweeps(config, sweeps) if sweeps else [{}]
    plan = [(m, p, r, s) for m in methods for p in points for r in rates for s in seeds]
    runs = []
    for m, p, r, s in plan:  # every name and value checked before any run
        c = method_config(config, m, r, s)
        config_files.apply_overrides(c, p)
        runs.append((m, p, r, s, c))
    for _, _, r, _, c in runs:
        if not 0.0 <= r <= 1.0:
            raise ConfigError(f"--rates: {r} is outside [0, 1]")
    rows = []
    bar = tqdm(runs, desc="compare", unit="run", disable=not progress)
    for m, p, r, s, c in bar:
        label = m if not p else f"{m} [{sweep_label(p)}]"
        bar.set_postfix_str(f"{label} rate {r} seed {s}")
        folder = os.path.join(workdir, m, *([sweep_label(p)] if p else []), f"rate_{r}", f"seed_{s}")
        try:  # a signal's lines name the run it stopped (interrupt.during)
            with interrupt.during(f"{label}, noise {r:g}, seed {s} (run {len(rows) + 1} of {len(runs)})"):
                summary = run_loop.run(c, folder, progress=False)
        except Diverged as e:  # its cell is marked, the comparison goes on and ends with exit status 3
            summary = e.result or {"diverged": {"message": str(e), "hint": e.hint}}  # (None: stopped at a NaN)
        has_memory = not (c.protocol == "online" and not c.online.replay)
        finished = "final_accuracy" in summary
        verdict = summary.get("diverged")
        rows.append({"method": label, "noise_rate": r, "seed": s, "final_accuracy": summary.get("final_accuracy"),
                     "average_accuracy": summary.get("average_accuracy"), "forgetting": summary.get("forgetting"),
                     "final_purity": summary.get("final_purity") if has_memory else None,
                     **(filter_rates(folder, c) if finished else {"filter_precision": None, "noisy_removed": None}),
                     "wall_time_s": round(sum(summary["wall_time_s"].values()), 3) if finished else None,
                     # null, or the run diverged or collapsed: {"message", "hint"} (run_checks.divergence)
                     "diverged": {"message": verdict["message"], "hint": verdict["hint"]} if verdict else None,
                     **({"sweep": p, "base_method": m} if p else {})})
    bar.close()
    write(workdir, rows, config)
    if progress:
        print(open(os.path.join(workdir, "compare.md")).read())
    out = Comparison(rows, cells(rows))
    bad = [r for r in rows if r.get("diverged")]
    if bad:  # after writing the tables, so the other cells' results are there to read
        named = ", ".join(f"{r['method']} at noise {r['noise_rate']} seed {r['seed']}" for r in bad[:3])
        raise Diverged(f"diverged: {len(bad)} of {len(rows)} runs of the comparison diverged or collapsed ({named}"
                       f"{', ...' if len(bad) > 3 else ''}); compare.json, compare.md and compare.png are written, "
                       f"their cells marked",
                       "compare.md's notes under the table give each run's message; rerun one with launch.py and "
                       "its --workdir to see its files", result=out)
    return out


def filter_rates(folder: str, config) -> dict:
    """A finished run's filter, pooled over its chunks from metrics.jsonl's counts and stream.json:
    filter_precision (kept samples whose label is right / kept) and noisy_removed (wrongly labelled chunk
    samples not kept / wrongly labelled chunk samples); None without a filter or where the noise is unknown."""
    none = {"filter_precision": None, "noisy_removed": None}
    if config.filter.kind == "none" or config.protocol != "spr":
        return none
    try:
        records = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl")) if line.strip()]
        stream = json.load(open(os.path.join(folder, "stream.json")))
    except (OSError, ValueError):
        return none
    chunks = [r for r in records if r.get("type") == "chunk"]
    if not chunks or stream.get("noise_rate_in_chunks") is None:
        return none
    if any(r["kept"] and r.get("filter_precision") is None for r in chunks):
        return none
    kept = sum(r["kept"] for r in chunks)
    kept_clean = sum(round(r["filter_precision"] * r["kept"]) if r["kept"] else 0 for r in chunks)
    noisy = round(stream["noise_rate_in_chunks"] * stream["samples_in_chunks"])
    return {"filter_precision": kept_clean / kept if kept else None,
            "noisy_removed": 1 - (kept - kept_clean) / noisy if noisy else None}


def _cell_key(row):
    return row["method"], row["noise_rate"]


def cells(rows) -> list:
    """compare.json's "cells": one per method (sweep point) and noise rate, in table order, each with its
    seeds and, for every metric of METRICS, metrics.seed_stats of its per-seed values (mean, sd, ci_low,
    ci_high, n, values: in the rows' units, shares in [0, 1] and seconds)."""
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        for rate in sorted({r["noise_rate"] for r in rows if r["method"] == m}):
            group = [r for r in rows if _cell_key(r) == (m, rate)]
            cell = {"method": m, "noise_rate": rate,
                    **({"sweep": group[0]["sweep"], "base_method": group[0]["base_method"]}
                       if "sweep" in group[0] else {}),
                    "seeds": [r["seed"] for r in group],
                    # the seeds whose run diverged or collapsed (their numbers are in the statistics, flagged)
                    "diverged": [{"seed": r["seed"], **r["diverged"]} for r in group if r.get("diverged")]}
            for key, _, _ in METRICS:
                cell[key] = metrics.seed_stats([r.get(key) for r in group])
            out.append(cell)
    return out


def table(rows) -> str:
    """compare.md's table: a row per cell, each metric as metrics.format_stats shows it; the filter's columns
    only where some method has a filter."""
    cs = cells(rows)
    shown = [(k, h, f) for k, h, f in METRICS
             if k not in ("filter_precision", "noisy_removed") or any(c[k]["n"] for c in cs)]
    lines = ["| method | noise rate | seeds | " + " | ".join(h for _, h, _ in shown) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in shown) + " |"]
    notes = []
    for c in cs:
        mark = ""
        if c.get("diverged"):
            notes.append((c, len(notes) + 1))
            mark = f" (diverged: note {len(notes)})"
        lines.append(f"| {c['method']}{mark} | {c['noise_rate']} | {len(c['seeds'])} | "
                     + " | ".join(metrics.format_stats(c[k], f) for k, _, f in shown) + " |")
    if notes:
        lines += ["", "Runs that diverged or collapsed (exit status 3; their numbers, where they finished, are in "
                  "the cell but are no result):", ""]
        lines += [f"- note {i}: {c['method']}, noise rate {c['noise_rate']}, seed {d['seed']}: {d['message']}"
                  + (f" (hint: {d['hint']})" if d.get("hint") else "") for c, i in notes for d in c["diverged"]]
    return "\n".join(lines)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(rows, config) -> str:
    """compare.tex: the paper's layout, a row per method (sweep point) and a column per noise rate, each cell
    final accuracy mean +- sd over seeds (%; one seed: its value), the best mean of each column in bold (bounds,
    BOUNDS, excluded; ties all bold), and the method's mean wall time per run."""
    cs = cells(rows)
    rates = sorted({c["noise_rate"] for c in cs})
    methods = list(dict.fromkeys(c["method"] for c in cs))
    by = {(c["method"], c["noise_rate"]): c for c in cs}
    best = {}
    for rate in rates:
        means = [by[(m, rate)]["final_accuracy"]["mean"] for m in methods
                 if (m, rate) in by and m.split(" [")[0] not in BOUNDS]
        means = [round(100 * v, 1) for v in means if v is not None]
        best[rate] = max(means) if means else None

    def cell(m, rate):
        c = by.get((m, rate))
        acc = c["final_accuracy"] if c else None
        if not acc or acc["mean"] is None:
            return "--"
        text = f"{100 * acc['mean']:.1f}" + (rf" $\pm$ {100 * acc['sd']:.1f}" if acc["sd"] is not None else "")
        bold = m.split(" [")[0] not in BOUNDS and round(100 * acc["mean"], 1) == best[rate]
        return rf"\textbf{{{text}}}" if bold else text

    def wall(m):
        times = [r["wall_time_s"] for r in rows if r["method"] == m and r.get("wall_time_s") is not None]
        return f"{np.mean(times):.0f}" if times else "--"

    seeds = sorted({len(c["seeds"]) for c in cs})
    kind = config.noise.kind
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{Final accuracy (\%) on {_tex(config.dataset.name)}, {_tex(kind)} noise: mean $\pm$ "
             rf"sample sd over {'/'.join(map(str, seeds))} seeds; best per column in bold"
             + (rf" (the {', '.join(_tex(b) for b in BOUNDS)} bound excluded)" if any(
                 m.split(' [')[0] in BOUNDS for m in methods) else "")
             + r"; last column: mean wall time per run (s).}",
             r"\begin{tabular}{l" + "c" * len(rates) + "r}", r"\toprule",
             "Method & " + " & ".join(rf"{100 * r:g}\%" for r in rates) + r" & s / run \\", r"\midrule"]
    for m in methods:
        lines.append(_tex(m) + " & " + " & ".join(cell(m, r) for r in rates) + f" & {wall(m)} " + r"\\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write(workdir: str, rows, config) -> None:
    os.makedirs(workdir, exist_ok=True)
    doc = {"dataset": config.dataset.name, "noise_kind": config.noise.kind,
           "methods": {m: METHODS[m][1] for m in dict.fromkeys(r.get("base_method", r["method"]) for r in rows)},
           "runs": rows, "interval": INTERVAL, "cells": cells(rows)}
    files.write_atomic(os.path.join(workdir, "compare.json"), json.dumps(doc, indent=1))
    text = (f"# Comparison on {config.dataset.name}, {config.noise.kind} noise\n\n" + table(rows) + "\n\n"
            f"Each cell: {INTERVAL}; one seed: its value alone. Accuracy, forgetting, purity, "
            "filter precision and noisy removed in %, wall time in seconds; the filter's two pooled over each run's "
            "chunks (methods with a filter).\n\n"
            + "\n".join(f"- {m}: {d}" for m, d in doc["methods"].items()) + "\n")
    files.write_atomic(os.path.join(workdir, "compare.md"), text)
    files.write_atomic(os.path.join(workdir, "compare.tex"), latex_table(rows, config))
    try:
        plot(rows, os.path.join(workdir, "compare.png"), config)
    except Exception as e:  # a plot is a convenience; the JSON and the table hold the results
        print(f"(compare plot skipped: {e})")


def _half_width(stats, scale=100):
    """The 95% interval's half-width (scaled), 0 where there is none (one seed)."""
    return scale * (stats["ci_high"] - stats["mean"]) if stats["ci_high"] is not None else 0.0


def plot(rows, path, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_cell = {(c["method"], c["noise_rate"]): c for c in cells(rows)}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5))
    all_rates = sorted({r["noise_rate"] for r in rows})
    if len(all_rates) == 1:  # one rate: a bar per method (mean over seeds) with each seed's point on it
        _accuracy_bars(a, rows, methods, all_rates[0], by_cell)
    for m in methods if len(all_rates) > 1 else ():
        rates = sorted({r["noise_rate"] for r in rows if r["method"] == m})
        acc = [by_cell[(m, x)]["final_accuracy"] for x in rates]
        a.errorbar([100 * x for x in rates], [np.nan if v["mean"] is None else 100 * v["mean"] for v in acc],
                   yerr=[_half_width(v) for v in acc],
                   marker="o", capsize=3, label=m)  # bars: the 95% interval over seeds
    if len(all_rates) > 1:
        a.set_xticks([100 * x for x in all_rates], [f"{100 * x:g}" for x in all_rates])  # the rates run
        a.set_xlabel("noise rate (%)"), a.set_ylabel("final accuracy (%)")
        a.set_title("final accuracy (mean, 95% interval over seeds)")
    a.grid(alpha=0.3)
    width = 0.8 / len(all_rates)
    for i, rate in enumerate(all_rates):  # one bar per method and noise rate: mean over seeds, 95% interval
        purity = [by_cell[(m, rate)]["final_purity"] if (m, rate) in by_cell else metrics.seed_stats([])
                  for m in methods]
        x = np.arange(len(methods)) + (i - (len(all_rates) - 1) / 2) * width
        b.bar(x, [100 * p["mean"] if p["n"] else 0 for p in purity], width, label=f"{100 * rate:g}% noise",
              yerr=[_half_width(p) if p["n"] else 0 for p in purity], capsize=2, error_kw={"elinewidth": 1})
        for xi, p in zip(x, purity):
            if not p["n"]:  # a method without a memory has no purity
                b.text(xi, 2, "no memory", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
        if config.noise.kind not in ("real", "none"):  # the stream's clean share: the purity of keeping everything
            b.axhline(100 * (1 - rate), color=f"C{i % 10}", linestyle="--", linewidth=1,
                      label=f"stream's clean share at {100 * rate:g}% noise")
    b.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
    b.set_ylabel("final buffer purity (%)"), b.set_title("buffer purity (mean, 95% interval over seeds)")
    b.set_ylim(0, 125), b.set_yticks(range(0, 101, 20))  # 0-100%; the legend above 100
    b.legend(fontsize=7, ncol=2, loc="upper right")
    handles, labels = a.get_legend_handles_labels()
    rows_of_legend = -(-len(methods) // 5) if handles else 0
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(methods)), fontsize=8)
    fig.suptitle(f"{config.dataset.name}, {config.noise.kind} noise")
    fig.tight_layout(rect=(0, 0.05 * rows_of_legend + 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _accuracy_bars(ax, rows, methods, rate, by_cell):
    x = np.arange(len(methods))
    for i, m in enumerate(methods):
        acc = 100 * np.asarray([r["final_accuracy"] for r in rows if r["method"] == m and r["noise_rate"] == rate
                                and r["final_accuracy"] is not None])  # (None: a run stopped at a NaN)
        stats = by_cell[(m, rate)]["final_accuracy"]
        ax.bar(i, 100 * (stats["mean"] or 0.0), 0.6, color=f"C{i % 10}", alpha=0.6, yerr=_half_width(stats), capsize=4)
        ax.plot(np.full(len(acc), i) + np.linspace(-0.15, 0.15, len(acc)) * (len(acc) > 1), acc, "o",
                color=f"C{i % 10}", markeredgecolor="black", markersize=5)
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("final accuracy (%)")
    ax.set_title(f"final accuracy at {100 * rate:g}% noise (bar: mean, 95% interval; points: seeds)", fontsize=10)
