"""Loaders for the reference libraries the conformance tests compare against.

- torchvision: the index's wheel is a CUDA build whose compiled ops do not load beside the CPU
  torch wheel; only two fake-op registrations (`torchvision::nms`, `qnms`) then fail at import.
  Defining those two schemas first makes the pure-Python torchvision (its models, the box
  losses) import unchanged. The compiled ops (nms, roi_align) stay unavailable.
- smp: the models are smp 0.6 (`segmentation_models_pytorch`, installed without its
  dependencies); the losses follow smp 0.5, installed beside it in
  `.venv/references/smp-0.5` and imported under another package name (its modules import
  each other relatively).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

SMP_05 = Path(sys.prefix) / "references" / "smp-0.5" / "segmentation_models_pytorch"
_TORCHVISION_OPS = None  # the Library object must stay alive: dropping it removes the schemas


def torch():
    return pytest.importorskip("torch")


def torchvision():
    """torchvision, with its fake-op registrations satisfied when its compiled ops do not load."""
    global _TORCHVISION_OPS
    torch_module = torch()
    try:
        return importlib.import_module("torchvision")
    except ImportError as error:
        pytest.skip(f"torchvision is not installed: {error}")
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import registered nothing with torch
    if _TORCHVISION_OPS is None:
        _TORCHVISION_OPS = torch_module.library.Library("torchvision", "DEF")
        _TORCHVISION_OPS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("torchvision")


def smp():
    """segmentation_models_pytorch 0.6 (its models)."""
    torchvision()
    pytest.importorskip("timm")
    module = pytest.importorskip("segmentation_models_pytorch")
    if not module.__version__.startswith("0.6."):
        pytest.skip(f"model conformance targets segmentation-models-pytorch 0.6.x; found {module.__version__}")
    return module


def smp_losses():
    """The losses of segmentation_models_pytorch 0.5, the release jaxseg's losses follow."""
    torch()
    if not SMP_05.is_dir():
        pytest.skip(f"smp 0.5 is not installed in {SMP_05.parent} (make conformance installs it)")
    name = "smp05_reference"
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(SMP_05)]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__spec__.submodule_search_locations = module.__path__
        sys.modules[name] = module
    return importlib.import_module(f"{name}.losses")


def torchvision_ops(name: str):
    """A module of `torchvision.ops` (e.g. "focal_loss")."""
    torchvision()
    return importlib.import_module(f"torchvision.ops.{name}")


def monai_losses():
    torch()
    return pytest.importorskip("monai.losses")


def to_torch_nchw(array, requires_grad=False):
    """Channels-last NumPy -> channels-first float64-free torch tensor (a leaf if requires_grad)."""
    t = torch().from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(array), -1, 1)))
    return t.requires_grad_(requires_grad)


def from_torch_nchw(tensor):
    return np.moveaxis(tensor.detach().numpy(), 1, -1)
