"""Runs SPR from an ml_collections config.

    python launch.py --config=configs/digits.py --workdir=/tmp/spr_digits
    python launch.py --config=configs/fashion_mnist.py --config.noise.rate=0.6 --workdir=workdirs/f60
    python launch.py --config=configs/fashion_mnist.py --mode=stream --workdir=/tmp/stream   # stream only
"""
import json
import os
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file; override fields as --config.a.b=v.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs (stream.json, metrics.jsonl, summary.json) go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "experts", "stream"],
                          "train: the whole SPR run (resuming from WORKDIR's checkpoints); experts: only the expert "
                          "phase, filling the expert cache; stream: only build the noisy stream and summarise it.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-host run, detected from the environment "
                                 "(TPU pods, SLURM, ...).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 of a multi-host run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes of a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep jax's backend probing out of the report
    from spr_jax import checkpoint, configlib, expert_cache
    from spr_jax import parallel
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)
    config = _CONFIG.value
    os.makedirs(_WORKDIR.value, exist_ok=True)
    try:
        if _MODE.value == "stream":
            from spr_jax.data import prepare
            summary = prepare.stream_summary(prepare.prepare(config))
            print(prepare.format_stream_summary(summary))
            with open(os.path.join(_WORKDIR.value, "stream.json"), "w") as f:
                json.dump(summary, f, indent=1)
        else:
            from spr_jax import run_loop
            if _MODE.value == "experts":
                run_loop.fill_expert_cache(config, _WORKDIR.value)
            else:
                run_loop.run(config, _WORKDIR.value)
    except (configlib.ConfigError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except (checkpoint.CheckpointMismatchError, checkpoint.CorruptCheckpointError,
            expert_cache.CacheCorruptError) as e:
        # Leave at once: orbax's half-finished async reads would otherwise print tracebacks at shutdown.
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(1)


if __name__ == "__main__":
    app.run(main)
