"""The member axis as an execution strategy.

A member step maps `(states, batch, hps)` with a leading member axis K on `states` and `hps`
(the batch is shared) to `(states, metrics)` with the same axis:

* `vmap`: `jax.vmap` of the plain step. Each member's convolutions become one grouped
  convolution (`feature_group_count=K`): one large kernel where the backend runs grouped
  convolutions well (GPU, TPU), slow on XLA's CPU backend.
* `unroll`: the K plain steps traced one after another into one program: each member's
  convolutions stay ordinary ones, and XLA may overlap the independent members.
* `auto`: `unroll` on CPU, `vmap` elsewhere (benchmarks/ablation.py measures both).

`shard_members` spreads the member axis over a `member` mesh axis with `jax.shard_map`
(manual over `member` only: a `data` axis stays automatic, so the batch reductions of each
member remain global), each device running the chosen strategy for its own members.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

STRATEGIES = ("vmap", "unroll", "auto")
MEMBER_AXIS = "member"


def resolve(strategy: str, backend: str | None = None) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"config.ablation.strategy must be one of {STRATEGIES}; got {strategy!r}")
    if strategy == "auto":
        return "unroll" if (backend or jax.default_backend()) == "cpu" else "vmap"
    return strategy


def take(tree, index: int):
    return jax.tree.map(lambda x: x[index], tree)


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def members_of(states) -> int:
    return jax.tree.leaves(states)[0].shape[0]


def over_members(fn, strategy: str, in_axes: tuple, member_fns=None):
    """`fn` over a leading member axis of the arguments whose `in_axes` entry is 0 (the others,
    None, are shared by all members), with the strategy's execution. `unroll` may run a
    specialised function per member (`member_fns[m]`, e.g. one that skips the loss terms
    whose weight is 0 for that member); their outputs must have one structure."""
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy == "unroll":

        def unrolled(*args):
            count = members_of([a for a, axis in zip(args, in_axes) if axis == 0])
            fns = member_fns if member_fns is not None and len(member_fns) == count else [fn] * count
            member = lambda m: (a if axis is None else take(a, m) for a, axis in zip(args, in_axes))  # noqa: E731
            return stack([fns[m](*member(m)) for m in range(count)])

        return unrolled
    raise ValueError(f"unknown member strategy {strategy!r}")


def shard_members(fn, mesh, in_member: tuple[bool, ...], out_member):
    """`jax.shard_map` of a member function over the mesh's `member` axis: arguments flagged in
    `in_member` are split over it, the others replicated; outputs are split as `out_member`
    (a pytree prefix of bools)."""
    spec = lambda split: P(MEMBER_AXIS) if split else P()  # noqa: E731
    return jax.shard_map(
        fn,
        mesh=mesh,
        axis_names={MEMBER_AXIS},
        in_specs=tuple(spec(s) for s in in_member),
        out_specs=jax.tree.map(spec, out_member),
    )
