"""The optax optimiser built from `config.optim`.

    skip_if_nonfinite(chain(clip_by_global_norm, inject_hyperparams(core + decoupled weight decay),
                            encoder group scale))

Every hyperparameter that a schedule or an ablation changes lives in the optimiser state as
an array (`opt_state...hyperparams["learning_rate"]`), so it can be logged and vmapped. L1 is
a loss term (`l1_penalty`), not a transformation, because it is part of the objective.

`core` is Adam, SGD with momentum, or Muon (`optax.contrib.scale_by_muon` on the hidden weight
matrices, Adam on the rest; see `muon_labels`; fused gate and q/k/v matrices optionally block
by block, see `FUSED_BLOCKS`).

The encoder group (parameters under the model's `encoder`, e.g. a pretrained backbone of
`jaxseg.models.create`): `optim.encoder_lr_scale` multiplies its updates (a learning rate of
`scale * learning_rate` for SGD, Adam(W) and Muon alike, weight decay included, as a torch
parameter group with its own `lr`), and `optim.freeze_encoder_steps` zeroes them for the first
N steps. BatchNorm statistics of a frozen encoder still follow the batches in training mode.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "exponential", "cosine", "warmup_cosine", "piecewise")


def learning_rate_schedule(optim, total_steps: int):
    """An optax schedule from `optim.schedule` and its options."""
    lr = optim.learning_rate
    kind = optim.schedule
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "exponential":
        return optax.exponential_decay(
            lr, transition_steps=optim.decay_steps, decay_rate=optim.decay_rate, staircase=optim.get("staircase", False)
        )
    if kind == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=optim.end_fraction)
    if kind == "warmup_cosine":
        if not 0 <= optim.warmup_steps < total_steps:
            raise ValueError(
                f"config.optim.warmup_steps={optim.warmup_steps} must be in [0, config.train.steps={total_steps})"
            )
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, optim.warmup_steps, total_steps, end_value=lr * optim.end_fraction
        )
    if kind == "piecewise":
        boundaries = {int(step): float(scale) for step, scale in zip(optim.boundaries, optim.scales)}
        return optax.piecewise_constant_schedule(lr, boundaries)
    raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}; got {kind!r}")


def decay_mask(params):
    """Weight decay (and L1) apply to kernels, not to biases or normalisation scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _path_names(path) -> list[str]:
    """The dict keys / attribute names along a pytree path."""
    return [str(getattr(key, "key", getattr(key, "name", key))) for key in path]


def muon_labels(params):
    """ "muon" for the weight matrices inside the network, "adam" for the rest.

    Muon orthogonalises the update of a linear map; embeddings and output projections are
    lookup tables and per-token read-outs rather than maps between hidden spaces (Jordan et
    al. 2024 keep them on Adam), and vectors (biases, norm scales) have no matrix structure.
    A leaf is on Muon when it has 2 or more axes and no part of its path names an embedding
    or the output layer (`embedding`, `position_embedding`, `output`, `head`).
    """

    def label(path, leaf):
        excluded = any("embed" in name or name in ("output", "head") for name in _path_names(path))
        return "muon" if leaf.ndim >= 2 and not excluded else "adam"

    return jax.tree_util.tree_map_with_path(label, params)


# Matrices that hold several linear maps side by side along their output axis: an LSTM's
# four gates, attention's query/key/value. With `optim.muon_split_fused`, Muon
# orthogonalises each block on its own, as if the maps were separate parameters.
FUSED_BLOCKS = {"w_ih": 4, "w_hh": 4, "qkv": 3}


def fused_blocks(path) -> int:
    """How many side-by-side maps the leaf at `path` holds (1: an ordinary matrix)."""
    return next((FUSED_BLOCKS[name] for name in _path_names(path) if name in FUSED_BLOCKS), 1)


