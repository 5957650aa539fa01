"""The training state: a plain pytree of arrays (no Flax objects, no functions)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TrainState:
    """step: int32 scalar; params / model_state: the model's `nnx.Param` and other variables
    (BatchNorm statistics) as `nnx.State`; opt_state: the optax state."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(TrainState, data_fields=["step", "params", "model_state", "opt_state"], meta_fields=[])


def model_graphdef(make_model):
    """The static structure of `make_model(rngs=...)`, found without allocating parameters."""
    abstract = nnx.eval_shape(lambda: make_model(rngs=nnx.Rngs(0)))
    return nnx.graphdef(abstract)


def initial_state(make_model, tx: optax.GradientTransformation, seed) -> TrainState:
    """Parameters, model state and optimiser state from `seed` (an int or a traced int32:
    `jax.vmap` over seeds gives a stack of differently initialised members)."""
    model = make_model(rngs=nnx.Rngs(seed if isinstance(seed, int) else jax.random.key(seed)))
    _, params, model_state = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # (graphdef, *states)
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params))


def init_state(make_model, tx: optax.GradientTransformation, seed: int, shardings=None) -> TrainState:
    """`initial_state` compiled (eager init of a U-Net takes seconds; compiled it takes a
    fraction). `shardings` (a matching pytree of `jax.sharding.Sharding`s) creates each array
    directly where it lives on a mesh."""
    return jax.jit(functools.partial(initial_state, make_model, tx, seed), out_shardings=shardings)()
