"""jaxseg's U-Net against the same network written independently in PyTorch: with the same
weights, the same logits (training mode with batch statistics, and evaluation mode)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import UNet
from tests.conformance.references import torch as import_torch


def torch_unet(torch, depth: int, base: int, classes: int, in_channels: int):
    nn = torch.nn

    class Block(nn.Sequential):
        def __init__(self, cin, cout):
            super().__init__(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

    class TorchUNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2**i for i in range(depth + 1)]
            self.encoder = nn.ModuleList(
                [Block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)]
            )
            self.bottleneck = Block(widths[depth - 1], widths[depth])
            self.up = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in reversed(range(depth))])
            self.decoder = nn.ModuleList([Block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for block in self.encoder:
                x = block(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
                x = up(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
                x = block(torch.cat([x, skip], 1))
            return self.head(x)

    return TorchUNet()


def copy_weights(torch, model: UNet, reference) -> None:
    """jaxseg's parameters and BatchNorm statistics into the torch network (HWIO -> OIHW)."""

    def conv(ours, theirs):
        theirs.weight.copy_(torch.from_numpy(np.asarray(ours.kernel[...]).transpose(3, 2, 0, 1).copy()))
        if theirs.bias is not None:
            theirs.bias.copy_(torch.from_numpy(np.array(ours.bias[...])))

    def norm(ours, theirs):
        for name, value in [
            ("weight", ours.scale),
            ("bias", ours.bias),
            ("running_mean", ours.mean),
            ("running_var", ours.var),
        ]:
            getattr(theirs, name).copy_(torch.from_numpy(np.array(value[...])))

    def block(ours, theirs):
        (
            conv(ours.conv1, theirs[0]),
            norm(ours.norm1, theirs[1]),
            conv(ours.conv2, theirs[3]),
            norm(ours.norm2, theirs[4]),
        )

    with torch.no_grad():
        for ours, theirs in zip(model.encoder, reference.encoder):
            block(ours, theirs)
        block(model.bottleneck, reference.bottleneck)
        for ours, theirs in zip(model.up, reference.up):
            conv(ours, theirs)
        for ours, theirs in zip(model.decoder, reference.decoder):
            block(ours, theirs)
        conv(model.head, reference.head)


@pytest.mark.parametrize("depth, size", [(2, (16, 24)), (3, (32, 32))])
def test_unet_logits_match_the_torch_network(depth, size):
    torch = import_torch()
    model = UNet(4, in_channels=3, depth=depth, base_width=8, rngs=nnx.Rngs(0))
    # Non-trivial BatchNorm statistics and affine parameters, so evaluation mode tests them.
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, (nnx.BatchStat, nnx.Param)) and path[-1] in ("mean", "var", "scale", "bias"):
            shift = 1.0 if path[-1] in ("var", "scale") else 0.0
            noise = jax.random.uniform(jax.random.key(len(path) + hash(path) % 997), variable.shape)
            variable[...] = shift + 0.5 * noise
    reference = torch_unet(torch, depth, 8, 4, 3).double()
    copy_weights(torch, model, reference)
    images = jax.random.normal(jax.random.key(1), (2, *size, 3))
    inputs = torch.from_numpy(np.asarray(images, np.float64).transpose(0, 3, 1, 2).copy())
    for train in (False, True):
        reference.train(train)
        with torch.no_grad():
            expected = reference(inputs).numpy().transpose(0, 2, 3, 1)
        ours = nnx.clone(model)(images, train=train)
        np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=2e-4 * float(np.abs(expected).max()))
