"""Flax (linen) models: the SPR encoders, the SimCLR projection head and the linear evaluation head.

docs/algorithm.md section 4. Inputs are float32 images [B, H, W, C] with pixels in [0, 1]; `train` switches BatchNorm
between batch statistics (and running-average updates, collection "batch_stats") and the running averages.

Initialisation follows PyTorch, because we match the reference in distribution, not draw for draw:
- nn.Linear (and a plain nn.Conv2d): weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform
  with a = sqrt(5)).
- torchvision's ResNet re-initialises every conv with kaiming-normal (mode fan_out, ReLU gain), sets
  BatchNorm scale 1 / bias 0 and leaves zero_init_residual off; `ResNet18` does the same.
BatchNorm: torch momentum 0.1 is flax momentum 0.9, eps 1e-5. One known difference: torch updates the
running variance with the unbiased batch variance (n / (n - 1)), flax with the biased one; n is B*H*W, so
the gap is below 1% except for a tiny batch.

`SimCLRModel` and `Classifier` both call their encoder submodule "encoder", so an evaluation copies
`params["encoder"]` (and `batch_stats["encoder"]`) of the SimCLR base into a fresh classifier.
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from spr_jax import augment
from spr_jax.errors import ConfigError
from spr_jax.errors import first_line

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the kernel: variance 1 / (3 fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision ResNet convs: N(0, 2 / fan_out) with fan_out = out_channels * kh * kw.
resnet_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int):
    """PyTorch's bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); flax bias initialisers do not see fan_in."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class TorchDense(nn.Module):
    """nn.Dense with torch.nn.Linear's default initialisation."""
    features: int

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_kernel_init, (fan_in, self.features))
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        return x @ kernel + bias


class MLPEncoder(nn.Module):
    """Flatten, then Linear(in, 512)-ReLU-Linear(512, 512)-ReLU: 664,576 params for 784 inputs."""
    hidden: Sequence[int] = (512, 512)
    input_norm: str = ""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm
        x = augment.normalize_input(x, self.input_norm)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(TorchDense(width, name=f"fc{i + 1}")(x))
        return x

    @property
    def features(self) -> int:
        return self.hidden[-1]


