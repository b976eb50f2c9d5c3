"""The comparison: methods x noise rates x seeds on one config, as `launch.py --mode=compare`.

Each method is a composition of plug-ins, i.e. a few config overrides (METHODS). Every run goes to
WORKDIR/<method>/rate_<r>/seed_<s> through the ordinary run loop, so a finished run is reused and an
interrupted one resumes: an interrupted comparison picks up where it stopped. Writes WORKDIR/compare.json
(one row per method, rate and seed), compare.md (mean +- std over seeds) and compare.png (final accuracy
vs noise rate per method; final buffer purity per method).
"""
import json
import os

import numpy as np
from tqdm.auto import tqdm

from spr_jax import files
from spr_jax import run_loop
from spr_jax.errors import ConfigError

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
}


def method_config(config, method: str, rate: float, seed: int):
    if method not in METHODS:
        raise ConfigError(f"--methods: unknown method {method!r}; use some of {', '.join(METHODS)}")
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


def run(config, workdir: str, methods=(), rates=(), seeds=(), progress: bool = True, sweeps=()) -> list:
    """Runs (or reuses) every method x sweep point x rate x seed and writes the three outputs; returns the
    rows. `sweeps`: ["FIELD=V1,V2", ...], the product of their values (none: the config's values)."""
    from spr_jax import config_files
    methods = list(methods) or list(METHODS)
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
        summary = run_loop.run(c, folder, progress=False)
        has_memory = not (c.protocol == "online" and not c.online.replay)
        rows.append({"method": label, "noise_rate": r, "seed": s, "final_accuracy": summary["final_accuracy"],
                     "average_accuracy": summary["average_accuracy"], "forgetting": summary["forgetting"],
                     "final_purity": summary["final_purity"] if has_memory else None,
                     "wall_time_s": round(sum(summary["wall_time_s"].values()), 3),
                     **({"sweep": p, "base_method": m} if p else {})})
    bar.close()
    write(workdir, rows, config)
    if progress:
        print(open(os.path.join(workdir, "compare.md")).read())
    return rows


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    v = 100 * np.asarray(values, float)
    return f"{v.mean():.1f} +- {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def table(rows) -> str:
    lines = ["| method | noise rate | seeds | final accuracy (%) | average accuracy (%) | forgetting | buffer purity (%) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in dict.fromkeys(r["method"] for r in rows):
        for rate in sorted({r["noise_rate"] for r in rows if r["method"] == m}):
            group = [r for r in rows if r["method"] == m and r["noise_rate"] == rate]
            lines.append(f"| {m} | {rate} | {len(group)} | {_mean_std([r['final_accuracy'] for r in group])} | "
                         f"{_mean_std([r['average_accuracy'] for r in group])} | "
                         f"{_mean_std([r['forgetting'] for r in group])} | "
                         f"{_mean_std([r['final_purity'] for r in group])} |")
    return "\n".join(lines)


def write(workdir: str, rows, config) -> None:
    os.makedirs(workdir, exist_ok=True)
    doc = {"dataset": config.dataset.name, "noise_kind": config.noise.kind,
           "methods": {m: METHODS[m][1] for m in dict.fromkeys(r.get("base_method", r["method"]) for r in rows)},
           "runs": rows}
    files.write_atomic(os.path.join(workdir, "compare.json"), json.dumps(doc, indent=1))
    text = (f"# Comparison on {config.dataset.name}, {config.noise.kind} noise (mean +- std over seeds)\n\n"
            + table(rows) + "\n\n" + "\n".join(f"- {m}: {d}" for m, d in doc["methods"].items()) + "\n")
    files.write_atomic(os.path.join(workdir, "compare.md"), text)
    try:
        plot(rows, os.path.join(workdir, "compare.png"), config)
    except Exception as e:  # a plot is a convenience; the JSON and the table hold the results
        print(f"(compare plot skipped: {e})")


def plot(rows, path, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5))
    all_rates = sorted({r["noise_rate"] for r in rows})
    if len(all_rates) == 1:  # one rate: a bar per method (mean over seeds) with each seed's point on it
        _accuracy_bars(a, rows, methods, all_rates[0])
    for m in methods if len(all_rates) > 1 else ():
        rates = sorted({r["noise_rate"] for r in rows if r["method"] == m})
        acc = [100 * np.asarray([r["final_accuracy"] for r in rows if r["method"] == m and r["noise_rate"] == x])
               for x in rates]
        a.errorbar([100 * x for x in rates], [v.mean() for v in acc], yerr=[v.std() for v in acc], marker="o",
                   capsize=3, label=m)  # bars: std over seeds
    if len(all_rates) > 1:
        a.set_xlabel("noise rate (%)"), a.set_ylabel("final accuracy (%)")
        a.set_title("final accuracy (mean, std over seeds)")
    a.grid(alpha=0.3)
    width = 0.8 / len(all_rates)
    for i, rate in enumerate(all_rates):  # one bar per method and noise rate: mean over seeds
        purity = [[100 * r["final_purity"] for r in rows if r["method"] == m and r["noise_rate"] == rate
                   and r["final_purity"] is not None] for m in methods]
        x = np.arange(len(methods)) + (i - (len(all_rates) - 1) / 2) * width
        b.bar(x, [np.mean(p) if p else 0 for p in purity], width, label=f"{100 * rate:g}% noise")
        for xi, p in zip(x, purity):
            if not p:  # a method without a memory has no purity
                b.text(xi, 2, "no memory", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
    b.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
    b.set_ylabel("final buffer purity (%)"), b.set_title("buffer purity (mean over seeds)")
    b.set_ylim(0, 118), b.legend(fontsize=8, ncol=len(all_rates), loc="upper right")
    handles, labels = a.get_legend_handles_labels()
    rows_of_legend = -(-len(methods) // 5) if handles else 0
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(methods)), fontsize=8)
    fig.suptitle(f"{config.dataset.name}, {config.noise.kind} noise")
    fig.tight_layout(rect=(0, 0.05 * rows_of_legend + 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _accuracy_bars(ax, rows, methods, rate):
    x = np.arange(len(methods))
    for i, m in enumerate(methods):
        acc = 100 * np.asarray([r["final_accuracy"] for r in rows if r["method"] == m and r["noise_rate"] == rate])
        ax.bar(i, acc.mean(), 0.6, color=f"C{i % 10}", alpha=0.6)
        ax.plot(np.full(len(acc), i) + np.linspace(-0.15, 0.15, len(acc)) * (len(acc) > 1), acc, "o",
                color=f"C{i % 10}", markeredgecolor="black", markersize=5)
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("final accuracy (%)")
    ax.set_title(f"final accuracy at {100 * rate:g}% noise (bar: mean; points: seeds)")
