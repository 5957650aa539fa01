"""Which library runs XLA's CPU convolutions, and the choice jaxseg's entry points make.

This jaxlib sends CPU convolutions to YNNPACK. With the XLA flag
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` they run as XLA's Eigen
convolutions instead (with oneDNN's GEMM), which measured faster on every layer of the
benchmark U-Net here (batch 16, forward + input gradient + kernel gradient, 10 layer shapes:
YNNPACK with `jaxseg.models.conv`'s GEMM kernel gradients 1143 ms, Eigen with XLA's own
kernel gradients 849 ms; README, Train step). YNNPACK keeps every other fusion it takes
(reductions, elementwise), which pay: turning all of them off made the step slower.

XLA reads `XLA_FLAGS` once, when the first backend starts, so `prefer_eigen_convolutions` must
run before any JAX computation; `train.py`, `jaxseg.evaluate`, `jaxseg.predict`,
`benchmarks/train_step.py` and `benchmarks/ablation.py` call it first thing. A user's own
`xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` wins. `jaxseg.models.conv` asks
`eigen_convolutions` which kernel-gradient route fits the library in use.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"--{YNN_FUSION_FLAG}=-individual_convolution"


def _ynn_fusion_values(flags: str) -> list[str]:
    """Every value `flags` give the YNNPACK fusion flag, in order."""
    return re.findall(rf"--{YNN_FUSION_FLAG}=(\S*)", flags)


def _canonical(item: str) -> str:
    name = item.strip().upper()
    return name[len("LIBRARY_FUSION_TYPE_"):] if name.startswith("LIBRARY_FUSION_TYPE_") else name


def eigen_convolutions(flags: str | None = None) -> bool:
    """Whether `flags` (default: the `XLA_FLAGS` environment variable) take single convolutions
    away from YNNPACK, read as XLA reads them: each occurrence of the flag in order, names in
    any case, with or without the `LIBRARY_FUSION_TYPE_` prefix; a list of plain names
    replaces the set of fusion types, `+name` / `-name` add to or remove from it, and
    YNNPACK's default set includes single convolutions."""
    on_ynn = True
    for value in _ynn_fusion_values(os.environ.get("XLA_FLAGS", "") if flags is None else flags):
        items = [item.strip() for item in value.split(",")] if value else []
        if not any(item.startswith(("+", "-")) for item in items):
            on_ynn = False  # a plain (or empty) list replaces the set; the loop puts back what it names
        for item in items:
            sign, name = (item[0], item[1:]) if item[:1] in ("+", "-") else ("+", item)
            if _canonical(name) == "INDIVIDUAL_CONVOLUTION":
                on_ynn = sign == "+"
    return not on_ynn


def prefer_eigen_convolutions() -> None:
    """Append `EIGEN_CONVOLUTIONS` to `XLA_FLAGS` unless it already sets the YNNPACK fusion flag.

    Warns if a JAX backend already runs: XLA has read its flags then, and `jaxseg.models.conv`
    would choose its routes for a library that is not in use (same numbers, slower)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _ynn_fusion_values(flags):
        return
    os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    if _backends_started():
        warnings.warn("prefer_eigen_convolutions() ran after a JAX backend started: XLA keeps its "
                      "convolution library, so call it before the first JAX computation", stacklevel=2)


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # no public equivalent

    return xla_bridge.backends_are_initialized()
