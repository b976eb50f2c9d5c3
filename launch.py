"""Runs SPR (or a composition of your plug-ins) from an ml_collections config.

    python launch.py --config=configs/digits.py --workdir=/tmp/spr_digits
    python launch.py --config=configs/fashion_mnist.py --config.noise.rate=0.6 --workdir=workdirs/f60
    python launch.py --config=configs/fashion_mnist.py --mode=stream --workdir=/tmp/stream   # stream only
    python launch.py --config=configs/digits.py --mode=config                                # resolved config

A mistake the user can fix (a bad value, a misspelt field, missing data, an unusable workdir, a workdir of
another run) is reported in one line, plus a hint line where one helps, with exit status 2 and nothing
written. A run whose training diverged or collapsed (exploding or non-finite losses, an accuracy at chance)
ends with exit status 3, one line and a hint naming the likely config fields; a signal with 128 + its number.
Anything else is a bug and keeps its traceback.
"""
if __name__ == "__main__":  # first of all, before JAX is imported: a signal at any moment then stops cleanly
    from spr_jax import interrupt
    interrupt.install()

import os
import re
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from spr_jax import config_files  # light: imports neither jax nor the rest of the package
from spr_jax import storage  # light too
from spr_jax import workdir_lock  # light too
from spr_jax.errors import RunStopped, UserError

ROOT = os.path.dirname(os.path.abspath(__file__))
MODES = {
    "train": "the whole run, resuming from WORKDIR's checkpoints (a finished run is left as it is)",
    "experts": "only the expert phase, filling the expert cache",
    "stream": "only build the noisy stream and summarise it (WORKDIR/stream.json)",
    "config": "print the resolved config with each field's meaning (needs no --workdir)",
    "compare": "run (or reuse) --methods x --rates x --seeds and write compare.json, compare.md, compare.png",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file; override fields as --config.a.b=v.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs (stream.json, metrics.jsonl, summary.json) go.")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "; ".join(f"{k}: {v}" for k, v in MODES.items()))
_REDO = flags.DEFINE_bool("redo", False, "Run again from scratch in a WORKDIR that holds a run (its checkpoints, "
                          "metrics and summary are replaced; the expert cache is kept).")
_METHODS = flags.DEFINE_list("methods", [], "--mode=compare: methods to run (default: all; spr, plain_replay, "
                             "gdumb_ce, gdumb_sl, gdumb_jocor, multitask, finetune, reservoir_ce, reservoir_sl, "
                             "reservoir_jocor, ewc, mir, mir_sl, mir_jocor, prs_ce, prs_sl, prs_jocor, reservoir_l2r, "
                             "prs_l2r, mir_l2r, gdumb_l2r, reservoir_pencil, prs_pencil, mir_pencil, gdumb_pencil, "
                             "spr_aum, spr_incv, spr_knn), or a named list: paper (the 24 methods of the paper's "
                             "table).")
_RATES = flags.DEFINE_list("rates", [], "--mode=compare: noise rates (default: the config's).")
_SEEDS = flags.DEFINE_list("seeds", [], "--mode=compare: seeds (default: the config's).")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "--mode=compare: also sweep a config field, FIELD=V1,V2,... "
                                   "(e.g. --sweep=buffer.size=100,300); repeat it for the product of several.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-host run, detected from the environment "
                                 "(TPU pods, SLURM, ...).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 of a multi-host run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes of a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")


def help_text() -> str:
    lines = [__doc__.strip(), "", "configs:"]
    lines += [f"  {path:34s} {doc}" for path, doc in config_files.bundled_configs()]
    lines += ["", "modes (--mode):"] + [f"  {k:8s} {v}" for k, v in MODES.items()]
    lines += ["", "flags:"]
    for flag in (_CONFIG, _WORKDIR, _MODE, _REDO, _METHODS, _RATES, _SEEDS, _SWEEP, _DISTRIBUTED, _COORDINATOR,
                 _NUM_PROCESSES, _PROCESS_ID):
        lines.append(f"  --{flag.name}: {flags.FLAGS[flag.name].help}")
    lines += ["", "Every config field can be overridden: --config.FIELD=VALUE (see --mode=config for the fields)."]
    return "\n".join(lines)


def _argument(argv, name):
    """The value of --name=VALUE or --name VALUE in argv (the last one), or None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def load_config_file(path: str):
    """The ConfigDict of a config file, or UserError in one line."""
    return config_files.load_file(path)


def config_overrides(argv) -> list:
    """[(first index, last index, dotted field, text)] of every --config.a.b=v or --config.a.b v in argv."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith("--config."):
            field, sep, text = a[len("--config."):].partition("=")
            if sep:
                out.append((i, i, field, text))
            elif i + 1 < len(argv):
                out.append((i, i + 1, field, argv[i + 1]))
    return out


def split_plugin_settings(argv, base):
    """config_flags knows only the config file's fields, so the --config.BLOCK.NAME=V that set a plug-in's
    keyword setting the file does not hold (e.g. --config.filter.k=7 for a filter taking k) are taken out
    of argv here, to be set after the flags are parsed. Every other override must name a field of the file
    (a misspelling gets a 'did you mean'). Returns (argv without them, {dotted: value parsed as its default's type})."""
    overrides = config_overrides(argv)
    given = {field: text for _, _, field, text in overrides}
    probe = base.copy_and_resolve_references()
    plugin_fields = set(config_files.declare_plugin_settings(probe, given, prefix="--config."))
    for _, _, field, _ in overrides:
        config_files.check_field(probe, field)
    drop = {j for first, last, field, _ in overrides if field in plugin_fields for j in range(first, last + 1)}
    values = {f: config_files.parse_text(given[f], probe[f.split(".")[0]][f.split(".")[1]], f) for f in plugin_fields}
    return [a for j, a in enumerate(argv) if j not in drop], values


