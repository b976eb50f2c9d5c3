"""What names a run, in one place: the checkpoint's fingerprint (what a resumed run must match), the expert
cache's key material (what a chunk's expert outputs depend on), the composition a run is, and config.json's
description. Plain data from the config, the prepared stream and the plug-ins' identities (plugins.identity).
"""
from typing import NamedTuple

import jax

from spr_jax import compilation, expert_cache
from spr_jax import filters
from spr_jax import plugins
from spr_jax.version import __version__

# Config fields that change no result: a run may resume with other values of these.
_RESULT_NEUTRAL = ("checkpoint", "cache", "logging")
# Settings of the online protocol added after runs were checkpointed: at these values a run is what it was
# before they existed (issue 33: MIR and online EWC), so they are left out of the fingerprint.
_ONLINE_DEFAULTS = {"retrieval": "random", "mir_candidates": 50, "mir_step": 0.1, "ewc_lambda": 0.0,
                    "ewc_decay": 1.0}
# The config values that the run's checks quote (run_checks: the fields a divergence's hint names).
QUOTED = ("ssl.lr", "ssl.temperature", "eval.lr", "eval.clip", "online.lr", "buffer.size", "buffer.policy",
          "eval.batch_size", "noise.rate")


class RunIdentity(NamedTuple):
    """What names a run and what its records quote, read from the config once (run_setup.setup)."""
    fingerprint: dict  # what a resumed run's checkpoints must match (run_fingerprint)
    description: dict  # WORKDIR/config.json (run_description; its "config" is the resolved config)
    expert_chunks: list  # the expert cache's key material, one dict per chunk (expert_chunk_descriptions)
    method: dict  # the composition (summary.json's "method")
    noise: dict  # {"kind", "rate"}, as summary.json records it
    quoted: dict  # config values that the run's checks quote (QUOTED): {"ssl.lr": ..., "buffer.policy": ...}


def of_run(config, prepared, identities: dict) -> RunIdentity:
    return RunIdentity(fingerprint=run_fingerprint(config, identities),
                       description=run_description(config, identities),
                       expert_chunks=expert_chunk_descriptions(config, prepared, identities),
                       method=method_of(config), noise={"kind": config.noise.kind, "rate": float(config.noise.rate)},
                       quoted={f: config[f.split(".")[0]][f.split(".")[1]] for f in QUOTED})



def method_of(config) -> dict:
    """The composition a run is (summary.json's "method"; outputs.method_name names it)."""
    return {"filter": config.filter.kind, "buffer_policy": config.buffer.policy,
            "encoder": config.model.encoder, "eval_loss": config.eval.loss,
            "self_supervised_base": config.protocol == "spr" and int(config.base.epochs) > 0,
            "protocol": config.protocol,
            # the online methods' settings, where a run uses them (so earlier runs' records stay as they were)
            **({"retrieval": config.online.retrieval} if config.protocol == "online" and config.online.replay
               and config.online.retrieval != "random" else {}),
            **({"ewc_lambda": float(config.online.ewc_lambda)} if config.protocol == "online"
               and float(config.online.ewc_lambda) > 0 else {})}


def run_description(config, identities: dict) -> dict:
    """WORKDIR/config.json: the resolved config, the plug-ins' identities (name and source hash), the
    package versions and the machine of the latest session."""
    import importlib.metadata
    import platform
    versions = {}
    for package in ("spr_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    devices = jax.devices()
    machine = {"cpu": cpu, "platform": devices[0].platform, "device_kind": devices[0].device_kind,
               "devices": len(devices), "processes": jax.process_count()}
    if devices[0].platform == "cpu":  # what XLA is asked for on this CPU (results are deterministic per CPU)
        machine["cpu_compiler"] = compilation.cpu_choices(config.cache.cpu_opt_level,
                                                          config.cache.get("cpu_vector_width", 0),
                                                          config.cache.get("cpu_quick_compile", False))
    return {"config": config.to_dict(), "plugins": identities, "versions": versions, "python": platform.python_version(),
            "machine": machine}


def filter_settings(config) -> dict:
    """config.filter as a run's keys hold it: less the settings of the baseline filters (filters.BASELINE_SETTINGS)
    that the run's filter does not read, so that adding those settings changed no earlier run's keys."""
    block = config.filter.to_dict()
    read = plugins.accepted_settings(plugins.resolve(config.filter.kind, filters.FILTERS, "config.filter.kind"), block)
    return {k: v for k, v in block.items() if k not in filters.BASELINE_SETTINGS or k in read}


def run_fingerprint(config, identities: dict) -> dict:
    """What a run's checkpoints must match: its config (less result-neutral fields), the code version and
    the plug-ins' identities."""
    d = config.to_dict()
    for k in _RESULT_NEUTRAL:
        d.pop(k, None)
    d["expert"].pop("group_size", None)
    d["eval"].pop("test_batch_size", None)
    d["filter"] = filter_settings(config)
    if d["dataset"].get("stream") == "spr_jax":  # the default since before the option: old workdirs still match
        d["dataset"].pop("stream")
    for field, default in _ONLINE_DEFAULTS.items():  # (the same for the online methods' later settings)
        if d.get("online", {}).get(field, default) == default:
            d.get("online", {}).pop(field, None)
    if d["eval"].get("loss") != "l2r":  # (read by L2R alone)
        d["eval"].pop("l2r_meta_per_class", None)
    if d["eval"].get("loss") != "pencil":  # (read by Pencil alone)
        for field in ("pencil_alpha", "pencil_beta", "pencil_lr", "pencil_k", "pencil_stage1", "pencil_stage2"):
            d["eval"].pop(field, None)
    return {"config": d, "code_version": __version__, "plugins": identities}


def expert_inputs(config, prepared) -> dict:
    """The JSON-able part of the config that a chunk's expert outputs depend on (the cache's key material)."""
    dataset = {"name": prepared.dataset.name, "subset_per_class": int(config.dataset.subset_per_class),
               "train_images": int(prepared.dataset.train.labels.size)}
    if config.dataset.stream != "spr_jax":  # another subset is other images: never the default's cache entries
        dataset["stream"] = config.dataset.stream
    return dict(
        dataset=dataset,
        noise={"kind": config.noise.kind, "rate": float(config.noise.rate)},
        seed=int(config.seed),
        stream={"chunk_size": prepared.stream.chunk_size, "batch": int(config.stream.batch),
                "episodes": [list(map(int, t)) for t in prepared.episodes]},
        expert={"model": config.model.to_dict(), "ssl": config.ssl.to_dict(), "epochs": int(config.expert.epochs),
                "filter": filter_settings(config), "precision": config.precision})


def expert_chunk_descriptions(config, prepared, identities: dict) -> list:
    """Everything a chunk's expert outputs depend on, one dict per chunk (the expert cache's keys): the
    config's share in them (expert_inputs), the filter's and encoder's identities, the chunk's samples."""
    run_inputs = expert_inputs(config, prepared)
    s = prepared.stream
    plugins = {k: identities[k] for k in ("filter", "encoder")}
    common = dict(run_inputs, expert=dict(run_inputs["expert"], plugins=plugins))
    return [expert_cache.chunk_cache_description(chunk_index=c, chunk_indices=s.chunks[c], **common)
            for c in range(s.num_chunks)]
