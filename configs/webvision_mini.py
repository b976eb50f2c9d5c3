"""WebVision-mini: 14 classes of the WebVision Google subset at 84x84, real label noise; ResNet-18,
D = P = B = 1000.

    python launch.py --config=configs/webvision_mini.py --config.dataset.data_dir=/data/webvision \
        --workdir=workdirs/webvision
"""
from spr_jax import configlib


def get_config():
    c = configlib.cifar10_base()
    c.dataset.name = "webvision_mini"
    c.noise.kind = "real"
    c.noise.rate = 0.0  # unknown: the labels come noisy
    c.model.input_norm = "imagenet"
    c.episodes = ((7, 2), (11, 1), (8, 13), (3, 0), (6, 5), (12, 9), (4, 10))
    c.stream.delayed_buffer_size = 1000
    c.buffer.size = 1000
    c.base.batch_size = 1000
    c.expert.group_size = 1
    return c
