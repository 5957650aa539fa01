"""Device mesh, shardings and multi-host setup: JAX's own runtime, no home-made distribution.

One program runs on one CPU, on the devices of one host and on the hosts of a pod slice:
  * `initialize_distributed(config)` joins the processes (`jax.distributed`) when asked to;
  * `make_mesh(config.mesh)` lays the devices out on named axes (`data` by default);
  * the train state is replicated (`P()`), or with `fsdp_min_size` its large arrays are
    split over `data`; batches are split over `data` (`P('data')`);
  * each process reads its own share of the data and `global_batch` assembles the host-local
    arrays into global ones (`jax.make_array_from_process_local_data`).
Reductions over the batch (the Dice sums, BatchNorm statistics, the confusion matrix) are
computed by XLA over the global batch, so a sharded step equals a single-device step of the
same global batch up to the order of floating-point sums.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
# Environment variables that name a multi-process run (JAX reads the first itself; the other
# two are this project's, for launchers that do not set up one of JAX's cluster environments).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def initialize_distributed(config) -> bool:
    """`jax.distributed.initialize()` when `config.distributed` is true or the environment
    names a coordinator. Returns whether this is a multi-process run.

    With only `config.distributed=True`, JAX detects the cluster (Cloud TPU, SLURM, Open MPI,
    Kubernetes). Must run before any other JAX call; calling it again is harmless.
    """
    if jax.distributed.is_initialized():
        return True
    requested = bool(config.get("distributed", False))
    if not (requested or os.environ.get(ENV_COORDINATOR)):
        return False
    number = lambda name: int(os.environ[name]) if os.environ.get(name) else None  # noqa: E731
    jax.distributed.initialize(
        coordinator_address=os.environ.get(ENV_COORDINATOR) or None,
        num_processes=number(ENV_NUM_PROCESSES),
        process_id=number(ENV_PROCESS_ID),
    )
    return True


def make_mesh(mesh_config=None, devices=None) -> Mesh:
    """A mesh from `config.mesh`: `axes` (names), `shape` (one size per axis, at most one -1
    for "the remaining devices") and `axis_types` ("auto" or "explicit" per axis).

    The default is every device on one `data` axis. A single process may ask for fewer
    devices than it has (the first ones are used). Auto axes let XLA propagate shardings
    through the losses' reshapes, sorts and custom gradients without annotations.
    """
    devices = list(jax.devices() if devices is None else devices)
    axes = tuple((mesh_config or {}).get("axes", (DATA_AXIS,)))
    shape = list((mesh_config or {}).get("shape", (-1,)))
    types = tuple((mesh_config or {}).get("axis_types", ("auto",) * len(axes)))
    if not (len(axes) == len(shape) == len(types)):
        raise ValueError(f"config.mesh: axes {axes}, shape {tuple(shape)} and axis_types {types} differ in length")
    if DATA_AXIS not in axes:
        raise ValueError(f"config.mesh.axes={axes} must include {DATA_AXIS!r} (the batch is split over it)")
    unknown = [t for t in types if t not in AXIS_TYPES]
    if unknown:
        raise ValueError(f"config.mesh.axis_types: {unknown} not in {tuple(AXIS_TYPES)}")
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape={tuple(shape)}: at most one axis may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"config.mesh.shape={tuple(shape)} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    size = math.prod(shape)
    if size > len(devices) or (size < len(devices) and jax.process_count() > 1):
        raise ValueError(f"config.mesh.shape={tuple(shape)} needs {size} devices; there are {len(devices)}")
    # One process may use the first `size` devices (measuring scaling, comparing device counts).
    devices = devices[:size]
    return jax.make_mesh(tuple(shape), axes, axis_types=tuple(AXIS_TYPES[t] for t in types), devices=devices)


def data_size(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "config.train.batch_size") -> None:
    """The global batch must split evenly over the `data` axis and over the processes."""
    for parts, what in (
        (data_size(mesh), f"the {data_size(mesh)} devices of the mesh's data axis"),
        (jax.process_count(), f"{jax.process_count()} processes"),
    ):
        if batch_size % parts:
            raise ValueError(f"{key}={batch_size} must divide by {what}")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape, parts: int, min_size: int) -> P:
    """Split the largest axis that `parts` divides, for arrays of at least `min_size` elements."""
    if min_size <= 0 or parts == 1 or math.prod(shape) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % parts == 0:
            return P(*([None] * axis + [DATA_AXIS]))
    return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp_min_size: int = 0):
    """Shardings for a train state (any pytree of arrays or `ShapeDtypeStruct`s).

    Replicated by default. With `fsdp_min_size > 0`, every array with at least that many
    elements is split over `data` along its largest divisible axis: the rule depends on the
    shape alone, so Adam's moments are split exactly like their parameters. XLA gathers the
    pieces where the step needs them (FSDP / ZeRO-3 in the GSPMD style).
    """
    parts = data_size(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, parts, fsdp_min_size)), abstract_state)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Host-local NumPy arrays (this process's rows) -> global arrays split over `data`.

    On one process this is a `device_put`; on many, the global batch is the processes' rows
    in process order.
    """
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in local_batch.items()
    }


def replicate(tree, mesh: Mesh):
    """Place a pytree of host values (identical on every process) on every device."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree)


def local_rows(array: jax.Array) -> np.ndarray:
    """The rows of a batch-split global array that live on this process, in order (the inverse
    of `global_batch` for this process)."""
    if array.is_fully_addressable:
        return np.asarray(array)
    shards: dict = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        shards.setdefault(start, np.asarray(shard.data))
    return np.concatenate([shards[start] for start in sorted(shards)])
