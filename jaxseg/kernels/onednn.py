"""oneDNN convolutions for XLA's CPU backend, called through XLA's FFI.

XLA's own CPU convolutions ran the benchmark U-Net's layers slower than oneDNN, which PyTorch
uses on the CPU; most of all the kernel gradients (per-layer figures: `benchmarks/conv_layers.py`,
docs/performance.md).

`onednn_conv.cc` holds three FFI handlers (forward, input gradient, kernel gradient) for
float32 NHWC/HWIO 2-D convolutions with stride 1 and "SAME" padding. It is compiled on first
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

import jax
import jax.numpy as jnp
import jaxlib
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


def _call(name: str, shape, *operands):
    error = _registration_error()
    if error is not None:
        raise OneDnnUnavailable(error)
    # Under vmap (an ablation's member axis) the call runs once per member.
    result = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(f"jaxseg_onednn_conv_{name}", result, vmap_method="sequential")(*operands)


def _check(x, kernel):
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]:
        raise ValueError(f"conv2d needs x [N, H, W, C] and kernel [KH, KW, C, O]; got {x.shape} and {kernel.shape}")
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise ValueError(f"conv2d runs in float32; got {x.dtype} and {kernel.dtype}")


@jax.custom_vjp
def conv2d(x, kernel):
    """Stride-1, "SAME", ungrouped float32 NHWC/HWIO 2-D convolution on oneDNN
    (`lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))`)."""
    _check(x, kernel)
    return _call("forward", x.shape[:3] + kernel.shape[3:], x, kernel)


def _conv2d_fwd(x, kernel):
    return conv2d(x, kernel), (x, kernel)


def _conv2d_bwd(residuals, dy):
    x, kernel = residuals
    return _call("backward_data", x.shape, dy, kernel), _call("backward_weights", kernel.shape, x, dy)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _is_same(padding, rhs, spatial) -> bool:
    """ "SAME", or explicit pads equal to it (the torch-layout models pad explicitly)."""
    if isinstance(padding, str):
        return padding == "SAME"
    same = lax.padtype_to_pads(spatial, rhs.shape[:2], (1, 1), "SAME")
    return [tuple(p) for p in padding] == [tuple(p) for p in same]


def _ones(values) -> bool:
    return values is None or all(v == 1 for v in values)


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
    """`lax.conv_general_dilated` (the `conv_general_dilated` of `nnx.Conv`) with what `conv2d`
    covers sent to oneDNN: float32 stride-1 "SAME" (or padded explicitly as "SAME") ungrouped NHWC
    2-D convolutions of a
    non-empty batch. Every other convolution (strided, VALID, bfloat16, grouped, with an output
    sharding) is XLA's; `options` (e.g. `out_sharding`) pass through to it."""
    covered = (
        lhs.ndim == 4
        and rhs.ndim == 4
        and is_nhwc(dimension_numbers)
        and _is_same(padding, rhs, lhs.shape[1:3])
        and _ones(window_strides)
        and _ones(lhs_dilation)
        and _ones(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
        and lhs.dtype == jnp.float32
        and rhs.dtype == jnp.float32
        and lhs.size > 0
        and preferred_element_type in (None, jnp.float32)
        and options.get("out_sharding") is None
    )
    if covered:
        return conv2d(lhs, rhs)
    return lax.conv_general_dilated(
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
