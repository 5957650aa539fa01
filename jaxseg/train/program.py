"""The jitted functions of one training setup on one mesh: init, train, eval and predict.

Shared by the training loop and the benchmarks, so what is measured is what trains.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.ablation import strategies
from jaxseg.tasks.base import Task
from jaxseg.train import parallel
from jaxseg.train.optim import make_optimizer, set_hyperparameter
from jaxseg.train.state import init_state, initial_state, model_graphdef
from jaxseg.train.step import eval_outputs, eval_step, eval_step_with_predictions, train_step


class Program(NamedTuple):
    """`init()` -> state (each array created where it lives); `abstract_state`: its shapes,
    dtypes and shardings (a restore target); `train(state, batch, hp)` -> (state, metrics),
    state donated; `eval(state, batch, hp)` -> summed metrics; `predict(state, batch, member)`
    -> the task's predictions (`task.predict`: class ids, or detections) split like the batch
    (`member` is ignored without members); `eval_with_predictions(state, batch, hp)` ->
    (metrics, predictions) from one forward pass (one model only, else None);
    `place_hp(hp)` puts host hyperparameters where the steps expect them. With `members=K`,
    state, hp and metrics carry a leading member axis; `per_member(tree)` is the list of
    each member's part of such a tree (a list of one tree without members)."""

    members: int | None
    mesh: Any
    abstract_state: Any
    graphdef: Any
    task: Any
    tx: Any
    state_sharding: Any
    init: Callable
    train: Callable
    eval: Callable
    predict: Callable
    eval_with_predictions: Callable | None
    place_hp: Callable
    per_member: Callable


def compile_program(config, mesh, task: Task) -> Program:
    """The program of one model of `task` (`jaxseg.tasks.get(config)`)."""
    make_model = task.model_factory()
    graphdef = model_graphdef(make_model)
    tx = make_optimizer(config.optim, config.train.steps)
    abstract_state = jax.eval_shape(lambda: init_state(make_model, tx, config.seed))
    state_sharding = parallel.state_shardings(abstract_state, mesh, config.get("mesh", {}).get("fsdp_min_size", 0))
    batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    step = functools.partial(train_step, graphdef=graphdef, tx=tx, task=task, seed=config.seed)
    if config.train.get("checkify", False):
        train = _checked(
            step,
            task,
            in_shardings=(state_sharding, batch_sharding, replicated),
            out_shardings=(state_sharding, replicated),
        )
    else:
        train = jax.jit(
            step,
            donate_argnums=0,
            in_shardings=(state_sharding, batch_sharding, replicated),
            out_shardings=(state_sharding, replicated),
        )
    evaluate = jax.jit(
        functools.partial(eval_step, graphdef=graphdef, task=task),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=replicated,
    )

    def predictions(state, batch):
        return task.predict(eval_outputs(state, batch, graphdef=graphdef, task=task))

    compiled_predictions = jax.jit(
        predictions, in_shardings=(state_sharding, batch_sharding), out_shardings=batch_sharding
    )
    predict = lambda state, batch, member=None: compiled_predictions(state, batch)  # noqa: E731
    eval_with_predictions = jax.jit(
        functools.partial(eval_step_with_predictions, graphdef=graphdef, task=task),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(replicated, batch_sharding),
    )

    def init():
        state = init_state(make_model, tx, config.seed, shardings=state_sharding)
        params, model_state = task.pretrained(state.params, state.model_state)
        return state.replace(params=params, model_state=model_state)

    return Program(
        None,
        mesh,
        _with_shardings(abstract_state, state_sharding),
        graphdef,
        task,
        tx,
        state_sharding,
        init,
        train,
        evaluate,
        predict,
        eval_with_predictions,
        functools.partial(parallel.replicate, mesh=mesh),
        lambda tree: [tree],
    )


def _checked(step, task, *, in_shardings, out_shardings):
    """`step` with `jax.experimental.checkify` checks compiled in: the task's batch checks
    (label or token range) and out-of-bounds indexing. Each call waits for the step and raises
    the first failed check, naming the step: slower, so opt-in (`config.train.checkify`)."""
    from jax.experimental import checkify

    def checked_step(state, batch, hp):
        task.check_batch(batch, state.step)
        return step(state, batch, hp)

    compiled = jax.jit(
        checkify.checkify(checked_step, errors=checkify.user_checks | checkify.index_checks),
        donate_argnums=0,
        in_shardings=in_shardings,
        out_shardings=(None, out_shardings),
    )

    def train(state, batch, hp):
        error, outputs = compiled(state, batch, hp)
        error.throw()
        return outputs

    return train


def _all_terms(metrics, terms):
    """Metrics with a 0 for each loss term of `terms` the member did not compute."""
    return {**{f"loss_{t}": jnp.zeros((), jnp.float32) for t in terms}, **metrics}


