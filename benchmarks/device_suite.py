"""The accelerator suite: the rates that decide a published run's wall time, on whatever device JAX sees,
written to one JSON file. Run it through benchmarks/device_suite.sh on a lent GPU (under 8 minutes on one
GPU); `--reduced` runs the same code at toy sizes on a CPU (a slow-marked test does, so it cannot rot).

Measured (medians of warm calls; compile times reported apart):
- mlp_step_ms: one MLP SimCLR step at batch 300 (600 views of 28x28x1), the base's step of the mnist
  settings;
- experts: expert-phase throughput (experts per second at 4000 epochs, and expert-epochs per second) for
  the mnist settings (MLP, D = 300) at group sizes 8, 32 and 128 (vmapped experts per device);
- resnet18_step_ms: one ResNet-18 SimCLR step at batch 500 (cifar10), views forwarded as two batches
  (the release) and as one batch of 2N;
- filter_ms: the self-centered filter on a 300-sample chunk of 10 classes and a 1,250-sample chunk of 100;
- projected_wall_s: the published mnist (200 chunks of 300; 4000 expert and 3000 base epochs, the base's
  epochs one batch before the buffer fills and two after) and cifar10 (100 chunks of 500, ResNet-18,
  experts assumed one at a time at the ResNet step time) configs from those rates.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spr_jax import augment, experts, models, simclr  # noqa: E402
from spr_jax.filters import centrality  # noqa: E402

FULL = dict(mlp_batch=300, groups=(8, 32, 128), expert_epochs=100, expert_rounds=1, resnet_batch=500,
            filter_chunks=((300, 10), (1250, 100)), repeats=5)
REDUCED = dict(mlp_batch=32, groups=(1, 2), expert_epochs=3, expert_rounds=1, resnet_batch=2,
               filter_chunks=((40, 4), (60, 12)), repeats=2)


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def simclr_step_ms(model, images, views, repeats):
    state = simclr.init_state(model, jax.random.PRNGKey(0), images.shape[1:])
    lr = jnp.float32(3e-4)
    t = time.perf_counter()
    fn = simclr.contrastive_step.lower(model, state, images, jax.random.PRNGKey(1), lr, views=views).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def run():
        box[0], loss = fn(box[0], images, jax.random.PRNGKey(2), lr)
        return loss
    return _median_time(run, repeats) * 1e3, compile_s


def expert_rates(group, epochs, rounds, d=300):
    n = group * jax.local_device_count() * rounds
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (n * d, 28, 28, 1)).astype(np.uint8)
    chunks = np.arange(n * d, dtype=np.int32).reshape(n, d)
    kw = dict(model=models.make_simclr("mlp"), epochs=epochs, base_lr=3e-4, warmup_epochs=11, group_size=group,
              progress=False, keep_losses=False)
    t = time.perf_counter()
    experts.expert_phase(images, chunks, 0, **kw)
    first = time.perf_counter() - t
    t = time.perf_counter()
    experts.expert_phase(images, chunks, 1, **kw)
    warm = time.perf_counter() - t
    return {"experts": n, "epochs": epochs, "warm_s": warm, "first_call_s": first,
            "expert_epochs_per_s": n * epochs / warm, "experts_per_s_at_4000_epochs": n * epochs / warm / 4000}


def filter_ms(d, k, repeats):
    rs = np.random.RandomState(1)
    means = rs.normal(size=(k, 128))
    labels = rs.randint(0, k, d).astype(np.int32)
    feats = means[labels] + rs.normal(size=(d, 128))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    fn = jax.jit(lambda key, f, l: centrality.purify_chunk(key, f, l, num_classes=k))
    args = (jax.random.PRNGKey(0), jnp.asarray(feats), jnp.asarray(labels))
    return _median_time(lambda: fn(*args), repeats) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="device_suite.json")
    p.add_argument("--reduced", action="store_true", help="toy sizes (a CPU check that the suite runs)")
    a = p.parse_args()
    size = REDUCED if a.reduced else FULL
    t_start = time.perf_counter()
    dev = jax.devices()[0]
    res = {"device": f"{dev.platform}:{dev.device_kind}", "devices": jax.device_count(), "jax": jax.__version__,
           "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "reduced": a.reduced,
           "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()}}
    rs = np.random.RandomState(0)

    mlp = models.make_simclr("mlp")
    x = jnp.asarray(rs.randint(0, 256, (size["mlp_batch"], 28, 28, 1)), jnp.uint8)
    res["mlp_step_ms"], res["mlp_step_compile_s"] = simclr_step_ms(mlp, x, augment.Views(), size["repeats"])

    res["experts"] = {str(g): expert_rates(g, size["expert_epochs"], size["expert_rounds"]) for g in size["groups"]}

    rn = models.make_simclr("resnet18")
    xr = jnp.asarray(rs.randint(0, 256, (size["resnet_batch"], 32, 32, 3)), jnp.uint8)
    res["resnet18_step_ms"], res["resnet18_compile_s"] = {}, {}
    for name, separate in (("separate", True), ("joint", False)):
        views = augment.Views(color_jitter=True, separate_batches=separate)
        res["resnet18_step_ms"][name], res["resnet18_compile_s"][name] = simclr_step_ms(rn, xr, views, size["repeats"])

    res["filter_ms"] = {f"{d}x{k}": filter_ms(d, k, size["repeats"]) for d, k in size["filter_chunks"]}

    # Projections of the published configs (see the module docstring for the model of each).
    best_rate = max(r["expert_epochs_per_s"] for r in res["experts"].values())
    f300 = res["filter_ms"][f"{size['filter_chunks'][0][0]}x{size['filter_chunks'][0][1]}"] / 1e3
    mnist_experts = 200 * 4000 / best_rate + 200 * f300
    mnist_base = (1 * 3000 * 1 + 199 * 3000 * 2) * res["mlp_step_ms"] / 1e3
    rn_step = res["resnet18_step_ms"]["separate"] / 1e3
    cifar_experts = 100 * 4000 * rn_step
    cifar_base = (1 * 3000 * 1 + 99 * 3000 * 2) * rn_step
    res["projected_wall_s"] = {"mnist": {"experts": mnist_experts, "base": mnist_base,
                                         "total": mnist_experts + mnist_base},
                               "cifar10": {"experts": cifar_experts, "base": cifar_base,
                                           "total": cifar_experts + cifar_base}}
    if a.reduced:
        res["projected_wall_s"]["note"] = "toy sizes: these projections mean nothing"
    res["suite_s"] = time.perf_counter() - t_start
    text = json.dumps(res, indent=1, default=float)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
