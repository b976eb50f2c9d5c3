"""CIFAR-100 random: 20 tasks of 5 classes, 40% symmetric noise; D = 1250, P = 5000, B = 250.

    python launch.py --config=configs/cifar100.py --workdir=workdirs/cifar100

Data: a prepared tfds `cifar100`, or --config.dataset.data_dir=.../cifar-100-python.
"""
from spr_jax import configlib


def get_config():
    c = configlib.cifar100_base()
    c.episodes = (
        (65, 22, 46, 73, 61), (29, 48, 90, 6, 13), (60, 3, 34, 97, 30), (4, 92, 26, 32, 80),
        (84, 82, 8, 31, 69), (35, 7, 17, 39, 93), (19, 79, 14, 56, 50), (66, 41, 16, 21, 12),
        (63, 87, 15, 68, 94), (10, 45, 2, 91, 38), (67, 99, 95, 70, 75), (72, 24, 37, 11, 59),
        (23, 74, 77, 5, 27), (25, 58, 51, 78, 18), (44, 33, 98, 53, 86), (62, 55, 0, 71, 36),
        (40, 57, 42, 81, 43), (1, 76, 83, 54, 96), (88, 9, 47, 28, 20), (89, 85, 64, 49, 52))
    return c
