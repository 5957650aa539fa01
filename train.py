"""Train a model: `python train.py --config=configs/seg_shapes_unet.py --workdir=DIR [--config.key=value ...]`.

The config names its task (segmentation by default; `configs/lm_*.py` train language models).

A thin entry point: flags in, `train_and_evaluate(config, workdir)` out. Running it again
with the same workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    from jaxseg import tasks  # after flag parsing: keeps --help fast
    from jaxseg.train.loop import train_and_evaluate
    from jaxseg.train.preemption import Preempted

    task = tasks.get(FLAGS.config)
    try:
        metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir, task=task)
    except Preempted as stop:  # the checkpoint is on disk; exit as the signal would have
        print(stop, file=sys.stderr)
        sys.exit(128 + stop.signum)
    print(f"final validation {task.describe(metrics)}")


if __name__ == "__main__":
    app.run(main)
