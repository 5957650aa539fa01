"""FPN, Linknet and PAN against segmentation_models_pytorch 0.6: smp's random-weight models loaded
through `zoo.create(weights=...)` give smp's float64 logits (evaluation) and input gradients
(training) through strict loading, so with smp's keys, bad options fail as in smp; and the layers these
decoders add (torch's interpolation modes, the transposed convolution) equal torch's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import zoo
from jaxseg.models.interpolation import INTERPOLATIONS, interpolate
from jaxseg.models.layers import ConvTranspose2d
from tests.conformance import references
from tests.conformance.test_zoo_smp import check_against_smp, smp_model

NO_DROPOUT = {"decoder_dropout": 0.0}  # FPN's Dropout2d draws other masks than torch's in training
AUX = {"aux_params": {"classes": 4, "dropout": 0.5}}  # the aux labels are compared in evaluation only

# (arch, encoder, in_channels, options, size, train)
CASES = [
    ("fpn", "resnet34", 3, {}, (64, 96), False),  # defaults: dropout 0.2, so evaluation only
    (
        "fpn",
        "resnet18",
        1,
        {
            **NO_DROPOUT,
            **AUX,
            "decoder_merge_policy": "cat",
            "decoder_pyramid_channels": 48,
            "decoder_segmentation_channels": 32,
            "decoder_interpolation": "bilinear",
        },
        (64, 64),
        True,
    ),
    # depth 4 merges at stride 2, depth 3 at the input's own resolution: `upsampling` restores the size.
    (
        "fpn",
        "resnet50",
        3,
        {**NO_DROPOUT, "encoder_depth": 4, "upsampling": 2, "decoder_interpolation": "bicubic"},
        (64, 64),
        False,
    ),
    (
        "fpn",
        "resnet18",
        4,
        {"encoder_depth": 3, "upsampling": 1, "decoder_interpolation": "nearest-exact", "decoder_dropout": 0.5},
        (32, 48),
        False,
    ),
    (
        "fpn",
        "resnet18",
        3,
        {**NO_DROPOUT, "decoder_interpolation": "area", "decoder_segmentation_channels": 64},
        (64, 64),
        False,
    ),
    ("linknet", "resnet34", 3, {}, (64, 96), True),
    ("linknet", "resnet18", 1, {"decoder_use_norm": False, **AUX}, (64, 64), True),
    ("linknet", "resnext50_32x4d", 4, {"encoder_depth": 3}, (32, 48), False),
    ("linknet", "resnet18", 3, {"encoder_depth": 4, "decoder_use_norm": "identity"}, (48, 64), False),
    ("pan", "resnet34", 3, {}, (128, 128), True),  # output stride 16: FPA pools the 8x8 map to 1x1
    (
        "pan",
        "resnet18",
        3,
        {"encoder_output_stride": 32, "decoder_channels": 16, "decoder_interpolation": "nearest"},
        (256, 256),
        False,
    ),
    ("pan", "resnet18", 1, {"encoder_depth": 4, "decoder_interpolation": "bicubic", **AUX}, (128, 128), True),
    (
        "pan",
        "resnet50",
        4,
        {"encoder_depth": 3, "decoder_channels": 16, "decoder_interpolation": "area"},
        (64, 64),
        False,
    ),
    # upsampling 2: logits at half the input size, so no gradient comparison (its weights are input-sized).
    ("pan", "resnet18", 3, {"decoder_interpolation": "nearest-exact", "upsampling": 2}, (128, 128), False),
]


def case_id(case):
    arch, encoder, in_channels, options, _, _ = case
    return "-".join([arch, encoder, str(in_channels), *(f"{k}={v}" for k, v in options.items() if k != "aux_params")])


@pytest.mark.parametrize("arch, encoder, in_channels, options, size, train", CASES, ids=[case_id(c) for c in CASES])
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, size, train, tmp_path):
    check_against_smp(arch, encoder, in_channels, options, tmp_path, size=size, train=train)


ERRORS = [
    ("fpn", {"encoder_depth": 2}, "Encoder depth for FPN decoder cannot be less than 3, got 2."),
    ("fpn", {"decoder_merge_policy": "max"}, "`merge_policy` must be one of: ['add', 'cat'], got max"),
    ("fpn", {"decoder_segmentation_channels": 48}, "num_channels (48) must be divisible by num_groups (32)"),
    ("fpn", {"decoder_dropout": 1.5}, "dropout probability has to be between 0 and 1, but got 1.5"),
    ("pan", {"encoder_output_stride": 8}, "PAN support output stride 16 or 32, got 8"),
    ("pan", {"encoder_depth": 2}, "Encoder depth for PAN decoder cannot be less than 3, got 2."),
    ("linknet", {"decoder_use_norm": "groupnorm"}, "Unrecognized normalization type string provided: groupnorm"),
]


@pytest.mark.parametrize("arch, options, message", ERRORS, ids=[f"{a}-{next(iter(o))}" for a, o, _ in ERRORS])
def test_bad_options_fail_as_in_smp(arch, options, message):
    with pytest.raises(ValueError) as smp_error:
        smp_model(arch, "resnet18", 3, options)
    with pytest.raises(ValueError) as our_error:
        zoo.create(arch, encoder="resnet18", num_classes=3, **options)
    assert message in str(smp_error.value)
    assert message in str(our_error.value)


ALIGNABLE = ("bilinear", "bicubic")  # the modes torch takes align_corners for


@pytest.mark.parametrize("mode, align_corners", [(m, False) for m in INTERPOLATIONS] + [(m, True) for m in ALIGNABLE])
def test_interpolation_modes_equal_torchs(mode, align_corners):
    torch = references.torch()
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 7, 3)), np.float64)
    for size in [(10, 14), (5, 7), (11, 9), (3, 4)]:  # 2x, identity, uneven up- and downsampling
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            size=size,
            mode=mode,
            align_corners=align_corners if mode in ALIGNABLE else None,
        )
        with jax.enable_x64(True):
            ours = interpolate(jnp.asarray(images), size, mode, align_corners=align_corners)
        np.testing.assert_allclose(ours, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12, err_msg=size)


@pytest.mark.parametrize(
    "kernel_size, stride, padding, bias", [(4, 2, 1, True), (3, 1, 1, False), (2, 2, 0, True), (3, 2, 0, True)]
)
def test_conv_transpose_equals_torchs(kernel_size, stride, padding, bias):
    torch = references.torch()
    torch.manual_seed(0)
    reference = torch.nn.ConvTranspose2d(6, 5, kernel_size, stride=stride, padding=padding, bias=bias).double()
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 9, 6)), np.float64)
    inputs = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    expected = reference(inputs)
    cotangent = np.asarray(jax.random.normal(jax.random.key(1), expected.shape), np.float64)
    (expected * torch.from_numpy(cotangent)).sum().backward()
    with jax.enable_x64(True):
        layer = ConvTranspose2d(6, 5, kernel_size, stride=stride, padding=padding, bias=bias, rngs=nnx.Rngs(0))
        layer.weight[...] = jnp.asarray(reference.weight.detach().numpy())
        if bias:
            layer.bias[...] = jnp.asarray(reference.bias.detach().numpy())
        ours = layer(jnp.asarray(images))
        grad = jax.grad(lambda x: jnp.sum(layer(x) * cotangent.transpose(0, 2, 3, 1)))(jnp.asarray(images))
    np.testing.assert_allclose(ours, expected.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, inputs.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
