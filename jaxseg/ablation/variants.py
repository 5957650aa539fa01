"""`config.ablation` -> the list of members, each a name and a set of config overrides.

    config.ablation = dict(
        variants={"ce": {"loss": {"weights": {"ce": 1.0}}},
                  "dice": {"loss": {"weights": {"dice": 1.0}}, "optim": {"learning_rate": 1e-2}}},
        grid={"loss": {"label_smoothing": [0.0, 0.1]}},   # product of value lists, optional
        strategy="auto", same_init=True)

A variant is a partial config: nested dicts of the values it changes (members are named by
their dotted paths, e.g. `loss.weights`). `loss.weights` replaces the whole dict (terms it
does not name get weight 0); any other `loss.*` key, `optim.learning_rate`,
`optim.weight_decay` and `optim.l1` override one value. A grid has the same shape with a list
of values at each leaf. With both `variants` and `grid`, every variant is combined with every
grid point.
"""

from __future__ import annotations

import copy
import itertools
from typing import NamedTuple

import ml_collections

OPTIM_KEYS = ("optim.learning_rate", "optim.weight_decay", "optim.l1")
WHOLE = ("loss.weights",)  # replaced as one value, not merged key by key


def flatten(overrides, config, prefix: str = "") -> dict:
    """Nested overrides -> {dotted key: value}, descending only where `config` has a section."""
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    flat = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        section = config.get(key) if hasattr(config, "get") else None
        if hasattr(value, "keys") and hasattr(section, "keys") and path not in WHOLE:
            flat.update(flatten(value, section, path + "."))
        else:
            flat[path] = value.to_dict() if hasattr(value, "to_dict") else value
    return flat


class Member(NamedTuple):
    name: str
    overrides: dict


def _check_key(key: str, config) -> None:
    if key in OPTIM_KEYS:
        return
    section, _, field = key.partition(".")
    if section != "loss" or field.split(".")[0] not in config.loss:
        raise ValueError(
            f"config.ablation: cannot vary {key!r}; members may override loss.* keys and {', '.join(OPTIM_KEYS)}"
        )


def _format(value) -> str:
    if isinstance(value, dict):
        return "+".join(f"{k}" if v == 1 else f"{v:g}{k}" for k, v in value.items() if v)
    return f"{value:g}" if isinstance(value, float) else str(value)


def members(config) -> list[Member]:
    """The members of `config.ablation` (empty when there is no ablation)."""
    ablation = config.get("ablation")
    if not ablation or not (ablation.get("variants") or ablation.get("grid")):
        return []
    variants = [
        Member(str(name), flatten(overrides, config))
        for name, overrides in dict(ablation.get("variants") or {}).items()
    ]
    grid = flatten(ablation.get("grid") or {}, config)
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"config.ablation.grid: {key} needs a non-empty list of values; got {values!r}")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    result = []
    for variant in variants or [Member("", {})]:
        for point in points:
            overrides = {**variant.overrides, **point}
            suffix = ",".join(f"{key.split('.')[-1]}={_format(value)}" for key, value in point.items())
            name = ",".join(part for part in (variant.name, suffix) if part)
            result.append(Member(name, overrides))
    for member in result:
        for key in member.overrides:
            _check_key(key, config)
    names = [m.name for m in result]
    if len(set(names)) != len(names):
        raise ValueError(f"config.ablation: member names repeat: {names}")
    return result


def member_config(config, member: Member):
    """A copy of `config` with the member's overrides applied."""
    result = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
    for key, value in member.overrides.items():
        if key == "loss.weights":
            unknown = set(value) - set(result.loss.weights)
            if unknown:
                raise ValueError(f"config.ablation member {member.name!r}: unknown loss terms {sorted(unknown)}")
            result.loss.weights = {term: float(value.get(term, 0.0)) for term in result.loss.weights}
            continue
        *path, field = key.split(".")
        node = result
        for part in path:
            node = node[part]
        node[field] = value
    return result


def describe(member: Member) -> str:
    """The overrides as one short line for tables."""
    return "; ".join(f"{key}={_format(value)}" for key, value in member.overrides.items())


class MemberSetup(NamedTuple):
    """What the compiled member program needs: the stacked hyperparameters (host arrays with a
    leading member axis), the initialisation seeds and decoupled weight decays per member, and
    each member's loss terms when the task lets members skip the others (else None)."""

    configs: list
    hp: dict
    seeds: list
    weight_decays: list
    active_terms: list | None


def member_setup(config, members: list[Member], task, workdir) -> MemberSetup:
    """Per-member configs and their hyperparameters (`task.member_hyperparameters`, one pytree
    structure) stacked into one pytree, with each member's learning-rate scale and seed."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    configs = [member_config(config, m) for m in members]
    hps = task.member_hyperparameters(configs, workdir)
    active_terms = [task.active_terms(hp) for hp in hps]
    same_init = config.ablation.get("same_init", True)
    for index, (hp, member_cfg) in enumerate(zip(hps, configs)):
        hp["lr_scale"] = jnp.float32(member_cfg.optim.learning_rate / config.optim.learning_rate)
        hp["seed"] = jnp.int32(config.seed if same_init else config.seed + index)
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *hps)
    weight_decays = [c.optim.weight_decay if c.optim.name != "adam" else 0.0 for c in configs]
    return MemberSetup(
        configs, stacked, [int(hp["seed"]) for hp in hps], weight_decays, None if None in active_terms else active_terms
    )
