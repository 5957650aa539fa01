"""Evaluate a trained model: `python -m jaxseg.evaluate --workdir=DIR [--step=best|latest|N]`.

Prints the validation metrics of the chosen checkpoint (segmentation: mIoU, per-class IoU and
Dice, pixel accuracy; language models: perplexity, bits per token, token accuracy; detection:
COCO mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP; loss terms)
as JSON and writes them to `WORKDIR/eval_step_N.json`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS


def evaluate_workdir(workdir, step="best", batch_size: int = 0) -> dict:
    from jaxseg.train.inference import restore
    from jaxseg.train.loop import evaluate
    from jaxseg.train.step import eval_step, eval_step_with_predictions

    restored = restore(workdir, step)
    config = restored.config
    if batch_size:
        config.train.eval_batch_size = batch_size
    task = restored.task
    data = task.make_data(workdir)
    hp = task.hyperparameters(data)
    metrics_only = jax.jit(functools.partial(eval_step, graphdef=restored.graphdef, task=task))
    with_predictions = jax.jit(functools.partial(eval_step_with_predictions, graphdef=restored.graphdef, task=task))
    (summary,) = evaluate(restored.state, hp, data.val, metrics_only, task=task, with_predictions=with_predictions)
    metrics = {"step": restored.step, **summary}
    (Path(workdir) / f"eval_step_{restored.step}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def define_flags() -> None:
    """Command-line flags, defined only when run as a program (the module stays importable)."""
    flags.DEFINE_string("workdir", None, "Training directory with checkpoints/.", required=True)
    flags.DEFINE_string("step", "best", '"best" (by validation mIoU or perplexity), "latest" or a step number.')
    flags.DEFINE_integer("batch_size", 0, "Evaluation batch size (default: the training config's).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    print(json.dumps(evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.batch_size), indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
