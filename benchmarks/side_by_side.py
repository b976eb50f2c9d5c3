"""spr_jax against the original release, one after the other on the same data, timed from outside; prints JSON.

    # once: the release with its own pins in a scratch folder (see release_reference.py)
    python benchmarks/release_reference/release_reference.py setup --scratch /tmp/spr_release
    python benchmarks/side_by_side.py --scratch /tmp/spr_release [--seed 1] [--pairs 2] [--threads 2] [--isa avx2]

Each pair runs, in alternating order (release first in even pairs, spr_jax first in odd ones, so a drift of
the machine's speed does not favour one side):
  * the release (torch 1.7.0, kornia 0.4.1) through the reference harness's driver, configs/fashion_mnist_cpu.py
    settings on the release's own stream for the seed, `--threads` torch threads (MKL_DEBUG_CPU_TYPE=5 on AMD);
  * spr_jax cold: `launch.py --config=configs/fashion_mnist_cpu.py --config.dataset.stream=release` in a fresh
    workdir with an empty compilation cache of its own (every program compiled, no expert cache);
  * spr_jax warm: the same in another fresh workdir, reusing that compilation cache (nothing compiled; the
    experts are trained again: the expert cache is per workdir).
Walls are the whole processes' (interpreter start, imports and data loading included, on both sides). The
JSON names the CPU (model, family/model numbers, the vector flags that decide the compiler's choices), the
load average before each run (an idle machine reads ~0), each run's split as the program reports it, and the
ratios release / spr_jax per pair. Both sides run the same data: the same subset, noisy labels and task order.

`--isa avx2` caps both programs' instruction sets at AVX2 on a CPU that has AVX-512, as far as each lets one
cap it: XLA's generated code (`--xla_cpu_max_isa=AVX2`, and spr_jax's fine-tune at the 256-bit vectors it
chooses on a CPU without avx512f), torch's MKL and oneDNN kernels (MKL_ENABLE_INSTRUCTIONS=AVX2,
DNNL_MAX_CPU_ISA=AVX2; torch 1.7's own kernels have no AVX-512 forms). Library kernels compiled into jaxlib
keep their own dispatch. It imitates an AVX2-only CPU's instructions, not its cores, caches or clocks.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "release_reference"))
import release_reference  # noqa: E402

from spr_jax import compilation  # noqa: E402  (the CPU's flags as spr_jax reads them; imports no backend)



def cpu_description() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "vendor_id", "cpu family", "model") and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    flags = compilation.cpu_flags()
    return {"model_name": info.get("model name"), "vendor": info.get("vendor_id"),
            "family": info.get("cpu family"), "model": info.get("model"), "cores": os.cpu_count(),
            "vector_flags": [f for f in compilation.VECTOR_FLAGS if f in flags]}


def run_release(args, seed):
    out_dir = tempfile.mkdtemp(prefix="side_by_side_release_")
    out = os.path.join(out_dir, f"release_seed{seed}.json")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = release_reference.driver(args, seed, out)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the release failed (seed {seed}):\n{done.stdout[-3000:]}")
    with open(out) as f:
        r = json.load(f)
    s = release_reference.summarise(r)
    return {"wall_s": round(wall, 1), "load_avg_before": load, "split_s": s["times_s"],
            "final_accuracy": round(s["final_accuracy"], 2), "buffer_purity": round(s["buffer_purity"], 1)}


def run_spr(seed, compile_dir, label, isa="native"):
    workdir = tempfile.mkdtemp(prefix=f"side_by_side_spr_{label}_")
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config=configs/fashion_mnist_cpu.py",
           "--config.dataset.stream=release", f"--config.seed={seed}", f"--config.cache.compile_dir={compile_dir}",
           "--config.logging.tensorboard=False", f"--workdir={workdir}"]
    if isa == "avx2":  # (XLA_FLAGS is set for the process: see cap_isa)
        cmd.append("--config.cache.cpu_vector_width=256")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"spr_jax failed (seed {seed}, {label}):\n{done.stdout[-3000:]}")
    with open(os.path.join(workdir, "summary.json")) as f:
        s = json.load(f)
    return {"wall_s": round(wall, 1), "load_avg_before": load, "split_s": s["wall_time_s"],
            "compile_s": s.get("compile_s"), "final_accuracy": round(100 * s["final_accuracy"], 2),
            "buffer_purity": round(100 * s["final_purity"], 1)}


def cap_isa(isa: str) -> dict:
    """--isa avx2: the environment both programs inherit (the module's doc); returns what was set."""
    if isa == "native":
        return {}
    caps = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
            "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()}
    os.environ.update(caps)
    return caps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", required=True, help="the release's scratch folder (release_reference.py setup)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the release (spr_jax uses XLA's)")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: cap both programs at AVX2 instructions (see the module's doc)")
    args = parser.parse_args()
    caps = cap_isa(args.isa)
    args.subset_per_class = 600
    pairs = []
    for i in range(args.pairs):
        compile_dir = tempfile.mkdtemp(prefix="side_by_side_xla_")
        sides = {}
        order = ("release", "spr_jax") if i % 2 == 0 else ("spr_jax", "release")
        for side in order:
            if side == "release":
                sides["release"] = run_release(args, args.seed)
            else:
                sides["spr_jax_cold"] = run_spr(args.seed, compile_dir, "cold", args.isa)
                sides["spr_jax_warm"] = run_spr(args.seed, compile_dir, "warm", args.isa)
        sides["order"] = order
        sides["ratio_cold"] = round(sides["release"]["wall_s"] / sides["spr_jax_cold"]["wall_s"], 2)
        sides["ratio_warm"] = round(sides["release"]["wall_s"] / sides["spr_jax_warm"]["wall_s"], 2)
        pairs.append(sides)
        print(json.dumps({"pair": i, **sides}), file=sys.stderr, flush=True)
    print(json.dumps({"cpu": cpu_description(), "isa": args.isa, "isa_caps": caps, "seed": args.seed,
                      "release_threads": args.threads,
                      "config": "configs/fashion_mnist_cpu.py (the release's stream)", "pairs": pairs,
                      "ratio_cold": [p["ratio_cold"] for p in pairs], "ratio_warm": [p["ratio_warm"] for p in pairs]}))


if __name__ == "__main__":
    main()
