"""Fashion-MNIST, 40% symmetric noise, affordable on a CPU: the published mnist settings except 600
training images per class (a 6,000-sample stream, 19 chunks of 300) and 50 expert and 50 base epochs; the
expert group size is chosen for the backend (one expert at a time on a CPU, where that is fastest).

    python launch.py --config=configs/fashion_mnist_cpu.py --workdir=workdirs/fmnist_cpu
    python launch.py --config=configs/fashion_mnist_cpu.py --config.filter.kind=none \
        --config.buffer.policy=class_balanced --workdir=workdirs/fmnist_cpu_plain       # plain replay
"""
from spr_jax import configlib


def get_config():
    c = configlib.base_config()
    c.dataset.name = "fashion_mnist"
    c.dataset.subset_per_class = 600
    c.expert.epochs = 50
    c.base.epochs = 50
    c.expert.group_size = 0
    return c
