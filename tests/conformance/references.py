"""Loaders for the reference libraries the conformance tests compare against.

smp and torchvision cannot be imported whole beside the CPU torch wheel used here (smp
imports torchvision, whose compiled ops need a matching torch build). Their loss modules
are plain torch, so the parent packages are replaced by bare modules pointing at the
installed folders and only the loss modules are imported.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import numpy as np
import pytest


def _bare_package(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip(f"{name} is not installed")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = module.__path__
    sys.modules[name] = module


def torch():
    return pytest.importorskip("torch")


def smp_losses():
    """`segmentation_models_pytorch.losses`, pinned to the 0.5 release the losses follow."""
    torch()
    _bare_package("segmentation_models_pytorch")
    from importlib.metadata import version

    if not version("segmentation-models-pytorch").startswith("0.5."):
        pytest.skip("conformance targets segmentation-models-pytorch 0.5.x")
    return importlib.import_module("segmentation_models_pytorch.losses")


def torchvision_ops(name: str):
    """A module of `torchvision.ops` (e.g. "focal_loss") without torchvision's compiled ops."""
    torch()
    _bare_package("torchvision")
    _bare_package("torchvision.ops")
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
