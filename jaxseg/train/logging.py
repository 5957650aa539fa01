"""Metrics as the user reads them: `metrics.jsonl` and TensorBoard events.

Only process 0 writes (the others get a logger that does nothing). Figures, and the reader
of `metrics.jsonl` they are drawn from, are in `jaxseg.figures`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


class MetricsLogger:
    """Appends one JSON object per record to `WORKDIR/metrics.jsonl` and mirrors scalars to
    TensorBoard (`WORKDIR/tensorboard`; an ablation's members get one run each,
    `WORKDIR/tensorboard/MEMBER`)."""

    def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.tensorboard = tensorboard
        self.writers: dict = {}
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _writer(self, member):
        if member not in self.writers:
            from tensorboardX import SummaryWriter

            directory = self.workdir / "tensorboard" / (member or "")
            self.writers[member] = SummaryWriter(str(directory))
        return self.writers[member]

    def write(self, step: int, split: str, values: dict, member: str | None = None) -> None:
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "split": split,
            **({"member": member} if member is not None else {}),
            **{k: _plain(v) for k, v in values.items()},
        }
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as error:  # a full disk: say which file, keep the errno
            raise OSError(
                error.errno,
                f"cannot append the step {step} metrics to {self.path} ({error.strerror}); "
                f"checkpoints already saved stay readable",
            ) from error
        if self.tensorboard:
            writer = self._writer(member)
            for name, value in record.items():
                if name not in ("step", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"{split}/{name}", value, step)
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
