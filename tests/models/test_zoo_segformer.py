"""The Mix Transformer encoders and Segformer without torch: errors, channels, dilation, stochastic
depth and the torch-exact bilinear resize. Against smp itself: tests/conformance/test_zoo_segformer.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import zoo
from jaxseg.models.decoders.segformer import SegformerDecoder, without_placeholder
from jaxseg.models.encoders.mix_transformer import (
    MIT_ENCODERS,
    Block,
    MixVisionTransformerEncoder,
    block_drop_rates,
    drop_path,
    stage_dilations,
)
from jaxseg.models.interpolation import interpolate

CONV = dict(dtype=jnp.float32, conv_general_dilated=jax.lax.conv_general_dilated)


def abstract_encoder(name="mit_b0", **options):
    """The encoder's structure without initialising it (traced, not run)."""
    return nnx.eval_shape(lambda: MixVisionTransformerEncoder(name, rngs=nnx.Rngs(0), **options))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(name="mit_b9"), "unknown Mix Transformer encoder 'mit_b9'"),
        (dict(depth=0), "MixVisionTransformerEncoder depth should be in range [1, 5], got 0"),
        (dict(depth=6), "MixVisionTransformerEncoder depth should be in range [1, 5], got 6"),
        (dict(output_stride=4), "Output stride should be 16 or 8, got 4."),
    ],
)
def test_encoder_refuses_what_smp_refuses(options, message):
    options = dict(dict(name="mit_b0"), **options)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        MixVisionTransformerEncoder(options.pop("name"), rngs=nnx.Rngs(0), **options)


def test_segformer_decoder_refuses_depth_below_3():
    with pytest.raises(ValueError, match="Encoder depth for Segformer decoder cannot be less than 3, got 2."):
        SegformerDecoder((3, 0, 32), encoder_depth=2, rngs=nnx.Rngs(0), **CONV)


def test_out_channels_have_smps_placeholder_and_follow_in_channels_and_depth():
    encoder = abstract_encoder("mit_b0", in_channels=4, depth=3)
    assert encoder.out_channels == (4, 0, 32, 64)
    assert encoder.output_stride == 8  # smp: min(output_stride, 2 ** depth)


def test_dilation_follows_smps_make_dilated_stages():
    assert stage_dilations(32) == (1, 1, 1, 1)
    assert stage_dilations(16) == (1, 1, 1, 2)
    assert stage_dilations(8) == (1, 1, 2, 4)


def test_stochastic_depth_rates_rise_linearly_over_the_blocks():
    np.testing.assert_allclose(block_drop_rates(MIT_ENCODERS["mit_b0"]), np.linspace(0.0, 0.1, 8))
    assert block_drop_rates(MIT_ENCODERS["mit_b2"], 0.0) == [0.0] * 16


def test_drop_path_drops_whole_samples_and_rescales_the_kept():
    x = jnp.ones((64, 5, 3))
    dropped = np.asarray(drop_path(x, 0.25, jax.random.key(0)))
    per_sample = dropped.reshape(64, -1)
    kept = per_sample[:, 0] != 0
    np.testing.assert_allclose(per_sample[kept], 1 / 0.75, rtol=1e-6)
    assert np.all(per_sample[~kept] == 0)
    assert 0 < np.sum(~kept) < 64
    np.testing.assert_array_equal(drop_path(x, 0.25, None), x)  # no key: the identity (evaluation)


def test_block_at_drop_rate_one_with_a_key_is_the_identity():
    graphdef, state = nnx.split(Block(8, 2, 4, 1, drop_path=1.0, rngs=nnx.Rngs(0), **CONV))
    apply = jax.jit(lambda x, key: nnx.merge(graphdef, state)(x, key=key))  # one compilation, not one per op
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
    np.testing.assert_array_equal(apply(x, jax.random.key(2)), x)


def test_bilinear_resize_is_torchs_without_antialiasing():
    ramp = jnp.arange(8.0).reshape(1, 8, 1, 1) * jnp.ones((1, 1, 2, 1))
    down = interpolate(ramp, (4, 2), "bilinear")[0, :, 0, 0]
    np.testing.assert_allclose(down, [0.5, 2.5, 4.5, 6.5])  # the mean of each pair: two taps, not a wider filter
    up = interpolate(jnp.asarray([0.0, 1.0]).reshape(1, 2, 1, 1), (4, 1), "bilinear")[0, :, 0, 0]
    np.testing.assert_allclose(up, [0.0, 0.25, 0.75, 1.0])  # half-pixel, clamped at the borders


def test_placeholder_feature_is_skipped():
    features = [jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 4, 4, 0)), jnp.zeros((1, 2, 2, 5))]
    assert [f.shape[-1] for f in without_placeholder(features)] == [5]
    features[1] = jnp.zeros((1, 4, 4, 2))
    assert [f.shape[-1] for f in without_placeholder(features)] == [2, 5]


@pytest.mark.parametrize(
    "arch, options, message",
    [
        ("unetplusplus", {}, "UnetPlusPlus is not support encoder_name=mit_b0"),
        ("linknet", {}, "Encoder `mit_b0` is not supported for Linknet"),
        ("fpn", {"encoder_depth": 4}, "Encoder mit_b0 support only encoder_depth=5"),
    ],
)
def test_architectures_refuse_mit_encoders_as_smp_does(arch, options, message):
    with pytest.raises(ValueError, match=message):
        zoo.create(arch, encoder="mit_b0", num_classes=2, **options)
