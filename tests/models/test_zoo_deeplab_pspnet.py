"""The options smp's `DeepLabV3`, `DeepLabV3Plus` and `PSPNet` refuse, refused by `zoo.create`
before anything is built (fast, no torch). Logits and gradients against smp are in
tests/conformance/test_zoo_deeplab_pspnet.py."""

from __future__ import annotations

import re

import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from jaxseg.models import zoo


def create(arch, **options):
    return zoo.create(arch, encoder="resnet18", num_classes=2, **options)


@pytest.mark.parametrize("arch, name", [("deeplabv3", "DeeplabV3"), ("deeplabv3plus", "DeeplabV3Plus")])
@pytest.mark.parametrize("output_stride", [4, 32])
def test_deeplab_takes_output_stride_8_or_16(arch, name, output_stride):
    with pytest.raises(ValueError, match=re.escape(f"{name} support output stride 8 or 16, got {output_stride}.")):
        create(arch, encoder_output_stride=output_stride)


@pytest.mark.parametrize("depth", [1, 2])
def test_deeplabv3plus_needs_depth_3(depth):
    with pytest.raises(ValueError, match=f"DeepLabV3Plus decoder cannot be less than 3, got {depth}"):
        create("deeplabv3plus", encoder_depth=depth)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("rates", [(6, 12), (6, 12, 18, 24)])
def test_deeplab_takes_three_atrous_rates(arch, rates):
    with pytest.raises(ValueError, match=r"decoder_atrous_rates should be 3 dilation rates, got \("):
        create(arch, decoder_atrous_rates=rates)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "pspnet"])
def test_encoder_depth_beyond_5_is_the_encoders_error(arch):
    with pytest.raises(ValueError, match=r"depth should be in range \[1, 5\], got 6"):
        create(arch, encoder_depth=6)


def test_pspnet_norms_are_smps_and_jaxseg_builds_batchnorm_or_none():
    with pytest.raises(ValueError, match="Unrecognized normalization type string provided: groupnorm"):
        create("pspnet", decoder_use_norm="groupnorm")
    with pytest.raises(ValueError, match="use_norm='layernorm': jaxseg builds 'batchnorm' and 'identity'"):
        create("pspnet", decoder_use_norm="layernorm")


def test_pspnet_psp_use_batchnorm_is_deprecated_and_overrides_decoder_use_norm():
    with pytest.warns(DeprecationWarning, match="psp_use_batchnorm is deprecated"):
        with pytest.raises(ValueError, match="instancenorm"):
            create("pspnet", decoder_use_norm=True, psp_use_batchnorm="instancenorm")


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "pspnet"])
def test_unknown_options_name_the_architecture(arch):
    with pytest.raises(TypeError, match=f"{arch}: .*decoder_chanels"):
        create(arch, decoder_chanels=8)


@pytest.mark.slow  # builds a model (abstractly)
def test_pspnet_empty_aux_params_gives_no_auxiliary_head():
    model = nnx.eval_shape(
        lambda: zoo.build_model(
            "pspnet",
            encoder="resnet18",
            num_classes=2,
            in_channels=3,
            aux_params={},
            encoder_depth=1,  # the smallest model: the test is about the head
            psp_out_channels=8,
            dtype=jnp.float32,
            conv_general_dilated=lax.conv_general_dilated,
            rngs=nnx.Rngs(0),
        )
    )
    assert model.classification_head is None
