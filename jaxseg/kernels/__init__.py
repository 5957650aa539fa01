"""Backend kernels behind the models' one convolution seam, chosen once per program.

Every model convolves with `nnx.Conv`, whose `conv_general_dilated` defaults to
`lax.conv_general_dilated`: the same computation on every backend. `convolution(name)` returns
the function a program's models are built with, from `config.kernels`:

- "xla": XLA's own convolutions (the default of the models and of configs that name none);
- "onednn": float32 convolutions (any strides, dilation, padding and groups) on oneDNN
  (`jaxseg.kernels.onednn`, built on first use against a system oneDNN 2.x, e.g. Debian/Ubuntu
  `libdnnl-dev`); an error where it cannot run: not the CPU backend, more than one device, or
  oneDNN missing;
- "auto": "onednn" where it can run, else "xla" with one log line saying why.

On the CPU backend, "onednn" and "auto" compute the depthwise convolutions oneDNN does not take
(bfloat16, or all of them where "auto" falls back to XLA) as shifted multiply-adds
(`jaxseg.kernels.depthwise`): XLA's CPU grouped convolution is about 100x slower there, forward
and backward. Other backends keep their own.

The choice is made when the program is built (from the config, never from the environment at
trace time) and changes speed, not the function computed (oneDNN sums in another order: results
agree to float32 rounding). Figures: docs/performance.md.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
from jax import lax

KERNELS = ("xla", "onednn", "auto")
log = logging.getLogger("jaxseg")


def onednn_obstacle() -> str | None:
    """None when the oneDNN convolutions can serve this process's programs, else why not."""
    if jax.default_backend() != "cpu":
        return f"the backend is {jax.default_backend()}, not the CPU"
    if jax.device_count() > 1:
        return f"{jax.device_count()} devices: XLA cannot partition oneDNN's FFI calls across devices"
    from jaxseg.kernels import onednn

    return onednn.unavailable_reason()


@functools.cache  # backend and devices are fixed per process: decide (and log) once
def resolve(name: str) -> str:
    """ "xla" or "onednn" for `config.kernels = name` in this process."""
    if name not in KERNELS:
        raise ValueError(f"config.kernels must be one of {KERNELS}; got {name!r}")
    if name == "xla":
        return name
    obstacle = onednn_obstacle()
    if obstacle is None:
        return "onednn"
    if name == "onednn":
        raise RuntimeError(f"config.kernels='onednn' cannot run here: {obstacle}; use 'xla' or 'auto'")
    # Missing oneDNN on a single-device CPU program costs speed worth a warning; other backends
    # and meshes are where "xla" is the right choice anyway.
    on_one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    (log.warning if on_one_cpu else log.info)("config.kernels='auto': XLA's convolutions (%s)", obstacle)
    return "xla"


@functools.cache  # one function per choice: models built with it share their graph definition
def convolution(name: str = "xla") -> Callable:
    """The `conv_general_dilated` for the models of a program with `config.kernels = name`."""
    convolve: Callable = lax.conv_general_dilated
    if name != "xla" and jax.default_backend() == "cpu":
        from jaxseg.kernels import depthwise

        convolve = depthwise.routed(convolve)  # the depthwise layers oneDNN does not take (bfloat16)
    if resolve(name) == "onednn":
        from jaxseg.kernels import onednn

        convolve = onednn.routed(convolve)
    return convolve
