"""TensorBoard event files, read back with TensorBoard's own reader, hold the scalars of metrics.jsonl."""
import json
import os

import numpy as np
import pytest

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

import spr_jax  # noqa: E402
from spr_jax import metric_writers  # noqa: E402


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
    # An evaluation's scalars sit on the step of the chunk it follows (the last chunk of its task), the
    # chunk scalars' numbering: tiny's tasks end at chunks 2, 5, 8, 10, 13 (metrics.jsonl's order says so too).
    steps = [r["chunks_processed"] - 1 for r in evals]
    order = [(r["chunk"] if r["type"] == "chunk" else None) for r in records]
    assert steps == [order[i - 1] for i, r in enumerate(records) if r["type"] == "eval"] == [2, 5, 8, 10, 13]
    got = series("eval/accuracy")
    assert [s for s, _ in got] == steps
    np.testing.assert_allclose([v for _, v in got], [r["accuracy"] for r in evals], rtol=1e-6)
    seen = series("eval/accuracy_seen_tasks")  # beside the all-classes accuracy: the mean over the tasks seen
    assert [s for s, _ in seen] == steps
    np.testing.assert_allclose([v for _, v in seen], [np.mean(r["task_accuracy"][:r["after_task"] + 1]) for r in evals],
                               rtol=1e-6)
    assert seen[0][1] > got[0][1]  # after task 0 the seen task scores above all classes (4 of 5 tasks unseen)
    last = evals[-1]
    for j in range(len(last["task_accuracy"])):
        assert series(f"eval/task_{j}_accuracy")[-1] == (steps[-1], pytest.approx(last["task_accuracy"][j]))
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
    assert image.step == 13  # the last chunk
    summary = json.load(open(os.path.join(tiny_run, "summary.json")))
    want = metric_writers.matrix_image(summary["accuracy_matrix"], spr_jax.load_config("tiny").episodes)
    assert (image.height, image.width) == want.shape[:2]
    import io
    import matplotlib.image
    stored = matplotlib.image.imread(io.BytesIO(image.encoded_image_string), format="png")
    np.testing.assert_allclose(stored[..., :3], want / 255.0, atol=1 / 255)


def test_the_accuracy_matrix_image_writes_task_labels_and_each_cell_s_value():
    """The image is summary.png's panel: every seen cell's value written in it, tasks labelled with their
    classes (the unseen cells grey)."""
    from matplotlib.figure import Figure
    from spr_jax import outputs
    matrix = [[0.912, None, None], [0.5, 0.734, None], [0.25, 0.4, 0.8]]
    episodes = [(0, 1), (2, 3), (4, 5)]
    ax = Figure().add_subplot()
    outputs.draw_accuracy_matrix(ax, matrix, episodes)
    assert sorted(t.get_text() for t in ax.texts) == sorted(["91", "50", "73", "25", "40", "80"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["task 0 (0, 1)", "task 1 (2, 3)", "task 2 (4, 5)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["after task 0", "after task 1", "after task 2"]
    image = metric_writers.matrix_image(matrix, episodes)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # (colours, text, labels: not a blank canvas)


def test_tensorboard_off_writes_no_events(tmp_path):
    work = str(tmp_path / "run")
    spr_jax.run(spr_jax.load_config("tiny", {"logging.tensorboard": False}), work, progress=False)
    assert not os.path.exists(os.path.join(work, "tensorboard"))
    assert os.path.exists(os.path.join(work, "metrics.jsonl"))
