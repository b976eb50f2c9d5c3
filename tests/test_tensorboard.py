"""TensorBoard event files, read back with TensorBoard's own reader, hold the scalars of metrics.jsonl."""
import json
import os

import numpy as np
import pytest

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

import spr_jax  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("tb") / "run")
    spr_jax.run(spr_jax.load_config("tiny"), work, progress=False)
    return work


def read_events(work):
    acc = event_accumulator.EventAccumulator(os.path.join(work, "tensorboard"),
                                             size_guidance={event_accumulator.SCALARS: 0,
                                                            event_accumulator.IMAGES: 0})
    acc.Reload()
    return acc


def test_event_files_hold_the_metrics_scalars(tiny_run):
    records = [json.loads(line) for line in open(os.path.join(tiny_run, "metrics.jsonl"))]
    chunks = [r for r in records if r["type"] == "chunk"]
    evals = [r for r in records if r["type"] == "eval"]
    acc = read_events(tiny_run)

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    for field in ("base_loss", "kept", "filter_precision", "filter_recall", "buffer_size", "buffer_purity",
                  "clean_p_max", "clean_p_tied_share", "clean_p_tied_noisy_share", "clean_p_auc", "buffer_admitted",
                  "buffer_admitted_clean", "buffer_admitted_noisy", "buffer_evicted", "buffer_evicted_clean",
                  "buffer_evicted_noisy"):
        want = [(r["chunk"], r[field]) for r in chunks if r[field] is not None]
        assert want, field
        got = series(f"chunk/{field}")
        assert [s for s, _ in got] == [s for s, _ in want], field
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=field)
    got = series("eval/accuracy")
    assert [s for s, _ in got] == [r["chunks_processed"] for r in evals]
    np.testing.assert_allclose([v for _, v in got], [r["accuracy"] for r in evals], rtol=1e-6)
    last = evals[-1]
    for j in range(len(last["task_accuracy"])):
        assert series(f"eval/task_{j}_accuracy")[-1] == (last["chunks_processed"],
                                                           pytest.approx(last["task_accuracy"][j]))
    assert "eval/task_4_accuracy" in acc.Tags()["scalars"]
    assert len(series("eval/task_4_accuracy")) == 1  # written only once the task is seen
    for r in evals:  # the fine-tune's loss: its last epoch per evaluation, and each evaluation's curve
        assert r["finetune_loss"] and len(r["finetune_loss"]) == 2  # tiny: eval.epochs = 2
        curve = series(f"finetune_loss/after_task_{r['after_task']}")
        assert [s for s, _ in curve] == [1, 2]
        np.testing.assert_allclose([v for _, v in curve], r["finetune_loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in series("eval/finetune_loss")], [r["finetune_loss"][-1] for r in evals],
                               rtol=1e-6)
    assert sorted(acc.Tags()["images"]) == ["accuracy_matrix", "summary"]
    image = acc.Images("accuracy_matrix")[-1]
    assert (image.height, image.width) == (5 * 32, 5 * 32)  # tiny: 5 tasks


def test_tensorboard_off_writes_no_events(tmp_path):
    work = str(tmp_path / "run")
    spr_jax.run(spr_jax.load_config("tiny", {"logging.tensorboard": False}), work, progress=False)
    assert not os.path.exists(os.path.join(work, "tensorboard"))
    assert os.path.exists(os.path.join(work, "metrics.jsonl"))
