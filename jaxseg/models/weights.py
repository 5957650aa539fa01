"""Checkpoints of the torch model zoos (torchvision, smp, timm) read into jaxseg models and
written back.

The torch-layout models (`jaxseg.models.encoders`, `jaxseg.models.decoders`) name their
submodules as torch does, so a parameter's path is its state-dict key; the only map is per leaf:

| jaxseg leaf | torch key | layout |
|---|---|---|
| `Conv.kernel` `[kh, kw, in, out]` | `weight` `[out, in, kh, kw]` | transposed |
| `Linear.kernel` `[in, out]` | `weight` `[out, in]` | transposed |
| norm `scale` / `bias` | `weight` / `bias` | as is |
| BatchNorm `mean` / `var` | `running_mean` / `running_var` | as is |

Files: safetensors, or torch's `.pth`/`.pt`/`.bin` (zip, or the legacy format before torch 1.6) read
without importing torch (a restricted unpickler that accepts only tensors, parameters and ordered
dicts).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

LEAF_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
IGNORED_SUFFIXES = ("num_batches_tracked",)  # a step counter of torch's BatchNorm, not a weight
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# ----------------------------------------------------------------------------- reading files


def _rebuild_tensor(storage, offset, size, stride, *_):
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *_):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """The pickle of a torch zip checkpoint, tensors rebuilt as NumPy arrays from the archive."""

    GLOBALS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) in self.GLOBALS:
            return self.GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{self.path}: holds a {module}.{name}, not only tensors; save the model's state_dict() instead"
        )

    def persistent_load(self, pid):
        _, storage_type, key, _location, _numel = pid
        data = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(data, dtype=_STORAGE_DTYPES[storage_type])


class _Pending(NamedTuple):
    """A tensor of a legacy checkpoint, whose storage bytes follow the pickle."""

    key: str
    offset: int
    size: tuple
    stride: tuple


class _LegacyTorchUnpickler(_TorchUnpickler):
    """The main pickle of a legacy (torch < 1.6) checkpoint: tensors as `_Pending` until the
    storages, written after it, are read."""

    GLOBALS = {
        **_TorchUnpickler.GLOBALS,
        ("torch._utils", "_rebuild_tensor_v2"): lambda storage, offset, size, stride, *_: _Pending(
            storage, offset, tuple(size), tuple(stride)
        ),
    }

    def __init__(self, file, path: Path):
        pickle.Unpickler.__init__(self, file)
        self.path = path
        self.storages: dict[str, type] = {}  # key -> element type, read after the pickle

    def persistent_load(self, pid):
        if pid[0] != "storage":
            raise pickle.UnpicklingError(f"{self.path}: holds a {pid[0]}, not only tensors")
        _, storage_type, key, _location, _numel, view = pid
        if view is not None:
            raise pickle.UnpicklingError(f"{self.path}: storage views are not read; re-save it with torch >= 1.6")
        self.storages[key] = _STORAGE_DTYPES[storage_type]
        return key


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy serialization header


def _read_legacy_torch_file(path: Path) -> dict:
    """torch's legacy format: pickles of the magic number, protocol and system info, the object
    (its storages by key), the storage keys, then each storage as an int64 count and its bytes."""
    with open(path, "rb") as file:
        try:
            magic = pickle.Unpickler(file).load()
        except Exception:
            magic = None
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: neither a torch zip checkpoint nor a legacy torch file")
        pickle.Unpickler(file).load(), pickle.Unpickler(file).load()  # protocol version, system info
        unpickler = _LegacyTorchUnpickler(file, path)
        result = unpickler.load()
        arrays = {}
        for key in pickle.Unpickler(file).load():
            dtype = np.dtype(unpickler.storages[key])
            (count,) = np.frombuffer(file.read(8), "<i8")
            arrays[key] = np.frombuffer(file.read(int(count) * dtype.itemsize), dtype)

    def rebuilt(value):
        if isinstance(value, _Pending):
            return _rebuild_tensor(arrays[value.key], value.offset, value.size, value.stride)
        if isinstance(value, dict):
            return type(value)((k, rebuilt(v)) for k, v in value.items())
        return value

    return rebuilt(result)


def read_torch_file(path: Path) -> dict:
    """A torch `.pth` (the zip format of `torch.save` since torch 1.6, or the legacy one before)
    as `{key: np.ndarray}`."""
    if not zipfile.is_zipfile(path):
        return _read_legacy_torch_file(path)
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if not pickles:
            raise ValueError(f"{path}: no data.pkl inside; is it a torch checkpoint?")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as file:
            return _TorchUnpickler(file, archive, prefix, path).load()


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A state dict from a safetensors file or a torch checkpoint (unwrapping `{"state_dict": ...}`
    and `{"model": ...}`), as NumPy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    state = read_torch_file(path)
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state_dict)")
    return dict(state)


def write_state_dict(state: dict[str, np.ndarray], path) -> None:
    """Write a state dict as safetensors (what `torch.load`-free tools and smp's hub read)."""
    from safetensors.numpy import save_file

    # np.asarray(order="C"), not np.ascontiguousarray: that makes 0-d arrays (torch's
    # num_batches_tracked) 1-d, and torch then reports the shapes as mismatched.
    save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(path))


