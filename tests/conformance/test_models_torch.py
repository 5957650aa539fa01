"""jaxseg's image models against the same networks written independently in PyTorch: with the
same weights, the same outputs (training mode with batch statistics, and evaluation mode)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import FCN, FCOSDetector, UNet
from tests.conformance.references import torch as import_torch
from tests.conformance.torch_models import torch_fcn, torch_fcos, torch_unet


def copy_conv(torch, ours: nnx.Conv, theirs) -> None:
    """An `nnx.Conv` into a torch `Conv2d` (HWIO -> OIHW)."""
    theirs.weight.copy_(torch.from_numpy(np.asarray(ours.kernel[...]).transpose(3, 2, 0, 1).copy()))
    assert (ours.bias is None) == (theirs.bias is None)
    if theirs.bias is not None:
        theirs.bias.copy_(torch.from_numpy(np.array(ours.bias[...])))


def copy_norm(torch, ours, theirs) -> None:
    """`nnx.BatchNorm` (affine parameters and running statistics) or `nnx.GroupNorm`."""
    pairs = [("weight", ours.scale), ("bias", ours.bias)]
    if isinstance(ours, nnx.BatchNorm):
        pairs += [("running_mean", ours.mean), ("running_var", ours.var)]
    for name, value in pairs:
        getattr(theirs, name).copy_(torch.from_numpy(np.array(value[...])))


def copy_unet(torch, model: UNet, reference) -> None:
    def block(ours, theirs):
        copy_conv(torch, ours.conv1, theirs[0])
        copy_norm(torch, ours.norm1, theirs[1])
        copy_conv(torch, ours.conv2, theirs[3])
        copy_norm(torch, ours.norm2, theirs[4])

    for ours, theirs in zip(model.encoder, reference.encoder):
        block(ours, theirs)
    block(model.bottleneck, reference.bottleneck)
    for ours, theirs in zip(model.up, reference.up):
        copy_conv(torch, ours, theirs)
    for ours, theirs in zip(model.decoder, reference.decoder):
        block(ours, theirs)
    copy_conv(torch, model.head, reference.head)


def perturb_norms(model: nnx.Module) -> None:
    """Non-trivial norm statistics, affine parameters and biases, so evaluation mode tests them."""
    for i, (path, variable) in enumerate(nnx.iter_graph(model)):
        if isinstance(variable, (nnx.BatchStat, nnx.Param)) and path[-1] in ("mean", "var", "scale", "bias"):
            shift = 1.0 if path[-1] in ("var", "scale") else 0.0
            variable[...] = shift + 0.5 * jax.random.uniform(jax.random.key(i), variable.shape)


def compare(torch, model, reference, images, to_numpy) -> None:
    """Our outputs against the torch network's, float64 on the torch side, in both modes."""
    reference = reference.double()
    inputs = torch.from_numpy(np.asarray(images, np.float64).transpose(0, 3, 1, 2).copy())
    for train in (False, True):
        reference.train(train)
        with torch.no_grad():
            expected = to_numpy(reference(inputs))
        ours = nnx.clone(model)(images, train=train)
        for name in expected:
            got = np.asarray(ours[name] if isinstance(ours, dict) else ours)
            scale = float(np.abs(expected[name]).max())
            np.testing.assert_allclose(
                got, expected[name], rtol=2e-4, atol=2e-4 * scale, err_msg=f"{name}, train={train}"
            )


def nchw_to_nhwc(tensor):
    return {"logits": tensor.numpy().transpose(0, 2, 3, 1)}


@pytest.mark.parametrize("depth, size", [(2, (16, 24)), (3, (32, 32))])
def test_unet_logits_match_the_torch_network(depth, size):
    torch = import_torch()
    model = UNet(4, in_channels=3, depth=depth, base_width=8, rngs=nnx.Rngs(0))
    perturb_norms(model)
    reference = torch_unet(torch, depth, 8, 4, 3)
    with torch.no_grad():
        copy_unet(torch, model, reference)
    compare(torch, model, reference, jax.random.normal(jax.random.key(1), (2, *size, 3)), nchw_to_nhwc)


@pytest.mark.parametrize("stages, norm", [(2, "batch"), (3, "group")])
def test_fcn_logits_match_the_torch_network(stages, norm):
    torch = import_torch()
    model = FCN(5, in_channels=4, stages=stages, base_width=8, norm=norm, rngs=nnx.Rngs(0))
    perturb_norms(model)
    reference = torch_fcn(torch, stages, 8, 5, 4, norm)
    with torch.no_grad():
        for ours, theirs in zip(model.convs, reference.convs):
            copy_conv(torch, ours, theirs)
        for ours, theirs in zip(model.norms, reference.norms):
            copy_norm(torch, ours, theirs)
        copy_conv(torch, model.score_last, reference.score_last)
        copy_conv(torch, model.score_previous, reference.score_previous)
    compare(torch, model, reference, jax.random.normal(jax.random.key(2), (2, 16, 24, 4)), nchw_to_nhwc)


@pytest.mark.parametrize("output_stride, fpn", [(4, True), (8, False)])
def test_fcos_outputs_match_the_torch_network(output_stride, fpn):
    torch = import_torch()
    shape = dict(widths=(8, 16, 32), output_stride=output_stride, fpn=fpn, fpn_width=16, head_width=16, head_convs=2)
    model = FCOSDetector(3, rngs=nnx.Rngs(0), **shape)
    perturb_norms(model)
    reference = torch_fcos(torch, classes=3, **shape)

    def block(ours, theirs):
        copy_conv(torch, ours.conv, theirs.conv)
        copy_norm(torch, ours.norm, theirs.norm)

    with torch.no_grad():
        for ours, theirs in zip(model.stages, reference.stages):
            block(ours[0], theirs[0])
            block(ours[1], theirs[1])
        for ours, theirs in zip(model.laterals, reference.laterals):
            copy_conv(torch, ours, theirs)
        block(model.smooth, reference.smooth)
        for tower in ("class_tower", "box_tower"):
            for ours, theirs in zip(getattr(model, tower), getattr(reference, tower)):
                block(ours, theirs)
        for head in ("class_out", "box_out", "centerness_out"):
            copy_conv(torch, getattr(model, head), getattr(reference, head))
    images = jax.random.normal(jax.random.key(3), (2, 32, 48, 3))
    compare(torch, model, reference, images, lambda out: {k: v.numpy() for k, v in out.items()})
