"""The pure train and evaluation steps: `train_step(state, batch, hp) -> (state, metrics)`.

One function serves one CPU, a device mesh and a vmapped ablation: it has no Python state,
reads randomness from `(seed, step)` and its hyperparameters from the array pytree `hp`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxseg.train.optim import current_learning_rate, l1_penalty
from jaxseg.train.state import TrainState


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def split_terms(terms: dict, task) -> tuple[dict, dict]:
    """(loss terms as `loss_<name>` metrics, statistics): a task's loss may also return
    per-batch statistics it computes on the way (`task.statistics`, e.g. token counts)."""
    statistics = {name: terms[name] for name in task.statistics if name in terms}
    return {f"loss_{name}": value for name, value in terms.items() if name not in statistics}, statistics


def train_step(state: TrainState, batch, hp, *, graphdef, tx, task, seed: int):
    """One optimisation step.

    Returns the new state and per-step metrics: `loss` (the total objective), each loss
    term, `grad_norm`, `learning_rate`, `skipped` (1 when the update was non-finite and not
    applied: parameters, optimiser moments and BatchNorm statistics stay as they were) and
    the task's batch statistics (e.g. a confusion matrix).

    Optional entries of `hp` (the members of an ablation vary them): `seed` replaces the
    static `seed` of the dropout keys; `lr_scale` multiplies the updates, which equals
    scaling the learning rate (decoupled weight decay included).
    """
    key = jax.random.fold_in(jax.random.key(hp.get("seed", seed)), state.step)

    def objective(params):
        model = nnx.merge(graphdef, params, state.model_state, copy=True)
        outputs = task.apply(model, batch, train=True, key=key)
        loss, terms = task.loss(outputs, batch, hp)
        loss = loss + hp["l1"] * l1_penalty(params)
        return loss, (terms, outputs, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (terms, outputs, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr_scale = hp.get("lr_scale", 1.0)
    if "lr_scale" in hp:
        updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    model_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), model_state, state.model_state)
    loss_terms, statistics = split_terms(terms, task)
    metrics = {
        "loss": loss,
        **loss_terms,
        **statistics,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": current_learning_rate(opt_state) * lr_scale,
        "skipped": 1 - finite.astype(jnp.int32),
        **task.metrics(jax.lax.stop_gradient(outputs), batch),
    }
    return TrainState(state.step + 1, params, model_state, opt_state), metrics


def eval_outputs(state: TrainState, batch, *, graphdef, task):
    """The model's outputs for `batch` in evaluation mode (running BatchNorm statistics)."""
    return task.apply(nnx.merge(graphdef, state.params, state.model_state), batch, train=False)


def eval_step(state: TrainState, batch, hp, *, graphdef, task):
    """Loss terms and batch statistics of one evaluation batch, padding excluded by `valid`.

    Losses come as sums, weighted by the batch's `count` (valid images, or valid tokens), so
    batches of a split, and the shares of several processes, add up before one division.
    """
    return _eval_metrics(eval_outputs(state, batch, graphdef=graphdef, task=task), batch, hp, task)


def eval_step_with_predictions(state: TrainState, batch, hp, *, graphdef, task):
    """`(eval_step's metrics, task.predict(outputs))` from one forward pass, for tasks whose
    evaluation also needs the predictions (`task.collects_predictions`, e.g. COCO mAP)."""
    outputs = eval_outputs(state, batch, graphdef=graphdef, task=task)
    return _eval_metrics(outputs, batch, hp, task), task.predict(outputs)


def _eval_metrics(outputs, batch, hp, task):
    mask, count = task.eval_weights(batch)
    loss, terms = task.loss(outputs, batch, hp, mask=mask)
    loss_terms, statistics = split_terms(terms, task)
    losses = {"loss": loss, **loss_terms}
    return {
        **{k: v * count for k, v in losses.items()},
        "count": count,
        **statistics,
        **task.metrics(outputs, batch, mask=mask),
    }
