"""`jaxseg.models.create` against segmentation_models_pytorch 0.6: an smp model with random
weights and random BatchNorm statistics, saved and loaded through `weights=`, gives smp's
logits in evaluation mode and smp's input gradients in training mode; encoders equal
torchvision's; the exported state dict loads back into smp with its own tensors."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import weights, zoo
from jaxseg.models.encoders.resnet import ResNetEncoder
from tests.conformance import references

CASES = [
    ("unet", "resnet18", 3, {}),
    ("unet", "resnet34", 1, {"decoder_attention_type": "scse", "aux_params": {"classes": 4, "dropout": 0.5}}),
    ("unet", "resnet50", 3, {"decoder_interpolation": "bilinear", "decoder_use_norm": False}),
    ("unet", "resnext50_32x4d", 4, {"encoder_depth": 4, "decoder_channels": (64, 32, 16, 8)}),
]
SMP_CLASSES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "manet": "MAnet",
    "linknet": "Linknet",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}


def randomize(torch, model):
    """Random BatchNorm statistics and affine parameters, so evaluation mode tests them, and
    random layer scales (timm's ConvNeXt initialises them to 1e-6: its blocks would be untested)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".gamma"):
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.num_features, generator=generator))


def smp_model(arch, encoder, in_channels, options):
    smp = references.smp()
    torch = references.torch()
    torch.manual_seed(0)
    model = getattr(smp, SMP_CLASSES[arch])(
        encoder, encoder_weights=None, in_channels=in_channels, classes=3, **options
    )
    randomize(torch, model)
    return torch, model


def nchw(torch, images):
    return torch.from_numpy(np.asarray(images, np.float64).transpose(0, 3, 1, 2).copy())


def logits_of(output):
    """The segmentation logits of a model's output (smp and jaxseg return a pair with aux_params)."""
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("arch, encoder, in_channels, options", CASES, ids=[f"{a}-{e}" for a, e, _, _ in CASES])
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, tmp_path):
    check_against_smp(arch, encoder, in_channels, options, tmp_path)


def check_against_smp(arch, encoder, in_channels, options, tmp_path, *, size=(64, 96), train=True, deterministic=None):
    """smp's model `arch` with random weights and BatchNorm statistics, saved as a .pth and loaded
    through `zoo.create(weights=...)`: the same logits in evaluation mode and, with `train`, the
    same input gradients of a weighted sum of the logits in training mode (dropout must then be
    0: the two sides draw different masks; `deterministic(torch_model, jaxseg_model)` turns off
    other randomness in place, e.g. stochastic depth)."""
    # Both sides in float64, so the comparison tests the wiring, not rounding: random weights
    # and BatchNorm statistics make these networks ill-conditioned (logits up to ~1e4; torch's
    # own float32 logits are up to 1% of that scale away from its float64 ones).
    torch, reference = smp_model(arch, encoder, in_channels, options)
    path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), path)
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, *size, in_channels)), np.float64)
    weights_of_logits = np.asarray(jax.random.normal(jax.random.key(1), (2, *size, 3)), np.float64)
    reference = reference.double().eval()
    with torch.no_grad():
        expected = reference(nchw(torch, images))
    with jax.enable_x64(True):
        model = zoo.create(
            arch, encoder=encoder, num_classes=3, in_channels=in_channels, weights=path, dtype=jnp.float64, **options
        )
        # One compiled forward: op-by-op dispatch would compile each of the network's ~400 ops.
        ours = nnx.jit(lambda model, x: model(x, train=False))(model, jnp.asarray(images))
    if "aux_params" in options:
        np.testing.assert_allclose(ours[1], expected[1].numpy(), rtol=1e-7, atol=1e-9 * expected[1].abs().max().item())
    expected_logits = logits_of(expected).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(logits_of(ours), expected_logits, rtol=1e-7, atol=1e-9 * np.abs(expected_logits).max())
    if not train:
        return
    if deterministic is not None:
        deterministic(reference, model)
    reference.train()
    inputs = nchw(torch, images).requires_grad_(True)
    (logits_of(reference(inputs)) * torch.from_numpy(weights_of_logits.transpose(0, 3, 1, 2).copy())).sum().backward()
    expected_grad = inputs.grad.numpy().transpose(0, 2, 3, 1)
    with jax.enable_x64(True):
        graphdef, state = nnx.split(model)

        def objective(x, state):
            outputs = nnx.merge(graphdef, state, copy=True)(x, train=True, key=jax.random.key(2))  # key: aux dropout
            return jnp.sum(logits_of(outputs) * weights_of_logits)

        ours_grad = jax.jit(jax.grad(objective))(jnp.asarray(images), state)  # training mode: batch statistics
    np.testing.assert_allclose(ours_grad, expected_grad, rtol=1e-7, atol=1e-9 * np.abs(expected_grad).max())


