"""Tasks: one module per task binds its model, loss, metrics and data from a config.

`get(config)` returns the task object of `config.task` (segmentation when the config names
none), an implementation of `jaxseg.tasks.base.Task`: the one interface the trainer, the
ablation program, evaluation and prediction use.
"""

from __future__ import annotations

TASKS = ("segmentation", "language", "detection")


def get(config):
    """The `jaxseg.tasks.base.Task` of `config.task`, built from `config`."""
    name = config.get("task", "segmentation")
    if name == "segmentation":
        from jaxseg.tasks import segmentation as module
    elif name == "language":
        from jaxseg.tasks import language as module
    elif name == "detection":
        from jaxseg.tasks import detection as module
    else:
        raise ValueError(f"config.task must be one of {TASKS}; got {name!r}")
    return module.Task(config)


def model_options(config, models: dict, *, convolutional: bool = True):
    """(model class, keyword options) of `config.model`: `name` picks the class from `models`,
    `dtype` becomes a NumPy dtype, the other keys pass through; convolutional models get the
    `conv_general_dilated` of `config.kernels` (`jaxseg.kernels`; "xla" when unset)."""
    import jax.numpy as jnp

    from jaxseg import kernels

    options = dict(config.model)
    name = options.pop("name")
    if name not in models:
        raise ValueError(f"config.model.name must be one of {tuple(models)}; got {name!r}")
    options["dtype"] = jnp.dtype(options.pop("dtype", "float32"))
    if convolutional:
        options["conv_general_dilated"] = kernels.convolution(config.get("kernels", "xla"))
    return models[name], options


def checked_sources(config, sources, **check_options):
    """(train, validation, skipped-sample counter or None): `sources` whose samples pass the
    pipeline checks (`CheckedSource`; `check_options` e.g. a task's own `check`), skipped and
    counted when bad with `config.data.skip_bad_samples`, and whose class count is
    `config.num_classes`."""
    from jaxseg.data.pipeline import CheckedSource, SkippingSource

    train, val = (CheckedSource(s, channels=len(config.data.mean), **check_options) for s in sources)
    skipped_samples = None
    if config.data.get("skip_bad_samples", False):
        train, val = SkippingSource(train), SkippingSource(val)
        skipped_samples = lambda: train.skipped + val.skipped  # noqa: E731
    if train.num_classes != config.num_classes:
        raise ValueError(
            f"config.num_classes={config.num_classes} but the {config.data.name} data has {train.num_classes} classes"
        )
    return train, val, skipped_samples