def compile_member_program(config, mesh, task: Task, *, seeds, weight_decays, active_terms=None) -> Program:
    """The program of K members of an ablation (`jaxseg.ablation`) of any task: one model and
    optimiser structure, K states stacked on a leading axis (initialised from `seeds`, with
    decoupled weight decay `weight_decays`), K hyperparameter sets; every member sees the same
    batch.

    The member axis runs with `config.ablation.strategy`; on a mesh with a `member` axis it is
    also split over that axis with `jax.shard_map`. `active_terms` (one tuple of loss terms
    per member, `task.active_terms`) lets unrolled members skip the terms they weight 0.
    """
    if config.get("mesh", {}).get("fsdp_min_size", 0):
        raise ValueError("config.mesh.fsdp_min_size: FSDP-style sharding is not combined with an ablation; set it to 0")
    count = len(seeds)
    if task.collects_predictions:
        raise ValueError(
            f"config.ablation: the {config.get('task', 'segmentation')} task's evaluation needs the "
            "predictions of a single model; ablations train tasks whose metrics are sums"
        )
    strategy = strategies.resolve(config.ablation.strategy)
    make_model = task.model_factory()
    graphdef = model_graphdef(make_model)
    tx = make_optimizer(config.optim, config.train.steps)
    sharded = strategies.MEMBER_AXIS in mesh.axis_names and mesh.shape[strategies.MEMBER_AXIS] > 1
    if sharded and count % mesh.shape[strategies.MEMBER_AXIS]:
        raise ValueError(
            f"{count} ablation members do not split over the {mesh.shape[strategies.MEMBER_AXIS]} "
            f"devices of config.mesh's member axis"
        )
    member_sharding = NamedSharding(mesh, P(strategies.MEMBER_AXIS)) if sharded else parallel.replicated(mesh)
    batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)

    def initial(seeds, weight_decays):
        states = jax.vmap(functools.partial(initial_state, make_model, tx))(seeds)
        return states.replace(opt_state=set_hyperparameter(states.opt_state, "weight_decay", weight_decays))

    abstract_state = jax.eval_shape(initial, jnp.zeros(count, jnp.int32), jnp.zeros(count, jnp.float32))
    state_sharding = jax.tree.map(lambda _: member_sharding, abstract_state)

    one_train = functools.partial(train_step, graphdef=graphdef, tx=tx, task=task, seed=config.seed)
    one_eval = functools.partial(eval_step, graphdef=graphdef, task=task)
    # Unrolled and unsharded, each member is its own trace: it computes only its own loss
    # terms (vmap and shard_map run one program for all members, with every term).
    specialise = strategy == "unroll" and not sharded and active_terms is not None
    union = sorted({t for terms in active_terms or () for t in terms})

    def member_train(terms):
        def step(state, batch, hp):
            state, metrics = one_train(state, batch, task.only_terms(hp, terms))
            return state, _all_terms(metrics, union)

        return step

    def member_eval(terms):
        return lambda state, batch, hp: _all_terms(one_eval(state, batch, task.only_terms(hp, terms)), union)

    def members(fn, specialised, outputs_split):
        fn = strategies.over_members(fn, strategy, (0, None, 0), specialised if specialise else None)
        if sharded:
            fn = strategies.shard_members(fn, mesh, (True, False, True), outputs_split)
        return fn

    train = jax.jit(
        members(one_train, [member_train(t) for t in active_terms or ()], (True, True)),
        donate_argnums=0,
        in_shardings=(state_sharding, batch_sharding, member_sharding),
        out_shardings=(state_sharding, replicated),
    )
    evaluate = jax.jit(
        members(one_eval, [member_eval(t) for t in active_terms or ()], True),
        in_shardings=(state_sharding, batch_sharding, member_sharding),
        out_shardings=replicated,
    )

    def predictions(states, batch, member):
        state = jax.tree.map(lambda x: x[member], states)
        return task.predict(eval_outputs(state, batch, graphdef=graphdef, task=task))

    predict = jax.jit(
        predictions, in_shardings=(state_sharding, batch_sharding, replicated), out_shardings=batch_sharding
    )
    seeds, weight_decays = jnp.asarray(seeds, jnp.int32), jnp.asarray(weight_decays, jnp.float32)

    def init():
        state = jax.jit(initial, out_shardings=state_sharding)(seeds, weight_decays)
        params, model_state = task.pretrained(state.params, state.model_state, members=True)
        return state.replace(params=params, model_state=model_state)

    def place_hp(hp):  # every process holds all members' values: each takes its devices' slices
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(member_sharding, np.asarray(x), np.shape(x)), hp
        )

    def per_member(tree):
        return [strategies.take(tree, k) for k in range(count)]

    return Program(
        count,
        mesh,
        _with_shardings(abstract_state, state_sharding),
        graphdef,
        task,
        tx,
        state_sharding,
        init,
        train,
        evaluate,
        predict,
        None,
        place_hp,
        per_member,
    )


def _with_shardings(abstract, shardings):
    return jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract, shardings
    )
