"""Contrastive step and expert-phase throughput on this machine; prints one JSON object.

    python benchmarks/ssl_step.py [--steps 30] [--resnet_batch 16] [--experts 4] [--expert_epochs 20]

- mlp_*: one SimCLR step of the MLP encoder at batch 300 (600 views of 28x28x1, augmentation included),
  after compile; FLOPs from XLA's cost analysis of the compiled step.
- matmul_gflops: the best fp32 matmul throughput measured here (square 1024 and 2048 jnp matmuls, timed
  interleaved with the MLP steps), the yardstick for mlp_fraction_of_matmul (median step) and
  mlp_fraction_of_matmul_best (fastest step). The machine may be shared: load_avg_* say how busy it was.
- resnet18_*: one step at a small batch (2 x resnet_batch views of 32x32x3, colour jitter on), for each
  augmentation semantics (release = kornia 0.4.1's, torchvision) x view forwarding (separate = two
  batches, BatchNorm per view; joint = one batch of 2N): resnet18_step_ms[semantics/forwarding].
- experts_per_s / expert_epochs_per_s: a warm expert phase (MLP, D = 300) on all local devices.
- mlp_breakdown_ms: the step's parts timed alone (views, forward + loss, gradient, Adam).
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

from spr_jax import augment, experts, models, optim, simclr  # noqa: E402


def _times(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return np.asarray(out)


def _matmul_fn(n):
    mm = jax.jit(lambda a, b: a @ b)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    jax.block_until_ready(mm(a, a))
    return lambda: mm(a, a)


def step_benchmark(model, images, n_steps, views, matmul_sizes=()):
    """Median / min step time, compile time, XLA's FLOP count; matmuls of `matmul_sizes` are timed
    interleaved with the steps, so both see the same machine load (this machine is shared)."""
    state = simclr.init_state(model, jax.random.PRNGKey(0), images.shape[1:])
    lr = jnp.float32(3e-4)
    t = time.perf_counter()
    compiled = simclr.contrastive_step.lower(model, state, images, jax.random.PRNGKey(1), lr,
                                            views=views).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    holder = [state]

    def run(i=[0]):
        i[0] += 1
        holder[0], loss = compiled(holder[0], images, jax.random.PRNGKey(i[0]), lr)
        return loss

    jax.block_until_ready(run())
    matmuls = {n: _matmul_fn(n) for n in matmul_sizes}
    ts, best_mm = [], 0.0
    for _ in range(n_steps):
        ts.append(_times(run, 1)[0])
        for n, mm in matmuls.items():
            best_mm = max(best_mm, 2 * n ** 3 / _times(mm, 1)[0] / 1e9)
    ts = np.asarray(ts)
    return float(np.median(ts)), float(ts.min()), compile_s, flops, holder[0], best_mm


def mlp_breakdown(model, state, images, n):
    """Each part of the step alone (medians, ms); sums to a bit more than the fused step."""
    key = jax.random.PRNGKey(3)
    views = jax.jit(augment.views)
    x = views(key, images)  # the release's semantics, no colour jitter (grey images)

    def loss_fn(params, x):
        return simclr.contrastive_loss(model, params, state.batch_stats, x)[0]

    fwd = jax.jit(loss_fn)
    grad = jax.jit(jax.grad(loss_fn))
    g = grad(state.params, x)
    tx = optim.ssl_optimizer()
    adam = jax.jit(lambda p, o, g: tx.update(g, optim.with_lr(o, 3e-4), p))
    parts = {"views": lambda: views(key, images), "forward_loss": lambda: fwd(state.params, x),
             "forward_backward": lambda: grad(state.params, x),
             "adam": lambda: adam(state.params, state.opt_state, g)}
    out = {}
    for name, f in parts.items():
        jax.block_until_ready(f())
        out[name] = round(float(np.median(_times(f, n))) * 1e3, 2)
    return out


def expert_benchmark(n_experts, epochs, d=300):
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (n_experts * d, 28, 28, 1)).astype(np.uint8)
    chunks = np.arange(n_experts * d, dtype=np.int32).reshape(n_experts, d)
    model = models.make_simclr("mlp")
    kw = dict(model=model, epochs=epochs, base_lr=3e-4, warmup_epochs=11, group_size=max(1, n_experts // 2),
              progress=False)
    t = time.perf_counter()
    experts.expert_phase(images, chunks, 0, **kw)
    first = time.perf_counter() - t
    t = time.perf_counter()
    experts.expert_phase(images, chunks, 1, **kw)  # warm: the compiled round is cached
    warm = time.perf_counter() - t
    return {"experts_per_s": n_experts / warm, "expert_epochs_per_s": n_experts * epochs / warm,
            "expert_phase_first_call_s": first, "expert_phase_warm_s": warm, "experts": n_experts,
            "expert_epochs": epochs, "expert_group_size": kw["group_size"], "expert_chunk_size": d}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--resnet_batch", type=int, default=16)
    p.add_argument("--resnet_steps", type=int, default=3)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--expert_epochs", type=int, default=20)
    p.add_argument("--skip_resnet", action="store_true")
    a = p.parse_args()

    rs = np.random.RandomState(0)
    res = {}
    mlp = models.make_simclr("mlp")
    x = jnp.asarray(rs.randint(0, 256, (300, 28, 28, 1)), jnp.uint8)
    res["load_avg_1min_before"] = os.getloadavg()[0]
    med, best, comp, flops, state, mm = step_benchmark(mlp, x, a.steps, augment.Views(), matmul_sizes=(1024, 2048))
    res.update(mlp_step_ms=med * 1e3, mlp_step_min_ms=best * 1e3, mlp_compile_s=comp, mlp_step_gflop=flops / 1e9,
               mlp_gflops=flops / med / 1e9, mlp_gflops_best=flops / best / 1e9, matmul_gflops=mm,
               mlp_fraction_of_matmul=flops / med / 1e9 / mm, mlp_fraction_of_matmul_best=flops / best / 1e9 / mm)
    res["mlp_breakdown_ms"] = mlp_breakdown(mlp, state, x, a.steps)

    if not a.skip_resnet:
        rn = models.make_simclr("resnet18")
        xr = jnp.asarray(rs.randint(0, 256, (a.resnet_batch, 32, 32, 3)), jnp.uint8)
        res["resnet18_views"] = 2 * a.resnet_batch
        for semantics in augment.SEMANTICS:
            for separate in (True, False):
                name = f"{semantics}/{'separate' if separate else 'joint'}"
                views = augment.Views(color_jitter=True, semantics=semantics, separate_batches=separate)
                med, best, comp, flops, _, _ = step_benchmark(rn, xr, a.resnet_steps, views)
                res.setdefault("resnet18_step_ms", {})[name] = round(med * 1e3, 1)
                res.setdefault("resnet18_compile_s", {})[name] = round(comp, 1)
                res.setdefault("resnet18_gflops", {})[name] = round(flops / med / 1e9, 2)

    res.update(expert_benchmark(a.experts, a.expert_epochs))
    dev = jax.devices()[0]
    res["device"] = f"{dev.platform}:{dev.device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}, " \
                    f"{os.cpu_count()} cores)"
    res["jax"] = jax.__version__
    res["load_avg_1min_after"] = os.getloadavg()[0]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
