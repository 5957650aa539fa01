"""The jitted functions of one training setup on one mesh: init, train, eval and predict.

Shared by the training loop and the benchmarks, so what is measured is what trains.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxseg.tasks import segmentation
from jaxseg.train import parallel
from jaxseg.train.optim import make_optimizer
from jaxseg.train.state import init_state, model_graphdef
from jaxseg.train.step import eval_outputs, eval_step, train_step


class Program(NamedTuple):
    """`init()` -> state (each array created where it lives); `abstract_state`: its shapes,
    dtypes and shardings (a restore target); `train(state, batch, hp)` -> (state, metrics),
    state donated; `eval(state, batch, hp)` -> summed metrics; `predict(state, batch)` ->
    argmax labels split like the batch."""

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


def compile_program(config, mesh) -> Program:
    task = segmentation.SegmentationTask(config)
    make_model = segmentation.model_factory(config, config.num_classes)
    graphdef = model_graphdef(make_model)
    tx = make_optimizer(config.optim, config.train.steps)
    abstract_state = jax.eval_shape(lambda: init_state(make_model, tx, config.seed))
    state_sharding = parallel.state_shardings(abstract_state, mesh, config.get("mesh", {}).get("fsdp_min_size", 0))
    batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    train = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, task=task, seed=config.seed), donate_argnums=0,
        in_shardings=(state_sharding, batch_sharding, replicated), out_shardings=(state_sharding, replicated),
    )
    evaluate = jax.jit(functools.partial(eval_step, graphdef=graphdef, task=task),
                       in_shardings=(state_sharding, batch_sharding, replicated), out_shardings=replicated)

    def labels(state, batch):
        return jnp.argmax(eval_outputs(state, batch, graphdef=graphdef, task=task), axis=-1)

    predict = jax.jit(labels, in_shardings=(state_sharding, batch_sharding), out_shardings=batch_sharding)
    init = functools.partial(init_state, make_model, tx, config.seed, shardings=state_sharding)
    abstract_state = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                  abstract_state, state_sharding)
    return Program(mesh, abstract_state, graphdef, task, tx, state_sharding, init, train, evaluate, predict)
