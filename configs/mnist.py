"""MNIST, 40% symmetric noise: the published setting (docs/algorithm.md) (D = P = B = 300, MLP, 4000/3000 epochs).

    python launch.py --config=configs/mnist.py --workdir=workdirs/mnist

mnist cannot be downloaded offline: give an IDX folder with --config.dataset.data_dir=FOLDER.
"""
from spr_jax import configlib


def get_config():
    return configlib.base_config()
