"""The interface between a task and the trainer: `Task`, resolved once from the config.

`jaxseg.tasks.get(config)` builds the task object of `config.task`; the trainer, the member
(ablation) program, evaluation and prediction receive that object and ask nothing else about
the task. A task class subclasses `Task` (a `typing.Protocol`, so the interface is written
down and type-checked) and inherits the defaults of the optional hooks.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol


class Task(Protocol):
    """What the trainer needs to know about a task, in the order the trainer asks.

    Setup (host, once per program): `make_data`, `model_factory`, `hyperparameters` and, for
    ablations, `member_hyperparameters`. Inside the compiled steps: `apply`, `loss`,
    `metrics`, `eval_weights`, `predict`, `check_batch`. Host side, at logging and evaluation:
    `units_per_batch`, `scores`, `describe`, `progress`, `save_figure`.
    """

    config: Any
    key_metric: ClassVar[str]  # the validation metric that picks the best checkpoint and member
    higher_is_better: ClassVar[bool]
    throughput_unit: ClassVar[str]  # "images" or "tokens" (logged as `<unit>_per_second`)
    statistics: ClassVar[tuple[str, ...]]  # summed per-batch statistics that `scores` turns into metrics
    draws_predictions: ClassVar[bool]  # the loop saves `save_figure(...)` at each evaluation
    collects_predictions: ClassVar[bool] = False  # metrics not summable: `evaluator()` collects predictions

    def __init__(self, config) -> None:
        """The task of `config` (a `jaxseg.tasks` module's `Task(config)`)."""
        ...

    # ------------------------------------------------------------------ setup
    def make_data(self, workdir) -> Any:
        """This process's data: an object with `train` (a checkpointable iterator of host
        batches) and `val` (a sequence of padded host batches), and optionally
        `skipped_samples()` (bad samples skipped so far)."""
        ...

    def model_factory(self) -> Callable[..., Any]:
        """`make_model(rngs=...)`, the task's Flax module from `config.model`."""
        ...

    def pretrained(self, params, model_state, *, members: bool = False) -> tuple[Any, Any]:
        """`(params, model_state)` of a freshly initialised model with the config's pretrained
        weights written in (`members`: stacked over ablation members); as given without any."""
        return params, model_state

    def hyperparameters(self, data=None) -> dict:
        """The array pytree `hp` the train step reads its loss options from."""
        ...

    def member_hyperparameters(self, configs: list, workdir) -> list[dict]:
        """One `hp` per ablation member config, all of one pytree structure (stackable)."""
        return [type(self)(member).hyperparameters() for member in configs]

    def active_terms(self, hp: dict) -> tuple[str, ...] | None:
        """The loss terms a member's `hp` computes, when members may skip the others (the
        "unroll" strategy traces each member alone); None: every member computes everything."""
        return None

    def only_terms(self, hp: dict, terms: tuple[str, ...]) -> dict:
        """`hp` that computes only `terms` (see `active_terms`)."""
        return hp

    # ------------------------------------------------------------------ inside the compiled steps
    def apply(self, model, batch, *, train: bool, key=None) -> Any:
        """The model's outputs for a device batch."""
        ...

    def loss(self, outputs, batch, hp, *, mask=None) -> tuple[Any, dict]:
        """(total loss, {term name: value})."""
        ...

    def metrics(self, outputs, batch, *, mask=None) -> dict:
        """Per-batch statistics, summed over batches (`statistics` names those `scores` reads)."""
        ...

    def eval_weights(self, batch) -> tuple[Any, Any]:
        """(mask over the batch's targets, count of valid units): padding counts for nothing."""
        ...

    def predict(self, outputs) -> Any:
        """Predictions from outputs (class ids, tokens, detections)."""
        ...

    def check_batch(self, batch, step) -> None:
        """`checkify` checks of a batch inside the compiled step (`config.train.checkify`)."""
        ...

    # ------------------------------------------------------------------ host side
    def units_per_batch(self, batch_size: int) -> int: ...

    def scores(self, summary: dict, statistics: dict) -> dict:
        """Metrics from the summed statistics (e.g. mIoU from a confusion matrix)."""
        ...

    def describe(self, metrics: dict) -> str: ...

    def progress(self, metrics: dict) -> dict:
        """The progress bar's fields."""
        ...

    def save_figure(self, path, host_batch, predictions, data) -> None:
        """Draw predictions of the first validation batch (when `draws_predictions`)."""
        return None
