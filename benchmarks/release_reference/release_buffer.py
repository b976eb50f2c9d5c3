"""The release's OWN purified buffer on either program's per-chunk offers (run with the release's interpreter
from its scratch folder, like driver.py): final purity over many draws, with the release's re-seeding of numpy
at every chunk and its base training's replay draws before each chunk's offers mimicked.

    cd /tmp/spr_release/SPR && ../venv/bin/python .../release_buffer.py --offers offers.json [--draws 30]

offers.json: {name: [chunk, ...]} with each chunk {"idx", "lab", "noisy", "p"} listing the kept samples in the
order the filter emits them (by class, ascending), as `buffer_swap.py --export offers.json` writes them.
Python 3.8 syntax only; no code of the release is copied here.
"""
import argparse
import contextlib
import io
import json
import os
import sys

import numpy as np
import torch


def final_purity(buffer_cls, chunks, draw, size=300, classes=10, base_epochs=50, replay_batch=150):
    buf = buffer_cls({"nb_classes": classes, "device": "cpu"}, size, 0.0)
    for ch in chunks:
        np.random.seed(draw)  # the release re-seeds its generators whenever the delayed buffer empties
        if len(buf) == size:  # ... then its base replays from the full buffer before the chunk's offers
            for _ in range(base_epochs):
                np.random.choice(range(size), replay_batch)
        n = len(ch["idx"])
        if n:
            with contextlib.redirect_stdout(io.StringIO()):  # the buffer prints its state every 2000 offers
                buf.update(imgs=torch.zeros(n, 1), cats=torch.LongTensor(ch["lab"]),
                           corrupts=torch.BoolTensor([bool(x) for x in ch["noisy"]]),
                           idxs=torch.LongTensor(ch["idx"]), clean_ps=torch.Tensor(ch["p"]))
    return 1.0 - float(buf.get("corrupts").float().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offers", required=True)
    parser.add_argument("--draws", type=int, default=30)
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())  # the release's modules, from its source folder
    from models.reservoir import reservoir
    with open(args.offers) as f:
        offers = json.load(f)
    out = {}
    for name, chunks in offers.items():
        values = [final_purity(reservoir["purified"], chunks, draw) for draw in range(1, args.draws + 1)]
        out[name] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)), "n": len(values)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
