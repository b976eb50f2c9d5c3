"""Metric writers beside metrics.jsonl (which stays the source of truth): TensorBoard event files,
written with tensorboardX (no TensorFlow), in WORKDIR/tensorboard, and optionally a Weights & Biases run
(WandB below). Each writer takes the records as they are logged (write), two images at the end
(add_accuracy_matrix, add_image_file) and close().

One step numbering for everything: the 0-based index of a chunk, as metrics.jsonl's `chunk`. Scalars: every
numeric field of a chunk record as `chunk/<field>` at its chunk (`base_loss`, `kept`, `filter_precision`,
`filter_recall`, `buffer_size`, `buffer_purity`, and the clean_p diagnostics `clean_p_max`,
`clean_p_tied_share`, `clean_p_tied_noisy_share`, `clean_p_auc`, `buffer_admitted[_clean|_noisy]`,
`buffer_evicted[_clean|_noisy]`; the clean_p histograms stay in metrics.jsonl), and of an evaluation record as
`eval/<field>` at the chunk it follows (the last chunk of its task, `chunks_processed - 1`): `accuracy` (all
test samples of the episodes' classes), `accuracy_seen_tasks` (the mean accuracy over the tasks seen so far,
as the progress line prints it), `buffer_purity`, `buffer_size`, `eval/task_<j>_accuracy` for the tasks seen
and `eval/finetune_loss` the fine-tune's last epoch; each evaluation's fine-tune loss per epoch as
`finetune_loss/after_task_<t>` at step = the epoch (1, 2, ...). A missing value (null) is not written. At the
end, the accuracy matrix as the image `accuracy_matrix` (summary.png's panel: rows after task i, columns task
j with its classes, each cell's accuracy written in it, unseen tasks grey) and summary.png as the image
`summary`, both at the last chunk. A resumed run's events are rewritten from its checkpoint's records (each
step once). `tensorboard --logdir WORKDIR/tensorboard`.
"""
import os

import numpy as np

CHUNK_SCALARS = ("base_loss", "kept", "filter_precision", "filter_recall", "buffer_size", "buffer_purity",
                 "clean_p_max", "clean_p_tied_share", "clean_p_tied_noisy_share", "clean_p_auc",
                 "buffer_admitted", "buffer_admitted_clean", "buffer_admitted_noisy",
                 "buffer_evicted", "buffer_evicted_clean", "buffer_evicted_noisy")
EVAL_SCALARS = ("accuracy", "buffer_purity", "buffer_size")


def step_of(record: dict) -> int:
    """The step of a record's scalars: a chunk's index, or for an evaluation the index of the chunk it follows."""
    if record["type"] == "chunk":
        return int(record["chunk"])
    return max(int(record["chunks_processed"]) - 1, 0)


def scalars_of(record: dict) -> list[tuple[str, float, int]]:
    """(tag, value, step) of one metrics.jsonl record, as the writer writes them."""
    from spr_jax import outputs
    out = []
    step = step_of(record)
    if record["type"] == "chunk":
        out += [(f"chunk/{k}", float(record[k]), step) for k in CHUNK_SCALARS if record.get(k) is not None]
    else:
        out += [(f"eval/{k}", float(record[k]), step) for k in EVAL_SCALARS if record.get(k) is not None]
        out.append(("eval/accuracy_seen_tasks", float(outputs.seen_tasks_accuracy(record)), step))
        out += [(f"eval/task_{j}_accuracy", float(a), step)
                for j, a in enumerate(record["task_accuracy"][:record["after_task"] + 1])]
        losses = record.get("finetune_loss") or []
        if losses:
            out.append(("eval/finetune_loss", float(losses[-1]), step))
        out += [(f"finetune_loss/after_task_{record['after_task']}", float(v), e + 1) for e, v in enumerate(losses)]
    return out


