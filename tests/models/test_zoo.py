"""`jaxseg.models.create` and the checkpoint map, without torch: shapes, options, errors, the
state-dict round trip, first-convolution adaptation and the offline hub error. Logits against
smp itself are in tests/conformance/test_zoo_smp.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import weights, zoo
from jaxseg.models.encoders.resnet import ResNetEncoder

IMAGES = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))


@pytest.fixture(scope="module")
def unet18():
    return zoo.create("unet", encoder="resnet18", num_classes=4, encoder_depth=3, decoder_channels=(16, 8, 8))


def test_unet_predicts_logits_per_pixel_at_any_size(unet18):
    assert unet18(IMAGES).shape == (2, 64, 96, 4)
    # smp 0.6 Unet upsamples to each skip's size, so sizes need not divide by 32.
    assert unet18(jnp.ones((1, 40, 72, 3))).shape == (1, 40, 72, 4)


@pytest.mark.slow  # also compared with smp's encoders in tests/conformance/test_zoo_smp.py
def test_resnet_features_have_smp_strides_and_channels():
    for name, depth, output_stride, expected in [
        ("resnet50", 5, 32, [(64, 96, 3), (32, 48, 64), (16, 24, 256), (8, 12, 512), (4, 6, 1024), (2, 3, 2048)]),
        ("resnet18", 3, 32, [(64, 96, 3), (32, 48, 64), (16, 24, 64), (8, 12, 128)]),
        ("resnet18", 5, 8, [(64, 96, 3), (32, 48, 64), (16, 24, 64), (8, 12, 128), (8, 12, 256), (8, 12, 512)]),
    ]:
        encoder = ResNetEncoder(name, depth=depth, output_stride=output_stride, rngs=nnx.Rngs(0))
        assert [f.shape[1:] for f in encoder(IMAGES)] == expected, (name, depth, output_stride)
        assert encoder.out_channels == tuple(c for _, _, c in expected)


def test_state_dict_round_trip_gives_the_same_model(unet18, tmp_path):
    state = weights.state_dict(unet18)
    assert "encoder.layer4.1.bn2.running_var" in state and "segmentation_head.0.weight" in state
    assert state["encoder.conv1.weight"].shape == (64, 3, 7, 7)  # torch's OIHW
    path = tmp_path / "unet.safetensors"
    weights.write_state_dict(state, path)
    loaded = zoo.create(
        "unet",
        encoder="resnet18",
        num_classes=4,
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        weights=path,
        rngs=nnx.Rngs(7),
    )
    np.testing.assert_array_equal(loaded(IMAGES), unet18(IMAGES))


@pytest.mark.slow  # also compared with smp in tests/conformance/test_zoo_smp.py
def test_aux_head_and_attention_options():
    model = zoo.create(
        "unet",
        encoder="resnet18",
        num_classes=2,
        encoder_depth=3,
        decoder_channels=(32, 16, 16),
        decoder_attention_type="scse",
        aux_params={"classes": 5, "pooling": "max", "dropout": 0.0},
    )
    masks, labels = model(IMAGES)
    assert masks.shape == (2, 64, 96, 2) and labels.shape == (2, 5)
    assert "decoder.blocks.0.attention1.attention.cSE.1.weight" in weights.state_dict(model)


def test_encoder_weights_adapt_the_first_convolution(unet18, tmp_path):
    state = weights.state_dict(unet18.encoder)  # every stage is built, whatever the depth
    state["fc.weight"], state["fc.bias"] = np.zeros((1000, 512), np.float32), np.zeros(1000, np.float32)
    path = tmp_path / "resnet18.safetensors"
    weights.write_state_dict(state, path)
    model = zoo.create(
        "unet",
        encoder="resnet18",
        num_classes=2,
        in_channels=5,
        encoder_weights=path,
        encoder_depth=1,
        decoder_channels=(8,),
        rngs=nnx.Rngs(9),
    )
    kernel = np.asarray(model.encoder.conv1.kernel[...]).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(kernel, weights.adapt_first_conv(state["conv1.weight"], 5), rtol=1e-6)
    np.testing.assert_array_equal(model.encoder.layer3[0].bn1.mean[...], state["layer3.0.bn1.running_mean"])
    rgb = state["conv1.weight"]
    np.testing.assert_allclose(weights.adapt_first_conv(rgb, 1), rgb.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(weights.adapt_first_conv(rgb, 5)[:, 3], rgb[:, 0] * 3 / 5, rtol=1e-6)


def test_weights_that_do_not_fit_name_the_keys(unet18, tmp_path):
    state = weights.state_dict(unet18)
    state["decoder.blocks.9.conv1.0.weight"] = np.zeros((1,), np.float32)
    del state["encoder.bn1.weight"]
    state["segmentation_head.0.weight"] = np.zeros((5, 8, 3, 3), np.float32)
    with pytest.raises(ValueError) as error:
        weights.load_state_dict(unet18, state)
    message = str(error.value)
    assert "missing keys: encoder.bn1.weight" in message
    assert "unexpected keys: decoder.blocks.9.conv1.0.weight" in message
    assert "segmentation_head.0.weight: file (5, 8, 3, 3), model (4, 8, 3, 3)" in message
    assert "unexpected keys: decoder.blocks.9.conv1.0.weight" in message and message.count("segmentation_head") == 1


def test_bad_names_and_options_are_errors():
    with pytest.raises(ValueError, match="unknown architecture 'unetx'"):
        zoo.create("unetx", encoder="resnet18", num_classes=2)
    with pytest.raises(ValueError, match="unknown encoder 'resnet19'"):
        zoo.create("unet", encoder="resnet19", num_classes=2)
    with pytest.raises(ValueError, match="depth should be in range"):
        zoo.create("unet", encoder="resnet18", num_classes=2, encoder_depth=6, decoder_channels=(8,) * 6)
    with pytest.raises(ValueError, match="Model depth is 5, but you provide `decoder_channels` for 3 blocks"):
        zoo.create("unet", encoder="resnet18", num_classes=2, decoder_channels=(8, 8, 8))
    with pytest.raises(TypeError, match="unet: .*decoder_chanels"):
        zoo.create("unet", encoder="resnet18", num_classes=2, decoder_chanels=(8,))
    with pytest.raises(FileNotFoundError, match="no-such.safetensors"):
        zoo.create("unet", encoder="resnet18", num_classes=2, weights="no-such.safetensors")


def test_a_hub_id_offline_names_the_id_and_the_cache(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match=r"smp-hub/resnet18\.imagenet.*not in the cache"):
        zoo.create("unet", encoder="resnet18", num_classes=2, encoder_weights="smp-hub/resnet18.imagenet")


@pytest.mark.slow  # gradients against smp's: tests/conformance; a zoo model trains in tests/train/test_pretrained.py
def test_the_model_trains_under_jit_and_grad(unet18):
    graphdef, params, rest = nnx.split(unet18, nnx.Param, ...)

    @jax.jit
    def loss(params, rest, images):
        model = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.mean(jnp.square(model(images, train=True)))

    grads = jax.grad(loss)(params, rest, IMAGES)
    norms = {jax.tree_util.keystr(path): float(jnp.linalg.norm(g)) for path, g in jax.tree.leaves_with_path(grads)}
    assert all(np.isfinite(list(norms.values())))
    # At encoder depth 3 the encoder keeps its deeper stages, unused, as smp's does (their
    # gradients are zero); everything else gets a gradient.
    unused = {key for key in norms if "'layer3'" in key or "'layer4'" in key}
    assert unused and all(norms[key] == 0 for key in unused)
    assert all(norm > 0 for key, norm in norms.items() if key not in unused)