# ----------------------------------------------------------------------------- the key map


def _variables(model: nnx.Module):
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, (nnx.Param, nnx.BatchStat)):
            yield path, variable


def torch_key(path) -> str:
    """The state-dict key of the variable at `path` (e.g. `('layer1', 0, 'conv1', 'kernel')` ->
    `'layer1.0.conv1.weight'`)."""
    *modules, leaf = (str(p) for p in path)
    return ".".join([*modules, "weight" if leaf == "kernel" else LEAF_NAMES.get(leaf, leaf)])


def to_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def from_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def matched(shapes: dict, state: dict, *, prefix: str = "", ignore: tuple = (), target: str) -> dict:
    """`{path: value}`: the state dict's value for each variable path in `shapes` (`{path: shape}`,
    jaxseg's layout), converted to jaxseg's layout.

    Keys are `prefix + torch_key(path)`. Every path must be found with its shape; every key
    under `prefix` must be used, except BatchNorm's `num_batches_tracked` and keys starting with
    one of `ignore` (e.g. an encoder's ImageNet classifier `fc.`). Otherwise a ValueError lists
    the missing, mismatched and unexpected keys, naming `target`.
    """
    values, used, missing, mismatched = {}, set(), [], []
    for path, shape in shapes.items():
        key = prefix + torch_key(path)
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = from_torch_layout(np.asarray(state[key]), str(path[-1]))
        if value.shape != tuple(shape):
            expected = to_torch_layout(np.empty(shape, np.bool_), str(path[-1])).shape
            mismatched.append(f"{key}: file {tuple(np.shape(state[key]))}, model {expected}")
            continue
        values[path] = value
    unexpected = [
        k
        for k in state
        if k.startswith(prefix)
        and k not in used
        and not k.endswith(IGNORED_SUFFIXES)
        and not k[len(prefix) :].startswith(tuple(ignore))
    ]
    problems = []
    for title, keys in (("missing keys", missing), ("shape mismatches", mismatched), ("unexpected keys", unexpected)):
        if keys:
            listed = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{title}: {listed}")
    if problems:
        raise ValueError(f"the weights do not fit {target}: " + "; ".join(problems))
    return values


def load_state_dict(model: nnx.Module, state: dict, *, prefix: str = "", ignore: tuple = ()) -> None:
    """Set `model`'s parameters and BatchNorm statistics from a torch state dict, in place
    (the key rules of `matched`)."""
    variables = dict(_variables(model))
    shapes = {path: variable.shape for path, variable in variables.items()}
    for path, value in matched(shapes, state, prefix=prefix, ignore=ignore, target=type(model).__name__).items():
        variables[path][...] = jnp.asarray(value, variables[path].dtype)


def _plain_path(key_path) -> tuple:
    parts = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in key_path)
    return parts[:-1] if parts and parts[-1] == "value" else parts  # nnx.State leaves end in .value


