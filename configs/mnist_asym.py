"""MNIST, 40% asymmetric noise (2->7, 3->8, 5<->6, 7->1) with the asymmetric episodes.

    python launch.py --config=configs/mnist_asym.py --workdir=workdirs/mnist_asym
"""
from spr_jax import configlib


def get_config():
    c = configlib.base_config()
    c.noise.kind = "asymmetric"
    c.episodes = ((2, 7), (3, 8), (5, 6), (0, 9), (4, 1))
    return c
