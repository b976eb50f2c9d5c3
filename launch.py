"""Runs SPR from an ml_collections config.

    python launch.py --config=configs/digits.py --workdir=/tmp/spr_digits
    python launch.py --config=configs/fashion_mnist.py --config.noise.rate=0.6 --workdir=workdirs/f60
"""
import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from spr_jax import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file; override fields as --config.a.b=v.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs (stream.json, metrics, checkpoints) go.")
_MODE = flags.DEFINE_enum("mode", "stream", ["stream"], "stream: build the noisy stream and summarise it.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    config = _CONFIG.value
    os.makedirs(_WORKDIR.value, exist_ok=True)
    prepared = experiment.prepare(config)
    summary = experiment.stream_summary(prepared)
    print(experiment.format_stream_summary(summary))
    with open(os.path.join(_WORKDIR.value, "stream.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    app.run(main)
