"""CIFAR-100 superclass: one task per superclass (20 tasks), 40% noise inside each superclass.

    python launch.py --config=configs/cifar100_superclass.py --workdir=workdirs/cifar100_sc
"""
from spr_jax import configlib


def get_config():
    c = configlib.cifar100_base()
    c.noise.kind = "superclass"
    c.superclass_episodes = True  # task k = the five fine classes of coarse label k
    return c
