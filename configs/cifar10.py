"""CIFAR-10, 40% symmetric noise: ResNet-18, D = P = B = 500, 4000 expert / 3000 base epochs.

    python launch.py --config=configs/cifar10.py --workdir=workdirs/cifar10

Needs an accelerator. Data: a prepared tfds `cifar10`, or --config.dataset.data_dir=.../cifar-10-batches-py.
"""
from spr_jax import configlib


def get_config():
    return configlib.cifar10_base()
