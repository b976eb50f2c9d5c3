"""The Weights & Biases writer: its offline run, read back record by record, holds the scalars of
metrics.jsonl against the chunk axis; a missing wandb package or a bad mode is refused before any work."""
import glob
import json
import os
import struct

import numpy as np
import pytest

import spr_jax


def read_wandb_history(path):
    """The history rows of an offline .wandb file: a 7-byte header, then LevelDB-style log records (crc32,
    little-endian length, type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks, each a protobuf Record."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos, rows, pending = open(path, "rb").read(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (2, 3):
            pending += payload
            continue
        if kind == 0:
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending + payload)
        pending = b""
        if record.HasField("history"):
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_an_offline_run_holds_the_metrics_scalars(tmp_path):
    pytest.importorskip("wandb")
    work = str(tmp_path / "run")
    spr_jax.run(spr_jax.load_config("tiny", {"logging.wandb": "offline", "logging.tensorboard": False}), work,
                progress=False)
    files = glob.glob(os.path.join(work, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    rows = read_wandb_history(files[0])
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    chunks = [r for r in records if r["type"] == "chunk"]
    evals = [r for r in records if r["type"] == "eval"]
    kept = [(row["chunk"], row["chunk/kept"]) for row in rows if "chunk/kept" in row]
    assert kept == [(r["chunk"], r["kept"]) for r in chunks]
    precision = [row["chunk/filter_precision"] for row in rows if "chunk/filter_precision" in row]
    np.testing.assert_allclose(precision, [r["filter_precision"] for r in chunks], rtol=1e-6)
    accuracy = [(row["chunk"], row["eval/accuracy"]) for row in rows if "eval/accuracy" in row]
    assert [c for c, _ in accuracy] == [r["chunks_processed"] - 1 for r in evals]  # the chunk it follows
    np.testing.assert_allclose([a for _, a in accuracy], [r["accuracy"] for r in evals], rtol=1e-6)
    tune = [row["eval/finetune_loss"] for row in rows if "eval/finetune_loss" in row]
    np.testing.assert_allclose(tune, [r["finetune_loss"][-1] for r in evals], rtol=1e-6)
    images = [(tag, row[f"{tag}/_type"]) for row in rows for tag in ("accuracy_matrix", "summary") if f"{tag}/_type" in row]
    assert images == [("accuracy_matrix", "image-file"), ("summary", "image-file")]
    size = [(row["accuracy_matrix/height"], row["accuracy_matrix/width"]) for row in rows
            if "accuracy_matrix/width" in row]
    from spr_jax import metric_writers
    summary = json.load(open(os.path.join(work, "summary.json")))
    assert size == [metric_writers.matrix_image(summary["accuracy_matrix"], spr_jax.load_config("tiny").episodes).shape[:2]]


def test_wandb_settings_are_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(spr_jax.UserError, match="config.logging.wandb='offlne' is unknown"):
        spr_jax.run(spr_jax.load_config("tiny", {"logging.wandb": "offlne"}), str(tmp_path / "a"), progress=False)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(spr_jax.UserError, match=r"needs the wandb package: pip install"):
        spr_jax.run(spr_jax.load_config("tiny", {"logging.wandb": "offline"}), str(tmp_path / "b"), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
