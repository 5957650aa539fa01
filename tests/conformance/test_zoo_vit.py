"""smp 0.6's DPT on timm ViTs (`tu-vit_*_patch16_*` in smp's `TimmViTEncoder`) against jaxseg's
through `check_against_smp` (float64 evaluation logits and training-mode input gradients), over
the readouts, a shallower encoder with chosen blocks, other input channels and the aux head; the
encoder alone against timm's `forward_intermediates` from a timm checkpoint; the export back into
smp; smp's refusals."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import weights, zoo
from jaxseg.models.encoders.vit import ViTEncoder
from tests.conformance import references
from tests.conformance.test_zoo_smp import check_against_smp, nchw, smp_model

SMALL = {"img_size": (64, 96), "decoder_intermediate_channels": (32, 64, 96, 96), "decoder_fusion_channels": 32}
# (encoder, in_channels, options, train)
CASES = [
    ("tu-vit_tiny_patch16_224", 3, SMALL, True),
    ("tu-vit_tiny_patch16_224", 1, dict(SMALL, decoder_readout="add"), True),
    (
        "tu-vit_small_patch16_384.augreg_in21k_ft_in1k",
        4,
        dict(
            SMALL,
            decoder_readout="ignore",
            encoder_depth=2,
            encoder_output_indices=[-1, 3],
            decoder_intermediate_channels=(16, 24),
        ),
        False,
    ),
    ("tu-vit_tiny_patch16_224", 3, dict(SMALL, aux_params={"classes": 4, "dropout": 0.0}), False),
]


def no_head_dropout(torch_model, model):
    torch_model.segmentation_head.head[3].p = 0.0
    model.segmentation_head.head[3].rate = 0.0


@pytest.mark.parametrize("encoder, in_channels, options, train", CASES, ids=["cat", "add-1ch", "ignore-depth2", "aux"])
def test_smp_weights_give_smp_logits_and_gradients(encoder, in_channels, options, train, tmp_path):
    check_against_smp(
        "dpt", encoder, in_channels, options, tmp_path, size=(64, 96), train=train, deterministic=no_head_dropout
    )


def test_encoder_equals_timms_intermediates_from_a_timm_checkpoint():
    """timm's `vit_tiny_patch16_224` classifier saved with timm's keys (no `model.` prefix) and
    loaded as encoder weights: the maps and class tokens of `forward_intermediates` at smp's
    default blocks (2, 5, 8, 11)."""
    references.smp()
    torch = references.torch()
    timm = importlib.import_module("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).double().eval()
    state = {k: v.numpy() for k, v in vit.state_dict().items()}
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 224, 224, 3)), np.float64)
    with torch.no_grad():
        expected = vit.forward_intermediates(
            nchw(torch, images), indices=[2, 5, 8, 11], intermediates_only=True, return_prefix_tokens=True
        )
    with jax.enable_x64(True):
        encoder = ViTEncoder("tu-vit_tiny_patch16_224", dtype=jnp.float64, rngs=nnx.Rngs(0))
        zoo.load_encoder_weights(encoder, state, in_channels=3)
        features = nnx.jit(lambda encoder, x: encoder(x))(encoder, jnp.asarray(images))
        prefix = features.prefix_tokens
    assert encoder.output_indices == (2, 5, 8, 11) and len(features) == 4
    for level, (maps, tokens) in enumerate(expected):
        b = maps.numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(features[level], b, rtol=1e-7, atol=1e-9 * np.abs(b).max(), err_msg=f"{level}")
        np.testing.assert_allclose(prefix[level], tokens.numpy(), rtol=1e-7, atol=1e-9 * np.abs(b).max())


def test_exported_state_dict_loads_into_smp_with_its_own_tensors(tmp_path):
    torch, reference = smp_model("dpt", "tu-vit_tiny_patch16_224", 3, SMALL)
    path = tmp_path / "model.safetensors"
    weights.write_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, path)
    model = zoo.create("dpt", encoder="tu-vit_tiny_patch16_224", num_classes=3, weights=path, **SMALL)
    exported = {k: torch.from_numpy(v.copy()) for k, v in weights.state_dict(model).items()}
    original = {k: v.clone() for k, v in reference.state_dict().items()}
    assert set(exported) == set(original) and "encoder.model.head.weight" in exported
    reference.load_state_dict(exported, strict=True)
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, original[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "encoder, options",
    [
        ("resnet34", {}),
        ("tu-vit_tiny_patch16_224", {"decoder_readout": "mean"}),
        ("tu-vit_tiny_patch16_224", {"encoder_depth": 0}),
        ("tu-vit_tiny_patch16_224", {"encoder_depth": 13}),
        ("tu-vit_tiny_patch16_224", {"encoder_depth": 2, "encoder_output_indices": [0, 12]}),
        ("tu-vit_tiny_patch16_224", {"encoder_depth": 2, "encoder_output_indices": [0]}),
        ("tu-vit_tiny_patch16_224", {"decoder_intermediate_channels": (8, 8)}),
    ],
)
def test_refusals_are_smps(encoder, options):
    smp = references.smp()
    with pytest.raises(ValueError) as expected:
        smp.DPT(encoder, encoder_weights=None, classes=2, **options)
    with pytest.raises(ValueError) as ours:
        zoo.create("dpt", encoder=encoder, num_classes=2, **options)
    assert str(ours.value) == str(expected.value)
