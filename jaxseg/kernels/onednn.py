"""oneDNN convolutions for XLA's CPU backend, called through XLA's FFI.

XLA's own CPU convolutions ran the benchmark U-Net's layers slower than oneDNN, which PyTorch
uses on the CPU; most of all the kernel gradients (per-layer figures: `benchmarks/conv_layers.py`,
docs/performance.md).

`onednn_conv.cc` holds three FFI handlers (forward, input gradient, kernel gradient) for
float32 NHWC/HWIO 2-D convolutions of any strides, kernel dilation, explicit pads and feature groups. It is compiled on first
use with the system's C++ compiler (`CXX`, default `c++`) against the FFI headers that ship
with jaxlib and the system's oneDNN 2.x (`libdnnl-dev` on Debian 12), into `$JAXSEG_CACHE_DIR`
(default `~/.cache/jaxseg`), named by a hash of the source, the jaxlib version and the
compiler; a cached library that no longer loads (say, after a oneDNN upgrade) is rebuilt once.
Without a compiler or oneDNN, `available()` is False and `unavailable_reason()` says why;
`conv2d` then raises `OneDnnUnavailable`. Programs choose this module through
`jaxseg.kernels.convolution` (`config.kernels`), never by themselves.

oneDNN runs its own OpenMP threads beside XLA's. It suits single-device CPU programs only:
XLA cannot partition an FFI call across devices.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

from jaxseg.kernels.depthwise import is_nhwc

SOURCE = Path(__file__).with_name("onednn_conv.cc")
HANDLERS = {
    "forward": "JaxsegOneDnnConvForward",
    "backward_data": "JaxsegOneDnnConvBackwardData",
    "backward_weights": "JaxsegOneDnnConvBackwardWeights",
}


class OneDnnUnavailable(RuntimeError):
    """The oneDNN convolutions could not be built or loaded (the message says why)."""


def compiler() -> str:
    """The C++ compiler that builds the handlers: `$CXX`, default `c++`."""
    return os.environ.get("CXX", "c++")


def cache_dir() -> Path:
    """Where compiled libraries are kept: `$JAXSEG_CACHE_DIR`, default `~/.cache/jaxseg`."""
    return Path(os.environ.get("JAXSEG_CACHE_DIR", Path.home() / ".cache" / "jaxseg"))


def library_path(directory: Path | None = None) -> Path:
    """The compiled library's path, named by a hash of the source, jaxlib's version and the compiler."""
    key = SOURCE.read_bytes() + jaxlib.__version__.encode() + compiler().encode()
    return (directory or cache_dir()) / f"onednn_conv-{hashlib.sha256(key).hexdigest()[:16]}.so"


def build(target: Path) -> Path:
    """Compile `onednn_conv.cc` into `target` (written under a unique temporary name, then
    renamed, so concurrent builds never load a half-written library)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(suffix=".tmp", prefix=target.name, dir=target.parent)
        os.close(descriptor)
    except OSError as error:
        raise OneDnnUnavailable(f"cannot write to {target.parent} (set JAXSEG_CACHE_DIR): {error}") from error
    partial = Path(name)
    command = [
        compiler(),
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-w",
        f"-I{jax.ffi.include_dir()}",
        str(SOURCE),
        "-o",
        str(partial),
        "-ldnnl",
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(partial, target)
    except subprocess.CalledProcessError as error:
        lines = error.stderr.strip().splitlines()
        reason = [line for line in lines if "error" in line][:2] or lines[-3:] or [f"exit status {error.returncode}"]
        raise OneDnnUnavailable(
            f"building {SOURCE.name} failed (is oneDNN 2.x installed, e.g. libdnnl-dev?): " + " | ".join(reason)
        ) from error
    except OSError as error:  # no such compiler, not executable, rename failed
        raise OneDnnUnavailable(f"running the C++ compiler {command[0]!r} failed (set CXX): {error}") from error
    finally:
        partial.unlink(missing_ok=True)
    return target


def load(directory: Path | None = None) -> ctypes.CDLL:
    """The compiled handlers, built first if the cache lacks them (or holds a library that no
    longer loads); raises `OneDnnUnavailable`."""
    path = library_path(directory)
    if path.exists():
        try:
            return ctypes.CDLL(str(path))
        except OSError:
            pass  # e.g. built against a oneDNN that has since been upgraded: build again
    build(path)
    try:
        return ctypes.CDLL(str(path))
    except OSError as error:
        raise OneDnnUnavailable(f"loading {path} failed: {error}") from error


_REGISTRATION_LOCK = threading.Lock()


def _registration_error() -> str | None:
    """Build, load and register the handlers once per process: None, or why that failed."""
    with _REGISTRATION_LOCK:  # two threads tracing at once must not both build
        return _register_once()


@functools.cache
def _register_once() -> str | None:
    try:
        library = load()
    except OneDnnUnavailable as error:
        return str(error)
    for name, symbol in HANDLERS.items():
        jax.ffi.register_ffi_target(
            f"jaxseg_onednn_conv_{name}", jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
        )
    return None


def unavailable_reason() -> str | None:
    """None when the oneDNN convolutions can run in this process, else why not (builds and
    registers the handlers on first call)."""
    return _registration_error()


def available() -> bool:
    """Whether the oneDNN convolutions can run in this process."""
    return unavailable_reason() is None


Pads = tuple[tuple[int, int], tuple[int, int]]


class Geometry(NamedTuple):
    """A 2-D convolution's strides, explicit non-negative pads and kernel dilation (XLA's: 1 is
    none), each per (rows, columns), and its feature groups (XLA's `feature_group_count`)."""

    strides: tuple[int, int] = (1, 1)
    pads: Pads = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def attributes(self) -> dict[str, np.ndarray | np.int64]:
        """The handlers' FFI attributes."""
        (top, bottom), (left, right) = self.pads
        as_array = lambda values: np.asarray(values, np.int64)  # noqa: E731
        return {
            "strides": as_array(self.strides),
            "dilation": as_array(self.dilation),
            "pad_before": as_array((top, left)),
            "pad_after": as_array((bottom, right)),
            "groups": np.int64(self.groups),
        }

    def output_shape(self, x_shape, kernel_shape) -> tuple[int, ...]:
        """[N, OH, OW, O] as XLA sizes it."""
        sizes = [
            (size + before + after - (k - 1) * d - 1) // s + 1
            for size, k, s, d, (before, after) in zip(
                x_shape[1:3], kernel_shape[:2], self.strides, self.dilation, self.pads
            )
        ]
        return (x_shape[0], *sizes, kernel_shape[3])

    def trimmed(self, x, kernel_shape):
        """`x` without the trailing rows and columns that no output window reaches (XLA's floor
        division drops them), and the geometry for it: oneDNN 2.6's kernel gradient of a strided
        1x1 convolution is wrong when they are there, even told of them by a negative pad."""
        out = self.output_shape(x.shape, kernel_shape)
        reach = [
            (o - 1) * s + (k - 1) * d + 1 - before
            for o, k, s, d, (before, _) in zip(out[1:3], kernel_shape[:2], self.strides, self.dilation, self.pads)
        ]
        if all(r >= size for r, size in zip(reach, x.shape[1:3])):
            return x, self
        pads = tuple(
            (before, after if r >= size else 0) for (before, after), r, size in zip(self.pads, reach, x.shape[1:3])
        )
        return x[:, : min(reach[0], x.shape[1]), : min(reach[1], x.shape[2])], self._replace(pads=pads)


def geometry_of(x_shape, kernel_shape, strides=None, padding="SAME", dilation=None, groups: int = 1) -> Geometry:
    """`Geometry` of `lax.conv_general_dilated`'s arguments ("SAME"/"VALID" sized as lax sizes
    them, over the dilated kernel)."""
    strides, dilation = tuple(strides or (1, 1)), tuple(dilation or (1, 1))
    if not all(s >= 1 for s in strides + dilation):
        raise ValueError(f"conv2d needs strides and dilation >= 1; got strides {strides}, dilation {dilation}")
    if isinstance(padding, str):
        window = [(k - 1) * d + 1 for k, d in zip(kernel_shape[:2], dilation)]
        padding = lax.padtype_to_pads(x_shape[1:3], window, strides, padding)
    pads = tuple((int(before), int(after)) for before, after in padding)
    return Geometry(tuple(map(int, strides)), pads, tuple(map(int, dilation)), int(groups))  # type: ignore[arg-type]


def _call(name: str, shape, geometry: Geometry, *operands):
    error = _registration_error()
    if error is not None:
        raise OneDnnUnavailable(error)
    # Under vmap (an ablation's member axis) the call runs once per member.
    result = jax.ShapeDtypeStruct(shape, jnp.float32)
    call = jax.ffi.ffi_call(f"jaxseg_onednn_conv_{name}", result, vmap_method="sequential")
    return call(*operands, **geometry.attributes())


def _check(x, kernel, geometry: Geometry):
    groups = geometry.groups
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2] * groups or kernel.shape[3] % groups:
        raise ValueError(
            f"conv2d needs x [N, H, W, C] and kernel [KH, KW, C / groups, O], O a multiple of groups ({groups});"
            f" got {x.shape} and {kernel.shape}"
        )
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise ValueError(f"conv2d runs in float32; got {x.dtype} and {kernel.dtype}")
    valid = all(p >= 0 for pair in geometry.pads for p in pair) and all(
        size >= 1 for size in geometry.output_shape(x.shape, kernel.shape)[1:3]
    )
    if not valid:
        raise ValueError(f"conv2d needs pads >= 0 and a non-empty output; got {geometry}")