def test_float32_logits_are_as_close_to_float64_as_torchs_own_float32(tmp_path):
    torch, reference = smp_model("unet", "resnet34", 3, {})
    weights.write_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, tmp_path / "model.safetensors")
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 64, 64, 3)))
    with torch.no_grad():
        float32 = reference.eval()(nchw(torch, images).float()).double().numpy().transpose(0, 2, 3, 1)
        float64 = reference.double()(nchw(torch, images)).numpy().transpose(0, 2, 3, 1)
    model = zoo.create("unet", encoder="resnet34", num_classes=3, weights=tmp_path / "model.safetensors")
    ours = np.asarray(nnx.jit(lambda model, x: model(x, train=False))(model, jnp.asarray(images, jnp.float32)))
    torch_error = np.abs(float32 - float64).max()
    assert np.abs(ours - float64).max() <= 10 * torch_error + 1e-5 * np.abs(float64).max()


def test_exported_state_dict_loads_into_smp_with_its_own_tensors(tmp_path):
    torch, reference = smp_model("unet", "resnet34", 3, {"decoder_attention_type": "scse"})
    path = tmp_path / "model.safetensors"
    weights.write_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, path)
    model = zoo.create("unet", encoder="resnet34", num_classes=3, weights=path, decoder_attention_type="scse")
    exported = {k: torch.from_numpy(v.copy()) for k, v in weights.state_dict(model).items()}
    original = {k: v.clone() for k, v in reference.state_dict().items()}
    assert set(exported) == set(original)
    reference.load_state_dict(exported, strict=True)
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, original[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name, output_stride", [("resnet18", 32), ("resnet50", 16), ("resnext50_32x4d", 8)])
def test_resnet_encoder_equals_smp_and_torchvision(name, output_stride, tmp_path):
    smp = references.smp()
    torch = references.torch()
    torchvision = references.torchvision()
    torch.manual_seed(0)
    classifier = getattr(torchvision.models, name)()  # the ImageNet network whose weights smp loads
    randomize(torch, classifier)
    path = tmp_path / "encoder.pth"
    torch.save(classifier.state_dict(), path)
    reference = smp.encoders.get_encoder(name, weights=None, output_stride=output_stride)
    reference.load_state_dict(classifier.state_dict())
    encoder = ResNetEncoder(name, output_stride=output_stride, rngs=nnx.Rngs(0))
    zoo.load_encoder_weights(encoder, weights.read_state_dict(path), in_channels=3)
    images = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    with torch.no_grad():
        expected = reference.double().eval()(nchw(torch, images))
    ours = encoder(images, train=False)
    assert encoder.out_channels == tuple(reference.out_channels)
    assert len(ours) == len(expected)
    for level, (a, b) in enumerate(zip(ours, expected)):
        b = b.numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(a, b, atol=1e-4 * max(np.abs(b).max(), 1e-6), err_msg=f"feature {level}")


@pytest.mark.parametrize("in_channels", [1, 2, 5])
def test_first_convolution_adapts_as_smp_patches_it(in_channels):
    smp = references.smp()
    torch = references.torch()
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    kernel = conv[0].weight.detach().numpy().copy()
    patch_first_conv(conv, in_channels, pretrained=True)
    np.testing.assert_allclose(
        weights.adapt_first_conv(kernel, in_channels), conv[0].weight.detach().numpy(), rtol=1e-6
    )
    del smp


def test_saved_model_directories_load_both_ways(tmp_path):
    """smp's `save_pretrained` directory -> `convert.from_pretrained`, and jaxseg's
    `convert.save_pretrained` -> `smp.from_pretrained`: the same logits each way."""
    from jaxseg.models import convert

    smp = references.smp()
    options = {"decoder_channels": (64, 32, 32, 16, 16), "decoder_attention_type": "scse"}
    torch, reference = smp_model("unet", "resnet18", 3, options)
    reference.save_pretrained(tmp_path / "from_smp")
    images = np.asarray(jax.random.normal(jax.random.key(0), (2, 64, 64, 3)), np.float64)
    with torch.no_grad():
        expected = reference.double().eval()(nchw(torch, images)).numpy().transpose(0, 2, 3, 1)
    with jax.enable_x64(True):
        ours = convert.from_pretrained(tmp_path / "from_smp", dtype=jnp.float64)
        np.testing.assert_allclose(ours(jnp.asarray(images)), expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())

    convert.save_pretrained(
        ours, tmp_path / "from_jaxseg", arch="unet", encoder="resnet18", num_classes=3, normalization={}, **options
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # smp warns of mismatched keys instead of failing
        loaded = smp.from_pretrained(str(tmp_path / "from_jaxseg"))
    assert type(loaded) is type(reference)
    with torch.no_grad():
        again = loaded.double().eval()(nchw(torch, images)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(again, expected, rtol=0, atol=0)
