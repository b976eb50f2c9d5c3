"""Shared config defaults (the published mnist setting, docs/algorithm.md) and config validation.

Every file in configs/ starts from `base_config()` and overrides what its setting changes, so one
default lives in one place. `validate` turns a bad value into an error that says what to change.
"""
import dataclasses
import math
from typing import Optional

import ml_collections

from spr_jax.errors import ConfigError  # (raised by validate; spr_jax.configlib.ConfigError is this)

MNIST_EPISODES = ((7, 6), (2, 3), (0, 1), (5, 9), (8, 4))
PRECISIONS = ("highest", "default", "bfloat16")
STREAMS = ("spr_jax", "release")
RETRIEVALS = ("random", "mir")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Matmul precision of the SimCLR steps (experts and base): highest (float32, the default) | default (the
    # backend's: TF32 on recent GPUs) | bfloat16. The filter always runs at full precision. CPUs compute
    # float32 whatever this says.
    c.precision = "highest"
    # spr: a self-supervised base, fine-tuned on the buffer at each evaluation | online: a supervised
    # classifier trained on the stream as it arrives (the continual-learning baselines; settings in c.online).
    c.protocol = "spr"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "mnist"  # see spr_jax.data.sources.DATASETS
    c.dataset.source = "auto"  # auto | idx | cifar | tfds | sklearn | webvision | synthetic
    c.dataset.data_dir = ""  # a local folder (IDX files, CIFAR batches, webvision); "" = default places
    c.dataset.subset_per_class = 0  # >0: seeded, class-balanced training subset (before the noise)
    # Whose draws make the noisy stream: spr_jax (numpy generators of the seed) | release (the PyTorch release's
    # own: a seed gives the release's noisy samples and stream order, so runs pair with it seed by seed;
    # subset_per_class then keeps the first N of each class). docs/algorithm.md, "Pairing runs with the release".
    c.dataset.stream = "spr_jax"

    c.noise = ml_collections.ConfigDict()
    c.noise.kind = "symmetric"  # none | symmetric | asymmetric | superclass | real
    c.noise.rate = 0.4

    # Tasks of class ids (noisy labels); docs/algorithm.md section 1. Tuples, so that the command line can override
    # them: --config.episodes='((0, 1), (2, 3))'.
    c.episodes = MNIST_EPISODES
    c.superclass_episodes = False  # True: one task per superclass (cifar100), replacing `episodes`

    c.stream = ml_collections.ConfigDict()
    c.stream.batch = 10  # the stream is read in batches of 10; a task's last partial batch is dropped
    c.stream.delayed_buffer_size = 300  # D: samples per chunk

    c.model = ml_collections.ConfigDict()
    # A built-in (mlp: 784-512-512 | resnet18 | convnet: 4 conv blocks) or a flax module factory of your
    # own, 'package.module:name' (docs/extending.md); its keyword parameters are read from this block.
    c.model.encoder = "mlp"
    c.model.proj_dim = 256
    c.model.input_norm = ""  # "" (pixels in [0, 1]) | "imagenet" (mean/std normalisation, webvision)

    c.ssl = ml_collections.ConfigDict()  # shared by expert and base (docs/algorithm.md section 4)
    c.ssl.lr = 3e-4
    c.ssl.temperature = 0.5
    c.ssl.warmup_epochs = 11  # constant lr for this many epochs, then cosine
    # Augmentation semantics: release (kornia 0.4.1, as the reference release) | torchvision.
    c.ssl.augment = "release"
    # How the two views are forwarded: separate (two batches: BatchNorm statistics per view, as the
    # release) | joint (one batch of 2N). Models without BatchNorm give the same numbers either way.
    c.ssl.view_batches = "separate"
    # With model.input_norm set (webvision): normalise before augmenting, so the jitter's [0, 1] clamps act
    # on normalised values (the release's order); False normalises after augmenting.
    c.ssl.normalize_first = True

    c.expert = ml_collections.ConfigDict()
    c.expert.epochs = 4000  # one batch of the whole chunk per epoch
    # Chunks trained together under vmap on one device (memory grows with it); 0 = chosen for the backend
    # (1 on a CPU, where larger groups are slower; on a GPU/TPU as many as half its memory holds).
    c.expert.group_size = 8

    c.base = ml_collections.ConfigDict()
    c.base.epochs = 3000  # self-replay epochs per chunk; 0 = no self-supervised base (a memory-only learner)
    c.base.batch_size = 300  # B
    c.base.data_parallel = False  # split self-replay batches over local devices

    c.filter = ml_collections.ConfigDict()
    # centrality (SPR's self-centered filter) | none (keep everything) | 'package.module:fn' of your own;
    # the filter's keyword parameters are read from this block (num_graphs, max_iter for centrality).
    c.filter.kind = "centrality"
    c.filter.num_graphs = 5  # E_max
    c.filter.max_iter = 6000  # eigenvector-centrality power iterations (networkx's cap)
    # The other filters (docs/algorithm.md, "Other filters"), each a classifier on the chunk's expert features:
    # aum (area under the margin, with threshold samples), incv (iterative noisy cross-validation), knn.
    c.filter.aum_steps = 400  # aum: full-batch gradient steps of its linear classifier (the margins' epochs)
    c.filter.aum_lr = 1.0  # aum: their learning rate
    c.filter.aum_percentile = 99.0  # aum: the threshold samples' AUM percentile below which a sample is dropped
    c.filter.incv_iterations = 4  # incv: cross-validation rounds (the paper's 4)
    c.filter.incv_steps = 25  # incv: full-batch gradient steps of each half's linear classifier
    c.filter.incv_lr = 1.0  # incv: their learning rate
    c.filter.incv_remove_ratio = -1.0  # incv: r, large-loss removals per selected sample; < 0: estimated (paper)
    c.filter.knn_k = 10  # knn: neighbours whose labels vote

    c.buffer = ml_collections.ConfigDict()
    c.buffer.size = 300  # P; 0 = a memory that holds the whole stream (the multitask upper bound)
    # purified (SPR) | class_balanced (uniform eviction: plain replay) | reservoir | 'package.module:policy'
    c.buffer.policy = "purified"
    # Deprecated: True is filter.kind=none + buffer.policy=class_balanced (removed in the next release).
    c.buffer.plain_replay = False

    c.online = ml_collections.ConfigDict()  # protocol=online only (our choices for the baselines)
    c.online.lr = 1e-3  # Adam
    c.online.replay = True  # experience replay from the buffer policy's memory; False: plain fine-tuning
    c.online.stream_batch = 10  # samples per step, as the stream is read
    c.online.replay_batch = 10  # memory samples added to each step
    # Which memory samples are replayed: random (the buffer policy's sample: experience replay) | mir (MIR: those
    # whose loss a virtual SGD step on the stream batch raises most; docs/algorithm.md, "Baselines")
    c.online.retrieval = "random"
    c.online.mir_candidates = 50  # MIR: memory samples drawn (without replacement) and scored per step
    c.online.mir_step = 0.1  # MIR: the virtual SGD step's size
    c.online.ewc_lambda = 0.0  # > 0: online EWC's penalty weight (0 = no EWC)
    c.online.ewc_decay = 1.0  # online EWC: the consolidated Fisher's factor at each chunk's end (gamma)

    c.eval = ml_collections.ConfigDict()
    c.eval.epochs = 50
    c.eval.batch_size = 16
    c.eval.lr = 2e-3
    c.eval.decay_every = 300  # steps
    c.eval.decay = 0.1
    c.eval.clip = 0.5  # gradient clipping by value
    c.eval.test_batch_size = 1000
    c.eval.loss = "cross_entropy"  # the fine-tuning loss: a built-in or 'package.module:fn(logits, labels)'
    # eval.loss=l2r (learning to reweight): clean training samples per class in its meta set, with their TRUE
    # labels: supervision the other methods do not get (docs/algorithm.md section 8)
    c.eval.l2r_meta_per_class = 10
    # eval.loss=pencil (docs/algorithm.md section 8): its losses' weights, the label logits' step size (per batch
    # of eval.batch_size), their initial scale K, and its first two stages as shares of eval.epochs (the rest:
    # stage 3; the paper's 70 and 130 of 320 epochs)
    c.eval.pencil_alpha = 0.1
    c.eval.pencil_beta = 0.8
    c.eval.pencil_lr = 75.0
    c.eval.pencil_k = 10.0
    c.eval.pencil_stage1 = 0.22
    c.eval.pencil_stage2 = 0.41

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_chunks = 10
    c.checkpoint.keep = 3

    c.logging = ml_collections.ConfigDict()
    # TensorBoard event files in WORKDIR/tensorboard (tensorboardX, no TensorFlow); metrics.jsonl is always written
    c.logging.tensorboard = True
    # WORKDIR/summary.png (about a second of matplotlib per run: a comparison of hundreds of small runs may skip it;
    # its compare.png is drawn either way)
    c.logging.summary_plot = True
    # Weights & Biases: "" (off) | "offline" (WORKDIR/wandb, no network; wandb sync uploads it) | "online"
    c.logging.wandb = ""
    c.logging.wandb_project = "spr_jax"  # the W&B project the run is logged to
    # jax.profiler trace of this many replay segments (checkpoint.every_chunks chunks each) into WORKDIR/profile
    c.logging.profile_segments = 0
    c.cache = ml_collections.ConfigDict()
    c.cache.dir = ""  # expert cache folder; "" = WORKDIR/expert_cache
    # JAX's persistent compilation cache (compiled programs reused by later runs); "" switches it off.
    c.cache.compile_dir = "~/.cache/spr_jax/xla"
    # Compile the replay and evaluation programs in a background thread while the experts train (changes no
    # result; False compiles each program when it is first called).
    c.cache.warm_up = True
    # XLA's LLVM optimisation level for programs compiled for a CPU: 1 compiles 20-25% faster than XLA's
    # default 3 with the same step time and, in our checks, bit-identical training (a logged loss can differ
    # in its last bit); -1 = XLA's default.
    # Accelerators always keep XLA's defaults.
    c.cache.cpu_opt_level = 1
    # The vector width (bits) XLA prefers in the programs that gain from wide vectors (the evaluation's
    # fine-tuning): 0 = chosen from the CPU's flags (512 with AVX-512, else 256); 256 | 512 set it.
    c.cache.cpu_vector_width = 0
    # Quick compilation for runs of seconds (configs/tiny.py): XLA's older CPU emitters compile a program in
    # about 60% of the time and run it slower (spr_jax/compilation.py); accuracies and buffers the same in
    # our checks, a logged loss can differ in its last bits.
    c.cache.cpu_quick_compile = False
    return c


SEED_MAX = 2 ** 31 - 1


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: low .. high (None: unbounded), `open_low` excluding low itself."""
    field: str
    low: float
    high: Optional[float] = None
    open_low: bool = False
    integer: bool = True
    note: str = ""  # what a special value means, or why the bound

    def interval(self) -> str:
        return f"{'(' if self.open_low else '['}{self.low}, {'inf)' if self.high is None else f'{self.high}]'}"

    def condition(self) -> str:
        low = f"{'>' if self.open_low else '>='} {self.low}"
        kind = "an integer " if self.integer else ""
        return f"{kind}{low}" + ("" if self.high is None else f" and <= {self.high}")

    def admits(self, value) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and (self.high is None or value <= self.high)


# Every numeric field, checked by `validate` before anything is written (docs/config_ranges.md is generated
# from this table: python -m spr_jax.config_ranges).
RANGES = (
    Range("seed", 0, SEED_MAX, note="travels as an int32 in the run's state and seeds numpy's generators"),
    Range("dataset.subset_per_class", 0, note="0 = every training sample"),
    Range("noise.rate", 0, 1, integer=False, note="the share of labels corrupted"),
    Range("stream.batch", 1),
    Range("stream.delayed_buffer_size", 2, note="D: samples per chunk"),
    Range("model.proj_dim", 1),
    Range("ssl.lr", 0, open_low=True, integer=False, note="a learning rate"),
    Range("ssl.temperature", 0, open_low=True, integer=False, note="it divides the SimCLR similarities"),
    Range("ssl.warmup_epochs", 0, note="0 = cosine from the first epoch"),
    Range("expert.epochs", 1),
    Range("expert.group_size", 0, note="0 = chosen for the backend"),
    Range("base.epochs", 0, note="0 = no self-supervised base (a memory-only learner)"),
    Range("base.batch_size", 2, note="B; SimCLR needs two samples to contrast"),
    Range("filter.num_graphs", 1, note="E_max"),
    Range("filter.max_iter", 1),
    Range("filter.aum_steps", 1),
    Range("filter.aum_lr", 0, open_low=True, integer=False, note="a learning rate"),
    Range("filter.aum_percentile", 0, 100, integer=False, note="a percentile"),
    Range("filter.incv_iterations", 1),
    Range("filter.incv_steps", 1),
    Range("filter.incv_lr", 0, open_low=True, integer=False, note="a learning rate"),
    Range("filter.incv_remove_ratio", -1, 2, integer=False,
          note="< 0 = estimated from the first round's held-out agreement, as the paper"),
    Range("filter.knn_k", 1, note="at most the chunk's size - 1 are used"),
    Range("buffer.size", 0, note="P; 0 = a memory holding the whole stream"),
    Range("online.lr", 0, open_low=True, integer=False, note="a learning rate"),
    Range("online.stream_batch", 1),
    Range("online.replay_batch", 1),
    Range("online.mir_candidates", 1, note="at least online.replay_batch when online.retrieval=mir"),
    Range("online.mir_step", 0, open_low=True, integer=False, note="MIR's virtual SGD step size"),
    Range("online.ewc_lambda", 0, integer=False, note="0 = no EWC"),
    Range("online.ewc_decay", 0, 1, integer=False, note="1 = every chunk's Fisher kept in full"),
    Range("eval.epochs", 1, note="the classifier is fine-tuned on the buffer for at least one epoch"),
    Range("eval.batch_size", 1),
    Range("eval.lr", 0, open_low=True, integer=False, note="a learning rate"),
    Range("eval.decay_every", 1, note="steps between learning-rate decays"),
    Range("eval.decay", 0, 1, open_low=True, integer=False, note="the learning rate's factor at each decay; 1 = none"),
    Range("eval.clip", 0, open_low=True, integer=False, note="gradients are clipped to [-clip, clip]"),
    Range("eval.test_batch_size", 1),
    Range("eval.l2r_meta_per_class", 1, note="L2R's clean samples per class (true labels)"),
    Range("eval.pencil_alpha", 0, integer=False, note="Pencil's compatibility-loss weight"),
    Range("eval.pencil_beta", 0, integer=False, note="Pencil's entropy-loss weight"),
    Range("eval.pencil_lr", 0, integer=False, note="Pencil's label-logit step size; 0 = labels never learned"),
    Range("eval.pencil_k", 0, open_low=True, integer=False, note="Pencil's initial label-logit scale"),
    Range("eval.pencil_stage1", 0, 1, integer=False, note="Pencil's share of cross-entropy epochs"),
    Range("eval.pencil_stage2", 0, 1, integer=False, note="Pencil's share of label-learning epochs"),
    Range("checkpoint.every_chunks", 1),
    Range("checkpoint.keep", 1, note="checkpoints kept; the latest is the one a run resumes from"),
    Range("logging.profile_segments", 0, note="0 = no profile"),
    Range("cache.cpu_opt_level", -1, 3, note="an LLVM optimisation level 0-3, or -1 for XLA's default"),
    Range("cache.cpu_vector_width", 0, 512, note="0 = chosen from the CPU's flags; else 256 or 512 bits"),
)


def _leaves(node, prefix=""):
    """(dotted name, value) of every field of a ConfigDict, nested dicts walked."""
    for k in node.keys():
        v = node[k]
        if hasattr(v, "keys"):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(c, dotted: str, *missing):
    """c's field `dotted` ('eval.lr'); `missing` (if given) where the config lacks it."""
    for part in dotted.split("."):
        if missing and part not in c:
            return missing[0]
        c = c[part]
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks what can be checked without the data (class ids are checked against the dataset later)."""
    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    for name, value in _leaves(c):
        if isinstance(value, float):
            need(math.isfinite(value), f"config.{name}={value} is not a finite number")
    defaults = base_config()
    for r in RANGES:
        value = _get(c, r.field, None)
        if value is None:  # a field a config file dropped: whatever reads it reports that
            continue
        number = isinstance(value, int) or (not r.integer and isinstance(value, float))
        need(number and not isinstance(value, bool) and r.admits(value),
             f"config.{r.field}={value!r} is outside {r.interval()}: it must be {r.condition()}"
             f"{f' ({r.note})' if r.note else ''}; the default is {_get(defaults, r.field)}")
    kinds = ("none", "symmetric", "asymmetric", "superclass", "real")
    need(c.noise.kind in kinds, f"config.noise.kind={c.noise.kind!r} is unknown; use one of {kinds}")
    need(c.protocol in ("spr", "online"), f"config.protocol={c.protocol!r} is unknown; use 'spr' or 'online'")
    retrieval = c.online.get("retrieval", "random")
    need(retrieval in RETRIEVALS, f"config.online.retrieval={retrieval!r} is unknown; use one of {RETRIEVALS}")
    if c.protocol == "online" and retrieval == "mir":
        need(c.online.replay, "config.online.retrieval='mir' retrieves replay samples; set config.online.replay=True")
        need(c.online.mir_candidates >= c.online.replay_batch,
             f"config.online.mir_candidates={c.online.mir_candidates} must be at least config.online.replay_batch="
             f"{c.online.replay_batch} (MIR picks the replay batch among the candidates)")
    need(c.logging.wandb in ("", "offline", "online"),
         f"config.logging.wandb={c.logging.wandb!r} is unknown; use '' (off), 'offline' or 'online'")
    if c.logging.wandb:
        import importlib.util
        need(importlib.util.find_spec("wandb") is not None,
             f"config.logging.wandb={c.logging.wandb!r} needs the wandb package: pip install -e '.[wandb]' "
             f"(or pip install wandb)")
    need(c.precision in PRECISIONS, f"config.precision={c.precision!r} is unknown; use one of {PRECISIONS}")
    need(c.dataset.stream in STREAMS, f"config.dataset.stream={c.dataset.stream!r} is unknown; use one of {STREAMS}")
    if c.dataset.stream == "release":
        need(c.seed >= 1, "config.seed=0 with config.dataset.stream='release': the release leaves its generators "
             "unseeded for seed 0, so no run of it pairs with this one; use a seed >= 1")
        need(c.noise.kind in ("none", "symmetric", "asymmetric", "real"),
             f"config.noise.kind={c.noise.kind!r} is not reproduced under config.dataset.stream='release' "
             f"(symmetric, asymmetric, real and none are); use --config.dataset.stream=spr_jax")
    if c.superclass_episodes:
        return
    need(len(c.episodes) >= 1, "config.episodes must hold at least one task")
    seen = {}
    for t, task in enumerate(c.episodes):
        need(len(task) >= 1, f"task {t} of config.episodes is empty; every task needs at least one class id")
        for k in task:
            need(isinstance(k, int) and k >= 0, f"class id {k!r} in task {t} must be a non-negative int")
            need(k not in seen, f"class {k} is in task {seen.get(k)} and task {t}; a class may be in one task only")
            seen[k] = t


def cifar10_base() -> ml_collections.ConfigDict:
    """CIFAR-10 (docs/algorithm.md): ResNet-18, D = P = B = 500; symmetric noise and the mnist episodes."""
    c = base_config()
    c.dataset.name = "cifar10"
    c.model.encoder = "resnet18"
    c.stream.delayed_buffer_size = 500
    c.buffer.size = 500
    c.base.batch_size = 500
    c.expert.group_size = 2  # ResNet-18 experts are large: fewer per device at once
    return c


def cifar100_base() -> ml_collections.ConfigDict:
    """CIFAR-100 (docs/algorithm.md): ResNet-18, D = 1250, P = 5000, B = 250."""
    c = cifar10_base()
    c.dataset.name = "cifar100"
    c.stream.delayed_buffer_size = 1250
    c.buffer.size = 5000
    c.base.batch_size = 250
    c.expert.group_size = 1
    return c
