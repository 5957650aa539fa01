"""The Unet++, MAnet and UPerNet builders refuse what smp refuses, without torch and without
building an encoder (a stub gives the channels of a ResNet-18). Their outputs against smp are
in tests/conformance/test_zoo_unetplusplus_manet_upernet.py."""

from __future__ import annotations

import types

import pytest
from flax import nnx
from jax import lax

from jaxseg.models import zoo
from jaxseg.models.decoders.heads import Parts
from jaxseg.models.decoders.manet import manet
from jaxseg.models.decoders.unetplusplus import block_channels, deprecated_use_batchnorm, unetplusplus
from jaxseg.models.decoders.upernet import upernet

RESNET18_CHANNELS = (3, 64, 64, 128, 256, 512)


def resnet18_stub(depth: int = 5, output_stride: int = 32):
    """What a builder reads of its encoder: `out_channels` and `output_stride`."""
    return types.SimpleNamespace(
        out_channels=RESNET18_CHANNELS[: depth + 1], output_stride=min(output_stride, 2**depth)
    )


def build_abstract(builder, **options) -> Parts:
    """`builder`'s parts on the stub encoder, the modules as shapes only (no initialisation runs)."""
    conv = dict(dtype=None, conv_general_dilated=lax.conv_general_dilated)
    divisible_by = []

    def modules():
        parts = builder(resnet18_stub, 1, conv=dict(conv, rngs=nnx.Rngs(0)), encoder_name="resnet18", **options)
        divisible_by.append(parts.divisible_by)
        return parts.decoder, parts.segmentation_head

    decoder, head = nnx.eval_shape(modules)
    return Parts(resnet18_stub(), decoder, head, divisible_by[0])


@pytest.mark.parametrize("builder", [unetplusplus, manet])
def test_decoder_channels_must_match_the_depth(builder):
    with pytest.raises(ValueError, match=r"Model depth is 4, but you provide `decoder_channels` for 5 blocks\."):
        build_abstract(builder, encoder_depth=4)


def test_unetplusplus_refuses_mit_encoders_as_smp():
    with pytest.raises(ValueError, match="UnetPlusPlus is not support encoder_name=mit_b2"):
        zoo.create("unetplusplus", encoder="mit_b2", num_classes=1)


def test_upernet_needs_three_encoder_stages():
    with pytest.raises(ValueError, match="Encoder depth for UPerNet decoder cannot be less than 3, got 2."):
        build_abstract(upernet, encoder_depth=2)


@pytest.mark.parametrize("builder", [unetplusplus, manet])
def test_unknown_interpolation_names_the_option(builder):
    with pytest.raises(ValueError, match="decoder_interpolation must be one of .*got 'trilinear'"):
        build_abstract(builder, decoder_interpolation="trilinear")


@pytest.mark.parametrize("builder", [unetplusplus, manet, upernet])
@pytest.mark.parametrize("norm", ["layernorm", {"type": "instancenorm"}])
def test_norms_jaxseg_cannot_build_are_refused_by_name(builder, norm):
    with pytest.raises(ValueError, match="use_norm"):
        build_abstract(builder, decoder_use_norm=norm)


def test_unknown_norm_is_refused_with_smps_message():
    with pytest.raises(ValueError, match="Unrecognized normalization type string provided: groupnorm"):
        build_abstract(manet, decoder_use_norm="groupnorm")


class EncoderReached(Exception):
    """Raised by a stub encoder: the builder got past its option checks."""


def stop_at_encoder(**_):
    raise EncoderReached


@pytest.mark.parametrize("builder", [unetplusplus, manet])
def test_deprecated_decoder_use_batchnorm_warns(builder):
    with pytest.warns(DeprecationWarning, match="decoder_use_batchnorm is deprecated"), pytest.raises(EncoderReached):
        builder(stop_at_encoder, 1, conv={}, encoder_name="resnet18", decoder_use_batchnorm=False)


def test_deprecated_decoder_use_batchnorm_replaces_decoder_use_norm():
    with pytest.warns(DeprecationWarning):
        assert deprecated_use_batchnorm("batchnorm", False) is False
    assert deprecated_use_batchnorm("batchnorm", None) == "batchnorm"


def test_upernet_takes_no_decoder_use_batchnorm():
    # smp hands unknown options to the encoder, whose constructor refuses them.
    with pytest.raises(TypeError, match="decoder_use_batchnorm"):
        zoo.create("upernet", encoder="resnet18", num_classes=1, decoder_use_batchnorm=True)


def test_unetplusplus_blocks_are_smps_nested_grid():
    channels = block_channels(RESNET18_CHANNELS, (256, 128, 64, 32, 16))
    assert set(channels) == {f"x_{d}_{layer}" for layer in range(4) for d in range(layer + 1)} | {"x_0_4"}
    # (in, skip, out): x_0_l upsamples the Unet path; x_d_l (d > 0) decodes the encoder skip
    # of level l - 1 with the d ... l nested outputs concatenated.
    assert channels["x_0_0"] == (512, 256, 256)
    assert channels["x_0_3"] == (64, 64 * 4, 32)
    assert channels["x_2_3"] == (64, 64 * 2, 64)
    assert channels["x_1_2"] == (128, 64 * 2, 64)
    assert channels["x_0_4"] == (32, 0, 16)


@pytest.mark.parametrize("builder, channels", [(unetplusplus, (8, 8, 8)), (manet, (8, 8, 8)), (upernet, 8)])
def test_inputs_must_divide_by_the_encoders_output_stride(builder, channels):
    # smp's requires_divisible_input_shape (True for all three): the stride of the deepest stage used.
    assert build_abstract(builder, encoder_depth=3, decoder_channels=channels).divisible_by == 8
