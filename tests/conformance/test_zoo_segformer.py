"""smp 0.6's Mix Transformer encoders and `Segformer` against jaxseg's: the encoder feature by
feature (random weights, LayerNorms and biases, float64; dilated and with a patched first
convolution), Segformer on mit_b0 and resnet18 and Unet on mit_b0 through `check_against_smp`
(eval logits and training-mode input gradients), the exported state dict loading into smp, and
the errors smp raises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import weights, zoo
from jaxseg.models.encoders import mix_transformer
from jaxseg.models.encoders.mix_transformer import MixVisionTransformerEncoder
from tests.conformance import references, test_zoo_smp
from tests.conformance.test_zoo_smp import check_against_smp, nchw


def randomize_mit(torch, encoder):
    """Random LayerNorm affine parameters and biases (SegFormer initialises them to 1 and 0), so the
    comparison sees each norm's scale and every bias."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in encoder.named_parameters():
            if name.endswith(".bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif isinstance(encoder.get_submodule(name.rsplit(".", 1)[0]), torch.nn.LayerNorm):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))


def without_drop_path(reference, model):
    """Stochastic depth off on both sides (smp's mit blocks and jaxseg's draw different masks in
    training mode)."""
    for module in reference.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    for _, block in nnx.iter_graph(model):
        if isinstance(block, mix_transformer.Block):
            block.drop_path = 0.0


def built_under_jit(make):
    """`make()`, its initializers compiled together (as `zoo.create` builds models): eagerly, each
    one compiles on its own."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(make())[1])())


def features_of(encoder, images):
    graphdef, state = nnx.split(encoder)
    return jax.jit(lambda x, s: nnx.merge(graphdef, s)(x, train=False))(images, state)


ENCODER_CASES = [("mit_b0", 32, 3), ("mit_b2", 32, 3), ("mit_b0", 8, 4)]


@pytest.mark.parametrize("name, output_stride, in_channels", ENCODER_CASES)
def test_mit_encoder_equals_smp(name, output_stride, in_channels, tmp_path):
    smp = references.smp()
    torch = references.torch()
    torch.manual_seed(0)
    reference = smp.encoders.get_encoder(name, weights=None, output_stride=output_stride)
    randomize_mit(torch, reference)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    state["head.weight"], state["head.bias"] = np.zeros((1000, state["norm4.weight"].shape[0])), np.zeros(1000)
    reference.set_in_channels(in_channels, pretrained=True)  # smp's patch of pretrained weights
    images = np.asarray(jax.random.normal(jax.random.key(2), (2, 64, 64, in_channels)), np.float64)
    with torch.no_grad():
        expected = reference.double().eval()(nchw(torch, images))
    with jax.enable_x64(True):
        encoder = built_under_jit(
            lambda: MixVisionTransformerEncoder(
                name, in_channels=in_channels, output_stride=output_stride, dtype=jnp.float64, rngs=nnx.Rngs(0)
            )
        )
        zoo.load_encoder_weights(encoder, state, in_channels)  # the ImageNet head ignored, the stem adapted
        ours = features_of(encoder, jnp.asarray(images))
    assert encoder.out_channels == tuple(reference.out_channels)
    assert encoder.output_stride == reference.output_stride
    assert len(ours) == len(expected)
    for level, (a, b) in enumerate(zip(ours, expected)):
        b = b.numpy().transpose(0, 2, 3, 1)
        assert a.shape == b.shape, f"feature {level}"
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max(initial=1.0), err_msg=f"feature {level}")


# (arch, encoder, in_channels, options, train: compare training-mode gradients too)
MODEL_CASES = [
    ("segformer", "mit_b0", 3, {}, True),
    (
        "segformer",
        "resnet18",
        1,
        {"decoder_segmentation_channels": 64, "aux_params": {"classes": 4, "dropout": 0.0}},
        True,
    ),
    ("segformer", "mit_b0", 3, {"encoder_depth": 4}, False),
    ("unet", "mit_b0", 3, {"decoder_channels": (64, 32, 32, 16, 16), "decoder_attention_type": "scse"}, False),
]


@pytest.mark.parametrize(
    "arch, encoder, in_channels, options, train",
    MODEL_CASES,
    ids=[f"{a}-{e}-{i}" for i, (a, e, *_) in enumerate(MODEL_CASES)],
)
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, train, tmp_path):
    check_against_smp(arch, encoder, in_channels, options, tmp_path, train=train, deterministic=without_drop_path)


def test_exported_state_dict_has_smps_keys_and_loads_into_smp(tmp_path):
    torch, reference = test_zoo_smp.smp_model("segformer", "mit_b0", 3, {"aux_params": {"classes": 2}})
    model = zoo.create("segformer", encoder="mit_b0", num_classes=3, aux_params={"classes": 2})
    exported = {k: torch.from_numpy(v.copy()) for k, v in weights.state_dict(model).items()}
    assert set(exported) == set(reference.state_dict())
    reference.load_state_dict(exported, strict=True)
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, exported[key], rtol=0, atol=0, msg=key)


ERROR_CASES = [
    ("encoder", "mit_b0", 6),
    ("encoder", "mit_b0", 0),
    ("segformer", "mit_b0", 2),
    ("segformer", "resnet18", 2),
]


@pytest.mark.parametrize("built, encoder, depth", ERROR_CASES, ids=[f"{b}-{e}-depth{d}" for b, e, d in ERROR_CASES])
def test_depth_errors_are_smps(built, encoder, depth):
    smp = references.smp()
    with pytest.raises(ValueError) as expected:
        if built == "encoder":
            smp.encoders.get_encoder(encoder, depth=depth)
        else:
            smp.Segformer(encoder, encoder_weights=None, encoder_depth=depth)
    with pytest.raises(ValueError) as ours:
        if built == "encoder":
            zoo.make_encoder(encoder, in_channels=3, depth=depth, rngs=nnx.Rngs(0))
        else:
            zoo.create("segformer", encoder=encoder, num_classes=2, encoder_depth=depth)
    assert str(ours.value) == str(expected.value)


def test_output_stride_error_is_smps():
    smp = references.smp()
    with pytest.raises(ValueError) as expected:
        smp.encoders.get_encoder("mit_b0", output_stride=4)
    with pytest.raises(ValueError) as ours:
        MixVisionTransformerEncoder("mit_b0", output_stride=4, rngs=nnx.Rngs(0))
    assert str(ours.value) == str(expected.value)
