"""A seconds-long smoke run on a generated 8x8 dataset, for tests and CI.

    python launch.py --config=configs/tiny.py --workdir=/tmp/spr_tiny
"""
from spr_jax import configlib


def get_config():
    c = configlib.base_config()
    c.dataset.name = "synthetic"
    c.episodes = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    c.stream.delayed_buffer_size = 40
    c.buffer.size = 40
    c.base.batch_size = 40
    c.expert.epochs = 4
    c.base.epochs = 3
    c.expert.group_size = 4
    c.filter.num_graphs = 2
    c.eval.epochs = 2
    c.eval.batch_size = 8
    c.checkpoint.every_chunks = 2
    c.cache.cpu_quick_compile = True  # its runs are mostly compiling
    return c