def load_into_trees(
    trees, state: dict, *, under: tuple = (), ignore: tuple = (), target: str, members: bool = False
) -> list:
    """`trees` (e.g. the train state's params and BatchNorm statistics, `nnx.State`s of arrays,
    or of the `jax.ShapeDtypeStruct`s of an abstract model) with the leaves under the path
    `under` replaced by the state dict's values, each put where the leaf lived (its sharding;
    every process reads the file). The key rules of `matched`;
    `under` is the module the state dict belongs to (`("encoder",)` for encoder weights);
    `members`: the leaves are stacked over ablation members (axis 0), each member gets the values."""
    leaves = {}
    for index, tree in enumerate(trees):
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            path = _plain_path(key_path)
            if path[: len(under)] == under:
                leaves[path[len(under) :]] = (index, key_path, leaf)
    shapes = {p: leaf.shape[1:] if members else leaf.shape for p, (_, _, leaf) in leaves.items()}
    values = matched(shapes, state, ignore=ignore, target=target)
    replacements: list[dict] = [{} for _ in trees]
    for path, value in values.items():
        index, key_path, leaf = leaves[path]
        value = np.broadcast_to(value.astype(leaf.dtype), leaf.shape)
        sharding = getattr(leaf, "sharding", None)  # None: an abstract leaf (`jax.eval_shape`)
        replacements[index][key_path] = (
            jnp.asarray(value)
            if sharding is None
            else jax.make_array_from_callback(leaf.shape, sharding, value.__getitem__)
        )
    return [
        jax.tree_util.tree_map_with_path(lambda kp, leaf, r=r: r.get(kp, leaf), tree)
        for tree, r in zip(trees, replacements)
    ]


def state_dict(model: nnx.Module, *, prefix: str = "") -> dict[str, np.ndarray]:
    """The torch state dict of `model` (float32 NumPy arrays in torch's layout), with the
    `num_batches_tracked` counters torch's BatchNorm keeps, so `load_state_dict(strict=True)` takes it."""
    state: dict[str, np.ndarray] = {}
    for path, variable in _variables(model):
        state[prefix + torch_key(path)] = np.ascontiguousarray(
            to_torch_layout(np.asarray(variable[...]), str(path[-1]))
        )
        if str(path[-1]) == "var":
            state[prefix + torch_key(path)[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return state


def adapt_first_conv(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """A pretrained first-convolution kernel `[out, 3, kh, kw]` for `in_channels` inputs, as smp's
    `patch_first_conv`: summed over the colours for 1 channel, else repeated cyclically and
    scaled by `3 / in_channels`."""
    if in_channels == kernel.shape[1]:
        return kernel
    if in_channels == 1:
        return kernel.sum(axis=1, keepdims=True)
    repeated = kernel[:, [i % kernel.shape[1] for i in range(in_channels)]]
    return repeated * (kernel.shape[1] / in_channels)


def hub_file(hub_id: str, filename: str = "model.safetensors") -> Path:
    """`filename` of the Hugging Face Hub repository `hub_id` (e.g. `smp-hub/resnet34.imagenet`),
    downloaded once into the hub cache; offline, the cached copy or an error naming both."""
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError as error:
        raise ImportError(f"weights {hub_id!r} come from the Hugging Face Hub: pip install huggingface_hub") from error
    try:
        return Path(hf_hub_download(hub_id, filename=filename))
    except Exception as error:  # offline, unknown repository, no such file: one message for all
        raise OSError(
            f"could not fetch {filename} of {hub_id!r} from the Hugging Face Hub and it is not in the cache "
            f"{constants.HF_HUB_CACHE} ({type(error).__name__}: {error}); pass a local file path instead"
        ) from error


def resolve(weights) -> dict[str, np.ndarray]:
    """A state dict from a path (a saved-model directory: its `model.safetensors`), or from a hub
    id (`owner/name` that is not a local file)."""
    path = Path(weights)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists() and str(weights).count("/") == 1 and path.suffix not in FILE_SUFFIXES:
        path = hub_file(str(weights))
    return read_state_dict(path)
