"""Tasks: one module per task binds its model, loss, metrics and data from a config.

Each task module provides `make_data(config, workdir)` (the training iterator and the
validation batches), `model_factory(config)` (a `make_model(rngs=...)`), `hyperparameters(
config, data)` (the array pytree `hp` of the train step) and `Task(config)`: `apply`, `loss`,
`metrics` and `eval_weights` run inside the compiled steps; `scores`, `describe` and
`progress` turn summed statistics into the metrics the loop logs; `key_metric` and
`higher_is_better` choose the best checkpoint and the best ablation member.
"""

from __future__ import annotations

TASKS = ("segmentation", "language")


def module(config):
    """The task module of `config.task` (segmentation when the config names none)."""
    name = config.get("task", "segmentation")
    if name == "segmentation":
        from jaxseg.tasks import segmentation

        return segmentation
    if name == "language":
        from jaxseg.tasks import language

        return language
    raise ValueError(f"config.task must be one of {TASKS}; got {name!r}")
