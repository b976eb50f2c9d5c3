"""Metric writers beside metrics.jsonl (which stays the source of truth): TensorBoard event files,
written with tensorboardX (no TensorFlow), in WORKDIR/tensorboard.

Scalars: every numeric field of a chunk record as `chunk/<field>` at step = the chunk's index (`base_loss`,
`kept`, `filter_precision`, `filter_recall`, `buffer_size`, `buffer_purity`), and of an evaluation record as
`eval/<field>` at step = the chunks processed (`accuracy`, `buffer_purity`, `buffer_size`, and
`eval/task_<j>_accuracy` for the tasks seen), so both share the chunk axis. A missing value (null) is not
written. At the end, summary.png as the image `summary`. `tensorboard --logdir WORKDIR/tensorboard`.
"""
import os

import numpy as np

CHUNK_SCALARS = ("base_loss", "kept", "filter_precision", "filter_recall", "buffer_size", "buffer_purity")
EVAL_SCALARS = ("accuracy", "buffer_purity", "buffer_size")


def scalars_of(record: dict) -> list[tuple[str, float, int]]:
    """(tag, value, step) of one metrics.jsonl record, as the writer writes them."""
    out = []
    if record["type"] == "chunk":
        step = int(record["chunk"])
        out += [(f"chunk/{k}", float(record[k]), step) for k in CHUNK_SCALARS if record.get(k) is not None]
    else:
        step = int(record["chunks_processed"])
        out += [(f"eval/{k}", float(record[k]), step) for k in EVAL_SCALARS if record.get(k) is not None]
        out += [(f"eval/task_{j}_accuracy", float(a), step)
                for j, a in enumerate(record["task_accuracy"][:record["after_task"] + 1])]
    return out


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