def _bn(train: bool, name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus a 1x1 conv+BN shortcut on a shape change."""
    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        conv = lambda c, k, s, p, name: nn.Conv(c, (k, k), (s, s), padding=[(p, p), (p, p)], use_bias=False,
                                                kernel_init=resnet_conv_init, name=name)
        y = conv(self.channels, 3, self.stride, 1, "conv1")(x)
        y = nn.relu(_bn(train, "bn1")(y))
        y = conv(self.channels, 3, 1, 1, "conv2")(y)
        y = _bn(train, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = conv(self.channels, 1, self.stride, 0, "downsample_conv")(x)
            x = _bn(train, "downsample_bn")(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """torchvision resnet18 without its fc layer: 512-d features, 11,176,512 params (conv kernels + BN)."""
    input_norm: str = ""
    stage_channels: Sequence[int] = (64, 128, 256, 512)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = augment.normalize_input(x, self.input_norm)
        x = nn.Conv(self.stage_channels[0], (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                    kernel_init=resnet_conv_init, name="conv1")(x)
        x = nn.relu(_bn(train, "bn1")(x))
        # torch pads the max-pool with -inf, as flax's max_pool does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, c in enumerate(self.stage_channels):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                x = BasicBlock(c, stride, name=f"layer{i + 1}_{j}")(x, train)
        return jnp.mean(x, axis=(1, 2))

    @property
    def features(self) -> int:
        return self.stage_channels[-1]


class ProjectionHead(nn.Module):
    """Linear(d, d)-ReLU-Linear(d, proj_dim)."""
    hidden: int
    proj_dim: int = 256

    @nn.compact
    def __call__(self, h):
        h = nn.relu(TorchDense(self.hidden, name="fc1")(h))
        return TorchDense(self.proj_dim, name="fc2")(h)


class SimCLRModel(nn.Module):
    """Encoder plus projection head; returns (features [B, d], projections [B, proj_dim])."""
    encoder: nn.Module
    proj_dim: int = 256

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = self.encoder(x, train=train)
        z = ProjectionHead(h.shape[-1], self.proj_dim, name="projector")(h)
        return h, z


class Classifier(nn.Module):
    """Encoder plus a linear head, for evaluation; the encoder's params sit under "encoder" as in SimCLRModel.

    `init(key, features, method=Classifier.head_only)` initialises the head alone, to the same values as a
    whole `init(key, images)` gives it (flax derives a submodule's key from its name, not from the order of
    initialisation): an evaluation replaces the encoder with the base's anyway.
    """
    encoder: nn.Module
    num_classes: int

    def setup(self):
        self.head = TorchDense(self.num_classes)

    def __call__(self, x, train: bool = False):
        return self.head(self.encoder(x, train=train))

    def head_only(self, features):
        return self.head(features)


class ConvNet(nn.Module):
    """A small convnet for 28x28 / 32x32 (and smaller) images: four blocks of conv3x3-BatchNorm-ReLU-maxpool2
    ('SAME' pooling, so 8x8 inputs work too), then a global average: `widths[-1]`-d features."""
    widths: Sequence[int] = (32, 64, 128, 256)
    input_norm: str = ""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = augment.normalize_input(x, self.input_norm)
        for i, c in enumerate(self.widths):
            x = nn.Conv(c, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, kernel_init=resnet_conv_init,
                        name=f"conv{i + 1}")(x)
            x = nn.relu(_bn(train, f"bn{i + 1}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return jnp.mean(x, axis=(1, 2))

    @property
    def features(self) -> int:
        return self.widths[-1]


# Built-in names of config.model.encoder -> import paths (spr_jax.plugins resolves both the same way). An
# encoder is a flax module factory (a Module class or a function returning a module) whose keyword
# parameters are filled from config.model by name (e.g. input_norm); the module maps float32 images
# [B, H, W, C] and `train` to features [B, d].
ENCODERS = {"mlp": "spr_jax.models:MLPEncoder", "resnet18": "spr_jax.models:ResNet18",
            "convnet": "spr_jax.models:ConvNet"}


def make_encoder(encoder, input_norm: str = "", **settings) -> nn.Module:
    """An encoder module: a built-in name or import path (resolved and built with `settings`), or a module."""
    if isinstance(encoder, nn.Module):
        return encoder
    from spr_jax import plugins  # resolution lives at the edge; this keeps the models' names convenient
    factory = plugins.resolve(encoder, ENCODERS, "config.model.encoder")
    return factory(**plugins.accepted_settings(factory, {"input_norm": input_norm, **settings}))


def make_simclr(encoder, proj_dim: int = 256, input_norm: str = "") -> SimCLRModel:
    """The SimCLR model: an encoder (module, built-in name or import path) plus the projection head."""
    return SimCLRModel(make_encoder(encoder, input_norm), int(proj_dim))


def make_classifier(encoder, num_classes: int, input_norm: str = "") -> Classifier:
    """The evaluation classifier; its params["encoder"] has the tree of make_simclr(encoder)'s."""
    return Classifier(make_encoder(encoder, input_norm), int(num_classes))


def param_count(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def check_encoder(model, image_shape, kind) -> None:
    """The SimCLR model of an encoder plug-in runs on abstract images of the run's shape (ConfigError naming
    config.model.encoder if not)."""
    x = jax.ShapeDtypeStruct((2,) + image_shape, jnp.float32)
    try:
        variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)
        (h, _), _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
                                   variables, x)
    except Exception as e:
        raise ConfigError(f"config.model.encoder={kind!r} fails on images {image_shape} "
                          f"({first_line(e)}); an encoder maps (x [B, H, W, C], train) to features [B, d]") from e
    if h.ndim != 2 or h.shape[0] != 2:
        raise ConfigError(f"config.model.encoder={kind!r} returns features of shape {h.shape} for 2 images; "
                          f"it must return [B, d]")
