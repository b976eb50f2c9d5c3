"""The original SPR release as a reference you can run beside spr_jax (not part of the package or its tests).

    # 1. build it in a scratch folder with its own pins (Python 3.8 through pyenv; ~1 GB, a few minutes)
    python benchmarks/release_reference/release_reference.py setup --scratch /tmp/spr_release
    # 2. the release's stream for seeds 1 and 2 (noisy labels and task orders), e.g. as a test table
    python benchmarks/release_reference/release_reference.py stream --scratch /tmp/spr_release --seeds 1 2 \
        --out stream.json
    # 3. whole runs, fashion_mnist_cpu-equivalent settings; one JSON per seed, resumable (skips finished seeds)
    python benchmarks/release_reference/release_reference.py run --scratch /tmp/spr_release --seeds 1 2 3 \
        --out-dir /tmp/spr_release/results
    # 4. pair them with spr_jax runs on the release's stream (--config.dataset.stream=release)
    python benchmarks/release_reference/paired.py --release /tmp/spr_release/results \
        --spr workdirs/release_stream_seed{seed}

`setup` clones the public release (github ecrireme/SPR) at commit 9ef8fb1 (or copies a local clone given by
--source), and installs its pins in a Python 3.8 virtual environment: torch 1.7.0, torchvision 0.8.1, kornia
0.4.1, networkx 2.6.3 (Pillow is the newest for Python 3.8; the release pins 6.1, which only its WebVision
loader uses). Nothing of the release's code enters this repository: driver.py imports it from the scratch
folder and wraps a few of its methods to record what they compute. Fashion-MNIST is read from
/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist package) or --fashion-dir.

Settings of `run` (the release's mnist config with these overrides, i.e. configs/fashion_mnist_cpu.py):
40% symmetric noise, 50 expert and 50 base epochs, the first 600 training images of each class, CPU,
2 torch threads and MKL_DEBUG_CPU_TYPE=5 (MKL's fast path on AMD CPUs: the release's best setting there).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

COMMIT = "9ef8fb1"
REPOSITORY = "https://github.com/ecrireme/SPR"
PINS = ["torch==1.7.0", "torchvision==0.8.1", "kornia==0.4.1", "networkx==2.6.3", "numpy<1.25", "scipy<1.11",
        "pyyaml", "six", "tensorboardX", "tqdm", "colorful", "colorlog", "protobuf<4"]
HERE = os.path.dirname(os.path.abspath(__file__))


def paths(scratch):
    return os.path.join(scratch, "SPR"), os.path.join(scratch, "venv", "bin", "python")


def find_python38():
    for candidate in (os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python"), shutil.which("python3.8")):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("no Python 3.8 found: install it (e.g. pyenv install 3.8) or pass --python")


def setup(args):
    source_dir, python = paths(args.scratch)
    os.makedirs(args.scratch, exist_ok=True)
    if not os.path.isdir(source_dir):
        subprocess.run(["git", "clone", "-q", args.source, source_dir], check=True)
    subprocess.run(["git", "-C", source_dir, "checkout", "-q", COMMIT], check=True)
    if not os.path.exists(python):
        subprocess.run([args.python or find_python38(), "-m", "venv", os.path.join(args.scratch, "venv")],
                       check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "pip<24"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q"] + PINS, check=True)
    out = subprocess.run([python, "-c", "import torch, kornia, networkx; print(torch.__version__, "
                          "kornia.__version__, networkx.__version__)"], check=True, capture_output=True, text=True)
    print(json.dumps({"release": source_dir, "commit": COMMIT, "python": python,
                      "torch_kornia_networkx": out.stdout.split()}))


def driver(args, seed, out, extra=()):
    source_dir, python = paths(args.scratch)
    env = dict(os.environ, MKL_DEBUG_CPU_TYPE="5", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [python, os.path.join(HERE, "driver.py"), "--seed", str(seed), "--out", out,
           "--fashion-dir", args.fashion_dir, "--subset-per-class", str(args.subset_per_class),
           "--threads", str(args.threads), "--work", os.path.join(args.scratch, "work")] + list(extra)
    return subprocess.run(cmd, cwd=source_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def stream(args):
    """The release's stream per seed, compactly: the subset's true labels and each seed's noisy labels as digit
    strings (10 classes), each task's order (before the drop of its last partial batch), and which training
    images of the dataset form the subset."""
    table = {"commit": COMMIT, "subset_per_class": args.subset_per_class, "noise_rate": args.noise_rate,
             "asymmetric": args.asymmetric, "seeds": {}}
    for seed in args.seeds:
        out = os.path.join(args.scratch, f"stream_seed{seed}.json")
        extra = ["--stream-only", "--noise-rate", str(args.noise_rate)] + (["--asymmetric"] if args.asymmetric else [])
        done = driver(args, seed, out, extra)
        if done.returncode:
            sys.exit(done.stdout[-3000:])
        with open(out) as f:
            dump = json.load(f)
        s = dump["stream"]
        table["true_labels"] = "".join(map(str, s["true_labels"]))
        table["subset_source_indices"] = dump["subset_source_indices"]
        table["seeds"][str(seed)] = {"noisy_labels": "".join(map(str, s["noisy_labels"])),
                                     "task_orders": s["task_orders"]}
    with open(args.out, "w") as f:
        json.dump(table, f, separators=(",", ":"))
    print(json.dumps({"wrote": args.out, "seeds": args.seeds}))


def summarise(result):
    """One seed's headline numbers from the driver's dump (pooled over chunks, as spr_jax's summary)."""
    chunks = result["chunks"]
    kept = sum(len(c["kept_positions"]) for c in chunks)
    kept_noisy = sum(c["noisy"][p] for c in chunks for p in c["kept_positions"])
    noisy = sum(sum(c["noisy"]) for c in chunks)
    return {"seed": result["seed"], "final_accuracy": 100 * result["final_accuracy"],
            "buffer_purity": 100 * chunks[-1]["buffer_purity"], "kept": kept,
            "precision": 100 * (kept - kept_noisy) / kept, "noisy_removed": 100 * (noisy - kept_noisy) / noisy,
            "wall_s": round(result["wall_s"], 1), "times_s": {k: round(v, 1) for k, v in result["times_s"].items()}}


def run(args):
    os.makedirs(args.out_dir, exist_ok=True)
    for seed in args.seeds:
        out = os.path.join(args.out_dir, f"release_seed{seed}.json")
        if not os.path.exists(out):
            start = time.time()
            done = driver(args, seed, out)
            with open(os.path.join(args.out_dir, f"release_seed{seed}.log"), "w") as f:
                f.write(done.stdout)
            if done.returncode:
                sys.exit(f"seed {seed} failed after {time.time() - start:.0f} s:\n{done.stdout[-3000:]}")
        with open(out) as f:
            print(json.dumps(summarise(json.load(f))), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("setup", "stream", "run"):
        p = sub.add_parser(name)
        p.add_argument("--scratch", required=True, help="folder for the release, its venv and its outputs")
        if name == "setup":
            p.add_argument("--source", default=REPOSITORY, help="the release's git URL or a local clone")
            p.add_argument("--python", default="", help="a Python 3.8 interpreter (default: pyenv's 3.8)")
            continue
        p.add_argument("--seeds", type=int, nargs="+", required=True)
        p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
        p.add_argument("--subset-per-class", type=int, default=600)
        p.add_argument("--threads", type=int, default=2)
        if name == "stream":
            p.add_argument("--out", required=True)
            p.add_argument("--noise-rate", type=float, default=0.4)
            p.add_argument("--asymmetric", action="store_true", help="the release's mnist pairs, e.g. 2->7")
        else:
            p.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    {"setup": setup, "stream": stream, "run": run}[args.command](args)


if __name__ == "__main__":
    main()