def check_backend() -> None:
    """JAX starts the requested platform (JAX_PLATFORMS), or UserError naming it."""
    import jax
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as e:  # an uninstalled plugin fails on an empty assert
        requested = os.environ.get("JAX_PLATFORMS", "") or jax.config.jax_platforms or "default"
        cause = config_files.one_line(e) or "JAX has no plug-in for it installed"
        raise UserError(f"JAX_PLATFORMS={requested}: JAX cannot start this platform here ({cause})",
                        "unset JAX_PLATFORMS to use what this machine has, or install JAX's package for the "
                        "accelerator, e.g. pip install -U 'jax[cuda12]'") from e


def field_meanings() -> dict:
    """{'noise.rate': comment} from the comments in spr_jax/configlib.py's defaults (base_config, first in
    the file: a later assignment in a dataset's defaults does not replace them)."""
    src = open(os.path.join(ROOT, "spr_jax", "configlib.py")).read().splitlines()
    out, above = {}, []
    for line in src:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"c\.([\w.]+)\s*=\s*(.*?)(?:\s+#\s*(.*))?$", stripped)
        if m and not m.group(2).startswith("ml_collections.ConfigDict") and m.group(1) not in out:
            out[m.group(1)] = " ".join(above + ([m.group(3)] if m.group(3) else []))
        above = []
    return out


def format_config(config) -> str:
    meanings = field_meanings()
    lines = []

    def walk(node, prefix):
        for k in node.keys():
            v = node[k]
            name = f"{prefix}{k}"
            if hasattr(v, "keys"):
                walk(v, name + ".")
            else:
                note = meanings.get(name, "")
                lines.append(f"{name} = {v!r}" + (f"    # {note}" if note else ""))
    walk(config, "")
    return "\n".join(lines)


def main(argv) -> int:
    if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
        print(help_text())
        return 0
    base = load_config_file(_argument(argv, "config"))
    argv, plugin_settings = split_plugin_settings(argv, base)
    sys.argv = argv  # config_flags reads its overrides from sys.argv, not from the list parsed
    try:
        flags.FLAGS(argv)
    except flags.Error as e:
        raise UserError(config_files.one_line(e), "python launch.py --help lists the flags") from e
    config = _CONFIG.value
    config_files.apply_overrides(config, plugin_settings)  # (declared at their defaults, then set)
    if _MODE.value == "config":
        print(format_config(config))
        return 0
    workdir_lock.check_workdir(_WORKDIR.value)  # (before JAX is imported; the lock below checks it again)
    logging.set_verbosity(logging.WARNING)  # keep jax's backend probing out of the report
    from spr_jax import parallel
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)
    check_backend()
    import jax
    if jax.process_count() > 1:  # each process says where it runs (e.g. in a cluster job's logs)
        print(parallel.describe(), flush=True)
    from spr_jax import modes, run_loop
    # One run per workdir (process 0 writes a multi-host run's files, so it alone locks). Signals are handled
    # since the start (spr_jax/interrupt.py): work in progress stops at its next safe point with its work kept.
    with workdir_lock.hold(_WORKDIR.value, enabled=parallel.is_primary()):
        if _MODE.value == "stream":
            modes.write_stream(config, _WORKDIR.value)
        elif _MODE.value == "experts":
            modes.fill_expert_cache(config, _WORKDIR.value)
        elif _MODE.value == "compare":
            from spr_jax import comparison as compare
            try:
                rates, seeds = [float(r) for r in _RATES.value], [int(x) for x in _SEEDS.value]
            except ValueError as e:
                raise UserError(f"--rates / --seeds: {e}", "e.g. --rates=0.2,0.4 --seeds=1,2,3") from e
            compare.run(config, _WORKDIR.value, _METHODS.value, rates, seeds, sweeps=_SWEEP.value)
        else:
            run_loop.run(config, _WORKDIR.value, redo=_REDO.value)
    return 0


def entry() -> None:
    held = storage.HeldBackgroundErrors()
    try:
        code = main(sys.argv)
    except BrokenPipeError:  # output piped into `head`
        os._exit(0)
    except UserError as e:
        held.release(show=True)
        _leave(f"error: {config_files.one_line(e)}", getattr(e, "hint", ""), 2)
    except RunStopped as e:  # a signal (128 + its number) or a divergence (3): the work so far is kept
        held.release(show=True)
        _leave(config_files.one_line(e), e.hint, e.exit_status)
    except Exception as e:  # noqa: BLE001 - a refused write gets one line; anything else is a bug
        error = storage.as_error(e)
        held.release(show=error is None)
        if error is None:
            raise
        _leave(f"error: {error}", error.hint, error.exit_status)
    held.release(show=True)
    sys.exit(code)


def _leave(line: str, hint: str, status: int) -> None:
    print(line, file=sys.stderr)
    if hint:
        print(f"hint: {config_files.one_line(hint)}", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    # Leave at once: orbax's half-finished async work would otherwise print tracebacks at shutdown.
    os._exit(status)


if __name__ == "__main__":
    entry()
