"""smp 0.6's `tu-convnext_*` encoders (timm's ConvNeXt in smp's `TimmUniversalEncoder`) against
jaxseg's through `check_against_smp` (float64 evaluation logits and training-mode input
gradients, random layer scales), dilated, shallower and with a patched stem; the encoder alone
against timm's feature extractor with a timm checkpoint's keys; smp's depth errors."""

from __future__ import annotations

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import zoo
from jaxseg.models.encoders.convnext import ConvNeXtEncoder
from tests.conformance import references
from tests.conformance.test_zoo_smp import check_against_smp, nchw

# (arch, encoder, in_channels, options, size, train)
CASES = [
    ("unet", "tu-convnext_tiny", 3, {}, (64, 96), True),
    ("upernet", "tu-convnext_tiny", 1, {}, (64, 64), True),
    ("deeplabv3plus", "tu-convnext_tiny", 4, {"encoder_output_stride": 8}, (64, 64), False),
    ("deeplabv3", "tu-convnext_small", 3, {}, (32, 64), False),  # output stride 8 by default
    ("unetplusplus", "tu-convnext_tiny", 3, {"encoder_depth": 4, "decoder_channels": (64, 32, 16, 8)}, (32, 64), True),
    ("linknet", "tu-convnext_tiny", 3, {}, (64, 64), False),
    ("fpn", "tu-convnext_tiny", 3, {"decoder_dropout": 0.0}, (64, 64), True),
    ("segformer", "tu-convnext_base", 3, {}, (64, 64), False),
    ("manet", "tu-convnext_tiny", 3, {}, (64, 64), False),
    ("pspnet", "tu-convnext_tiny", 3, {}, (64, 64), False),
    ("pan", "tu-convnext_tiny", 3, {}, (128, 128), False),  # its pyramid pools the stride-32 map to 1/8
]


@pytest.mark.parametrize(
    "arch, encoder, in_channels, options, size, train", CASES, ids=[f"{a}-{e}" for a, e, *_ in CASES]
)
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, size, train, tmp_path):
    check_against_smp(arch, encoder, in_channels, options, tmp_path, size=size, train=train)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_encoder_equals_timms_feature_extractor_from_a_timm_checkpoint(output_stride):
    """timm's `convnext_tiny` (random weights, random layer scales) saved with timm's keys and
    loaded as encoder weights (`stem.0`, `stages.N`, the classifier `head.*` ignored): the
    features of timm's extractor at every stride, dilated as timm dilates, on an input whose
    size 4 does not divide (the stem floors, as a strided convolution without padding)."""
    references.smp()  # timm imports torchvision, which needs smp's import workaround
    torch = references.torch()
    timm = importlib.import_module("timm")
    torch.manual_seed(0)
    classifier = timm.create_model("convnext_tiny", pretrained=False)
    with torch.no_grad():
        for name, parameter in classifier.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(0.5 + torch.rand(parameter.shape))
    state = {k: v.numpy() for k, v in classifier.state_dict().items()}
    assert "head.fc.weight" in state and "stem.0.weight" in state
    options = {} if output_stride == 32 else {"output_stride": output_stride}
    extractor = timm.create_model("convnext_tiny", pretrained=False, features_only=True, **options)
    flattened = {re.sub(r"^(stem|stages)\.(\d+)\.", r"\1_\2.", k): v for k, v in classifier.state_dict().items()}
    missing, _ = extractor.load_state_dict(flattened, strict=False)  # the classifier left over
    assert not missing
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 70, 58, 3)), np.float64)
    with torch.no_grad():
        expected = [f.numpy().transpose(0, 2, 3, 1) for f in extractor.double().eval()(nchw(torch, images))]
    with jax.enable_x64(True):
        encoder = ConvNeXtEncoder("tu-convnext_tiny", output_stride=output_stride, dtype=jnp.float64, rngs=nnx.Rngs(0))
        zoo.load_encoder_weights(encoder, state, in_channels=3)
        features = nnx.jit(lambda encoder, x: encoder(x))(encoder, jnp.asarray(images))
    assert [f.shape[-1] for f in features] == list(encoder.out_channels) == [3, 0, 96, 192, 384, 768]
    for level, b in enumerate(expected, start=2):
        np.testing.assert_allclose(features[level], b, rtol=1e-7, atol=1e-9 * np.abs(b).max(), err_msg=f"level {level}")


@pytest.mark.parametrize("depth", [0, 6])
def test_depth_errors_are_smps(depth):
    smp = references.smp()
    with pytest.raises(ValueError) as expected:
        smp.encoders.get_encoder("tu-convnext_tiny", weights=None, depth=depth)
    with pytest.raises(ValueError) as ours:
        ConvNeXtEncoder("tu-convnext_tiny", depth=depth, rngs=nnx.Rngs(0))
    assert str(ours.value) == str(expected.value)


def test_shallow_encoder_takes_a_full_timm_checkpoint_and_smps_own_keys(tmp_path):
    """At depth 3 the stages past it are not built: a full timm checkpoint loads (its deeper stages
    ignored) and smp's own depth-3 state dict loads key for key."""
    smp = references.smp()
    torch = references.torch()
    torch.manual_seed(0)
    reference = smp.encoders.get_encoder("tu-convnext_tiny", weights=None, depth=3)
    encoder = ConvNeXtEncoder("tu-convnext_tiny", depth=3, rngs=nnx.Rngs(0))
    zoo.load_encoder_weights(encoder, {k: v.numpy() for k, v in reference.state_dict().items()}, in_channels=3)
    timm = importlib.import_module("timm")
    full = {k: v.numpy() for k, v in timm.create_model("convnext_tiny", pretrained=False).state_dict().items()}
    zoo.load_encoder_weights(encoder, full, in_channels=3)
    np.testing.assert_array_equal(encoder.model.stages_1.blocks[0].gamma[...], full["stages.1.blocks.0.gamma"])
