"""Which library runs XLA's CPU convolutions, and the choice jaxseg's entry points make.

This jaxlib sends CPU convolutions to YNNPACK. With the XLA flag
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` they run as XLA's Eigen
convolutions instead (with oneDNN's GEMM), which measured faster on every layer of the
benchmark U-Net here (batch 16, forward + input gradient + kernel gradient, 10 layer shapes:
YNNPACK with `jaxseg.models.conv`'s GEMM kernel gradients 1143 ms, Eigen with XLA's own
kernel gradients 849 ms; README, Train step). YNNPACK keeps every other fusion it takes
(reductions, elementwise), which pay: turning all of them off made the step slower.

XLA reads `XLA_FLAGS` once, when the first backend starts, so `prefer_eigen_convolutions` must
run before any JAX computation; `train.py`, `jaxseg.evaluate`, `jaxseg.predict` and the
benchmarks call it first thing. A user's own `xla_cpu_experimental_ynn_fusion_type` in
`XLA_FLAGS` wins. `jaxseg.models.conv` asks `eigen_convolutions` which kernel-gradient route
fits the library in use.
"""

from __future__ import annotations

import os
import re

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"--{YNN_FUSION_FLAG}=-individual_convolution"


def _ynn_fusion_type(flags: str) -> str | None:
    """The last value `flags` gives the YNNPACK fusion flag (XLA keeps the last), or None."""
    values = re.findall(rf"--{YNN_FUSION_FLAG}=(\S*)", flags)
    return values[-1] if values else None


def eigen_convolutions(flags: str | None = None) -> bool:
    """Whether `flags` (default: the `XLA_FLAGS` environment variable) take single convolutions
    away from YNNPACK: an explicit fusion list without `individual_convolution`, or one that
    removes it (`-individual_convolution`)."""
    value = _ynn_fusion_type(os.environ.get("XLA_FLAGS", "") if flags is None else flags)
    if value is None:
        return False
    items = [item.strip() for item in value.split(",") if item.strip()]
    if any(item.startswith(("+", "-")) for item in items):
        return "-individual_convolution" in items
    return "individual_convolution" not in items


def prefer_eigen_convolutions() -> None:
    """Append `EIGEN_CONVOLUTIONS` to `XLA_FLAGS` unless it already sets the YNNPACK fusion flag."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _ynn_fusion_type(flags) is None:
        os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
