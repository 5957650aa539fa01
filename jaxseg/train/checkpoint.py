"""orbax checkpoints of the train state, the grain iterator and the config, saved together.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it), so
a run killed mid-save leaves the previous checkpoint as the latest complete one. The last
`keep` checkpoints and the best one by a validation metric are preserved.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN


class CheckpointSaveError(OSError):
    """A save failed (a full disk, a lost mount): the complete checkpoints before it stay."""


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items `state`, `data` and `config`.

    Args:
      directory: where checkpoints live (`WORKDIR/checkpoints`).
      keep: how many of the latest checkpoints to keep.
      best_metric: metric name (in the `metrics` passed to `save`) whose maximum is also kept
        (the loop saves the task's validation metric as `val_score`, signed so that higher is
        better: mIoU, or minus the perplexity).
      asynchronous: write in a background thread while training continues.
    """

    def __init__(self, directory, *, keep: int = 2, best_metric: str = "val_score", asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric

        def metric(metrics):  # checkpoints written before `val_score` existed carry `val_miou`
            return metrics[best_metric] if best_metric in metrics else metrics.get("val_miou", float("-inf"))

        # BestN ranks ascending and keeps the last n (measured with orbax 0.12.8), so
        # reverse=False keeps the maximum. best_fn makes orbax write the metrics to disk, so
        # the best checkpoint is still known (and kept) after a restart.
        policy = AnyPreservationPolicy(
            [
                LatestN(keep),
                BestN(get_metric_fn=metric, reverse=False, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=metric,
            best_mode="max",
            preservation_policy=policy,
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

    def save(self, step: int, state, data_iterator, config: dict, metrics: dict | None = None) -> None:
        """Save (asynchronously) `state`, the iterator position and `config` as step `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config),
        )
        self._pending = step
        with self._reporting_failures():
            self.manager.save(step, args=args, metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the highest `best_metric`, or None if none has metrics."""
        return self.manager.best_step()

    def metrics(self, step: int) -> dict | None:
        return self.manager.metrics(step)

    def restore(self, step: int, abstract_state, data_iterator=None):
        """The state at `step` (with the structure, dtypes and shardings of `abstract_state`);
        `data_iterator`, if given, is moved to where it was when the checkpoint was saved."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        with self._reporting_failures():
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _reporting_failures(self):
        """Turn a failed (possibly earlier, asynchronous) save into one error that says what
        failed and what is still there to resume from."""
        try:
            yield
        except Exception as error:  # orbax and tensorstore raise ValueError, OSError, RuntimeError
            message = str(error).splitlines()[0][:500]
            complete = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
            raise CheckpointSaveError(
                f"saving a checkpoint (step {getattr(self, '_pending', '?')}) in {self.directory} failed: {message}. "
                f"The complete checkpoints {complete} are intact; a rerun resumes from the latest of them"
            ) from error

    def close(self) -> None:
        self.manager.close()