def conv2d(x, kernel, strides=(1, 1), padding="SAME", dilation=(1, 1), groups: int = 1):
    """float32 NHWC/HWIO 2-D convolution on oneDNN: `lax.conv_general_dilated(x, kernel, strides,
    padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups)`, `padding` being "SAME", "VALID" or explicit non-negative pads."""
    if groups < 1:
        raise ValueError(f"conv2d needs groups >= 1; got {groups}")
    geometry = geometry_of(x.shape, kernel.shape, strides, padding, dilation, groups)
    _check(x, kernel, geometry)
    return _conv2d(geometry, x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv2d(geometry: Geometry, x, kernel):
    return _call("forward", geometry.output_shape(x.shape, kernel.shape), geometry, x, kernel)


def _conv2d_fwd(geometry, x, kernel):
    return _conv2d(geometry, x, kernel), (x, kernel)


def _conv2d_bwd(geometry, residuals, dy):
    x, kernel = residuals
    reached, reached_geometry = geometry.trimmed(x, kernel.shape)
    return (
        _call("backward_data", x.shape, geometry, dy, kernel),
        _call("backward_weights", kernel.shape, reached_geometry, reached, dy),
    )


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _ones(values) -> bool:
    return values is None or all(v == 1 for v in values)


def _non_negative(padding) -> bool:
    return isinstance(padding, str) or all(p >= 0 for pair in padding for p in pair)


def routed(fallback: Callable) -> Callable:
    """`lax.conv_general_dilated`'s signature, with what `conv2d` covers sent to oneDNN: float32
    NHWC 2-D convolutions of a non-empty batch, any strides, kernel dilation, feature groups and
    "SAME", "VALID" or non-negative explicit padding. The rest (bfloat16, input-dilated i.e.
    transposed, batch-grouped, negative pads, with an output sharding) goes to `fallback`, with
    `options` (e.g. `out_sharding`)."""

    def conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
        **options,
    ):
        covered = (
            lhs.ndim == 4
            and rhs.ndim == 4
            and is_nhwc(dimension_numbers)
            and _non_negative(padding)
            and _ones(lhs_dilation)
            and feature_group_count >= 1
            and lhs.shape[3] == rhs.shape[2] * feature_group_count
            and rhs.shape[3] % feature_group_count == 0
            and batch_group_count == 1
            and lhs.dtype == jnp.float32
            and rhs.dtype == jnp.float32
            and lhs.size > 0
            and preferred_element_type in (None, jnp.float32)
            and options.get("out_sharding") is None
        )
        if covered:
            geometry = geometry_of(lhs.shape, rhs.shape, window_strides, padding, rhs_dilation)
            covered = all(size >= 1 for size in geometry.output_shape(lhs.shape, rhs.shape)[1:3])
        if covered:
            return conv2d(lhs, rhs, window_strides, padding, rhs_dilation, feature_group_count)
        return fallback(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
            **options,
        )

    return conv_general_dilated


# `nnx.Conv`'s `conv_general_dilated` with oneDNN where it covers the convolution, else XLA's.
conv_general_dilated = routed(lax.conv_general_dilated)
