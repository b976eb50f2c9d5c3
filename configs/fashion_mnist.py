"""Fashion-MNIST, 40% symmetric noise, with the published mnist settings (the offline real dataset).

    apt-get install -y dataset-fashion-mnist   # puts the IDX files in /usr/share/datasets/fashion-mnist
    python launch.py --config=configs/fashion_mnist.py --workdir=workdirs/fashion_mnist
"""
from spr_jax import configlib


def get_config():
    c = configlib.base_config()
    c.dataset.name = "fashion_mnist"
    return c
