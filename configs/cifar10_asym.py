"""CIFAR-10, 40% asymmetric noise (truck->automobile, bird->airplane, cat<->dog, deer->horse).

    python launch.py --config=configs/cifar10_asym.py --workdir=workdirs/cifar10_asym
"""
from spr_jax import configlib


def get_config():
    c = configlib.cifar10_base()
    c.noise.kind = "asymmetric"
    c.episodes = ((9, 1), (2, 0), (3, 5), (6, 8), (4, 7))
    return c