def matrix_image(matrix, episodes=None) -> np.ndarray:
    """The accuracy matrix (rows: after task i; None: not yet seen) drawn as summary.png draws it (values in
    the cells, task labels with their classes, unseen cells grey), as an RGB uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from spr_jax import outputs
    size = 1.5 + 0.75 * len(matrix)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)  # (not pyplot: the caller's backend stays as it is)
    canvas = FigureCanvasAgg(fig)
    outputs.draw_accuracy_matrix(fig.add_subplot(), matrix, episodes)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class TensorBoard:
    """Writes each record as it is logged; `close()` flushes. Created lazily: nothing is written (no folder)
    until the first record."""

    def __init__(self, workdir: str):
        self.folder = os.path.join(workdir, "tensorboard")
        self._writer = None

    def _open(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(self.folder, flush_secs=10)
        return self._writer

    def write(self, record: dict) -> None:
        w = self._open()
        for tag, value, step in scalars_of(record):
            w.add_scalar(tag, value, step)

    def restart(self, records) -> None:
        """Event files from `records` alone (a run's start or resume: those of its checkpoint): the events an
        earlier session wrote are removed first, so a resumed run holds each step once."""
        self.close()
        if os.path.isdir(self.folder):
            for name in os.listdir(self.folder):
                if name.startswith("events.out.tfevents."):
                    os.remove(os.path.join(self.folder, name))
        for record in records:
            self.write(record)

    def add_accuracy_matrix(self, matrix, step: int, episodes=None) -> None:
        if matrix:
            self._open().add_image("accuracy_matrix", matrix_image(matrix, episodes), step, dataformats="HWC")

    def add_image_file(self, tag: str, path: str, step: int) -> None:
        if not os.path.isfile(path):
            return
        import matplotlib.image
        img = np.asarray(matplotlib.image.imread(path))
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        self._open().add_image(tag, img[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandB:
    """A Weights & Biases run of the same scalars and images (`pip install -e ".[wandb]"`).

    mode "offline" writes WORKDIR/wandb/ and needs no network or account (`wandb sync WORKDIR/wandb/offline-run-*`
    uploads it later); "online" logs live. Every scalar is logged against `chunk` (an evaluation's at the
    chunk it follows, as in TensorBoard); the fine-tune curves stay in metrics.jsonl and TensorBoard. The run's
    id is derived from the workdir, so a resumed run continues the same W&B run online.
    """

    def __init__(self, workdir: str, *, mode: str, project: str, config: dict, name: str):
        self.workdir, self.mode, self.project, self.config, self.name = workdir, mode, project, config, name
        self._run = None

    def _open(self):
        if self._run is None:
            import hashlib
            import wandb
            run_id = hashlib.sha1(os.path.abspath(self.workdir).encode()).hexdigest()[:16]
            self._run = wandb.init(mode=self.mode, project=self.project, dir=self.workdir, config=self.config,
                                   name=self.name, id=run_id, resume="allow",
                                   settings=wandb.Settings(silent=True, console="off"))
            self._run.define_metric("chunk")
            self._run.define_metric("*", step_metric="chunk")
        return self._run

    def write(self, record: dict) -> None:
        values = {tag: value for tag, value, _ in scalars_of(record) if not tag.startswith("finetune_loss/")}
        self._open().log({"chunk": step_of(record), **values})

    def add_accuracy_matrix(self, matrix, step: int, episodes=None) -> None:
        if matrix:
            import wandb
            self._open().log({"chunk": step, "accuracy_matrix": wandb.Image(matrix_image(matrix, episodes))})

    def add_image_file(self, tag: str, path: str, step: int) -> None:
        if os.path.isfile(path):
            import wandb
            self._open().log({"chunk": step, tag: wandb.Image(path)})

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def writers_for(workdir: str, *, tensorboard: bool, wandb: str, wandb_project: str, run_config: dict,
                run_name: str) -> list:
    """The writers a run's logging settings ask for (process 0 of a run only; the caller checks)."""
    out = [TensorBoard(workdir)] if tensorboard else []
    if wandb:
        out.append(WandB(workdir, mode=wandb, project=wandb_project, config=run_config, name=run_name))
    return out