def _blocks_view(tree, split: bool):
    """Fused `[..., in, k * out]` leaves as `[..., in, k, out]` (split) or back (not split)."""

    def view(path, leaf):
        blocks = fused_blocks(path)
        if blocks == 1:
            return leaf
        if split:
            return leaf.reshape(leaf.shape[:-1] + (blocks, leaf.shape[-1] // blocks))
        return leaf.reshape(leaf.shape[:-2] + (-1,))

    return jax.tree_util.tree_map_with_path(view, tree)


def _in_blocks(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` applied to the fused matrices viewed as stacks of their blocks."""

    def init_fn(params):
        return inner.init(_blocks_view(params, True))

    def update_fn(updates, state, params=None):
        viewed = None if params is None else _blocks_view(params, True)
        updates, state = inner.update(_blocks_view(updates, True), state, viewed)
        return _blocks_view(updates, False), state

    return optax.GradientTransformation(init_fn, update_fn)


def _matrix_axes(path, leaf, split: bool):
    """(reduction axes, output axis) of Muon's matrix view of a leaf: the last axis is the
    output (a dense `[in, out]` kernel, a convolution's `[..., in, out]` with its spatial and
    input axes reduced); with `split`, a fused leaf is viewed as `[..., in, k, out]` and `k`
    is a batch axis."""
    if split and fused_blocks(path) > 1:
        return tuple(range(leaf.ndim - 2)), leaf.ndim - 1
    return tuple(range(leaf.ndim - 1)), leaf.ndim - 1


def _muon_dimensions(split: bool):
    """Muon's `weight_dimension_numbers`: a `MuonDimensionNumbers` per leaf (see `_matrix_axes`)."""

    def dimensions(path, leaf):
        reduction, output = _matrix_axes(path, leaf, split)
        return optax.contrib.MuonDimensionNumbers(reduction_axis=reduction, output_axis=output)

    return lambda updates: jax.tree_util.tree_map_with_path(dimensions, updates)


def _scale_to_rms(rms: float, split: bool) -> optax.GradientTransformation:
    """Scale each orthogonalised matrix update by `rms * sqrt(max(fan_in, fan_out))`, giving
    it the RMS `rms` of a typical Adam update (Liu et al. 2025, "Muon is scalable"), so that
    one learning rate and weight decay serve the Muon and the Adam parameters."""

    def update_fn(updates, state, params=None):
        del params

        def scale(path, u):
            reduction, output = _matrix_axes(path, u, split)
            fan_in = math.prod(u.shape[axis] for axis in reduction)
            return u * (rms * max(fan_in, u.shape[output]) ** 0.5)

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _muon(optim):
    """Muon (Nesterov momentum orthogonalised by Newton-Schulz) on the hidden weight matrices,
    Adam on the rest (see `muon_labels`); fused matrices block by block with
    `optim.muon_split_fused`."""
    split = optim.get("muon_split_fused", False)
    matrices = optax.chain(
        optax.contrib.scale_by_muon(beta=optim.momentum, weight_dimension_numbers=_muon_dimensions(split)),
        _scale_to_rms(0.2, split),
    )
    if split:
        matrices = _in_blocks(matrices)
    rest = optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps)
    return optax.partition({"muon": matrices, "adam": rest}, muon_labels)


def _core(name: str, optim, learning_rate, weight_decay):
    if name == "muon":
        core = [_muon(optim)]
    elif name == "sgd":
        core = [optax.trace(decay=optim.momentum, nesterov=optim.get("nesterov", False))] if optim.momentum else []
    else:
        core = [optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps)]
    # Decoupled weight decay (AdamW): added to the update before the learning-rate scaling.
    return optax.chain(
        *core, optax.add_decayed_weights(weight_decay, mask=decay_mask), optax.scale_by_learning_rate(learning_rate)
    )


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
    """The full chain for `config.optim` (see the module docstring)."""
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}; got {optim.name!r}")
    schedule = learning_rate_schedule(optim, total_steps)
    weight_decay = optim.weight_decay if optim.name != "adam" else 0.0
    core = optax.inject_hyperparams(
        lambda learning_rate, weight_decay: _core(optim.name, optim, learning_rate, weight_decay)
    )(learning_rate=schedule, weight_decay=weight_decay)
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
    parts += [core, *encoder_group(optim)]
    chain = optax.chain(*parts) if len(parts) > 1 else core
    # Non-finite updates are skipped (state and parameters unchanged) and counted; the
    # training loop stops after `max_consecutive_nonfinite` of them in a row.
    return optax.apply_if_finite(chain, max_consecutive_errors=2**31 - 1)


def encoder_group(optim) -> list:
    """[] or the transformation scaling the encoder's updates (see the module docstring)."""
    scale, frozen = optim.get("encoder_lr_scale", 1.0), int(optim.get("freeze_encoder_steps", 0))
    if scale < 0 or frozen < 0:
        raise ValueError(f"config.optim.encoder_lr_scale ({scale}) and freeze_encoder_steps ({frozen}) must be >= 0")
    if scale == 1.0 and frozen == 0:
        return []

    def factor(step):
        return jnp.where(step < frozen, 0.0, scale)

    return [optax.masked(optax.scale_by_schedule(factor), encoder_mask)]


def encoder_mask(params):
    """True for the parameters under the model's `encoder`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _path_names(path)[:1] == ["encoder"], params)


def l1_penalty(params):
    """Sum of absolute kernel values (the same mask as weight decay)."""
    leaves = [
        jnp.sum(jnp.abs(p)) for p, keep in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(params))) if keep
    ]
    return sum(leaves) if leaves else jnp.zeros(())


def _injected(opt_state):
    """The `inject_hyperparams` state inside `apply_if_finite(chain(clip?, inject))`, and a
    function that puts a replacement back."""
    inner = opt_state.inner_state
    if hasattr(inner, "hyperparams"):
        return inner, lambda new: opt_state._replace(inner_state=new)
    index = next(i for i, part in enumerate(inner) if hasattr(part, "hyperparams"))  # a chain's states
    return inner[index], lambda new: opt_state._replace(inner_state=(*inner[:index], new, *inner[index + 1 :]))


def current_learning_rate(opt_state):
    """The learning rate the last update used (from the injected hyperparameters)."""
    return _injected(opt_state)[0].hyperparams["learning_rate"]


def set_hyperparameter(opt_state, name: str, value):
    """`opt_state` with the injected hyperparameter `name` (e.g. "weight_decay") set to
    `value` (an array: one per member for a stacked ablation state)."""
    inject, put_back = _injected(opt_state)
    if name not in inject.hyperparams:
        raise KeyError(f"the optimiser has no injected hyperparameter {name!r}; it has {sorted(inject.hyperparams)}")
    old = inject.hyperparams[name]
    hyperparams = dict(inject.hyperparams, **{name: jnp.broadcast_to(jnp.asarray(value, old.dtype), old.shape)})
    return put_back(inject._replace(hyperparams=hyperparams))


def nonfinite_counts(opt_state):
    """(consecutive, total) skipped non-finite updates, from `apply_if_finite`'s state."""
    return opt_state.notfinite_count, opt_state.total_notfinite
