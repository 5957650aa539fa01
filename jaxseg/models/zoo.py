"""`create(arch, encoder=...)`: smp 0.6's architectures on pretrained encoders, named as smp
names them.

Architectures (`ARCHITECTURES`, smp's class names lower-cased): unet, unetplusplus, manet,
linknet, fpn, pspnet, deeplabv3, deeplabv3plus, pan, upernet, segformer, dpt. Encoders
(`ENCODERS`): resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, mit_b0..b5,
efficientnet-b0..b7, efficientnet-lite0, tu-convnext_tiny/small/base and, for DPT,
tu-vit_tiny/small/base/large_patch16_224/384.

`weights` loads a full smp model's state dict of the same architecture; `encoder_weights` an
encoder's (torchvision / smp-hub / timm layout, the ImageNet classifier ignored), adapting the
first convolution to `in_channels` as smp does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.models import weights as weight_files
from jaxseg.models.decoders import (
    deeplab,
    dpt,
    fpn,
    linknet,
    manet,
    pan,
    pspnet,
    segformer,
    unet,
    unetplusplus,
    upernet,
)
from jaxseg.models.decoders.heads import ClassificationHead, SegmentationModel
from jaxseg.models.encoders import convnext
from jaxseg.models.encoders.convnext import CONVNEXTS, ConvNeXtEncoder
from jaxseg.models.encoders.efficientnet import EFFICIENTNETS, EfficientNetEncoder
from jaxseg.models.encoders.mix_transformer import MIT_ENCODERS, MixVisionTransformerEncoder
from jaxseg.models.encoders.resnet import RESNETS, ResNetEncoder
from jaxseg.models.encoders.vit import VITS, ViTEncoder, base_name

ENCODERS = {
    **{name: ResNetEncoder for name in RESNETS},
    **{name: MixVisionTransformerEncoder for name in MIT_ENCODERS},
    **{name: EfficientNetEncoder for name in EFFICIENTNETS},
    **{name: ConvNeXtEncoder for name in CONVNEXTS},
    **{name: ViTEncoder for name in VITS},
}
FIRST_CONV = {
    ResNetEncoder: "conv1.weight",
    MixVisionTransformerEncoder: "patch_embed1.proj.weight",
    EfficientNetEncoder: "_conv_stem.weight",
    ConvNeXtEncoder: "model.stem_0.weight",
    ViTEncoder: "model.patch_embed.proj.weight",
}
CLASSIFIER_KEYS = {ResNetEncoder: ("fc.",), MixVisionTransformerEncoder: ("head.",), EfficientNetEncoder: ("_fc.",)}


def encoder_family(name: str):
    """The encoder class of smp's encoder `name` (timm's pretrained tag, `.augreg_in21k`, dropped)."""
    family = ENCODERS.get(base_name(name) if name.startswith("tu-") else name)
    if family is None:
        raise ValueError(f"unknown encoder {name!r}; jaxseg has {sorted(ENCODERS)}")
    return family


def make_encoder(name: str, *, in_channels: int, depth: int = 5, output_stride: int = 32, **conv):
    family = encoder_family(name)
    if family is ViTEncoder and output_stride is not None:  # DPT asks for none
        raise ValueError(f"{name}: jaxseg builds ViT encoders for DPT only (smp's TimmViTEncoder)")
    return family(name, in_channels=in_channels, depth=depth, output_stride=output_stride, **conv)


# smp's model constructors: `arch(make_encoder, classes, *, conv, encoder_name, **smp options)
# -> Parts` builds the encoder at the depth and output stride it needs, the decoder and the
# head, and refuses the options and encoders smp refuses.
ARCHITECTURES = {
    "unet": unet.unet,
    "unetplusplus": unetplusplus.unetplusplus,
    "manet": manet.manet,
    "linknet": linknet.linknet,
    "fpn": fpn.fpn,
    "pspnet": pspnet.pspnet,
    "deeplabv3": deeplab.deeplabv3,
    "deeplabv3plus": deeplab.deeplabv3plus,
    "pan": pan.pan,
    "upernet": upernet.upernet,
    "segformer": segformer.segformer,
    "dpt": dpt.dpt,
}


def architecture(arch: str):
    """The builder of smp architecture `arch` (its class name lower-cased)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; jaxseg has {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def create(
    arch: str,
    *,
    encoder: str,
    num_classes: int,
    in_channels: int = 3,
    weights=None,
    encoder_weights=None,
    aux_params: dict | None = None,
    dtype=jnp.float32,
    conv_general_dilated=lax.conv_general_dilated,
    rngs: nnx.Rngs | None = None,
    **options,
) -> SegmentationModel:
    """An smp architecture on an encoder: `model(images [B, H, W, in_channels], train=...)` ->
    logits `[B, H, W, num_classes]` (and the auxiliary labels with `aux_params`).

    Args:
      arch: smp's class name lower-cased (`"unet"`, `"deeplabv3plus"`, ...).
      encoder: smp's encoder name (`"resnet34"`).
      num_classes: output channels (smp's `classes`).
      in_channels: input channels.
      weights: a full-model state dict of the same smp architecture: a safetensors / torch file,
        or a Hugging Face Hub id.
      encoder_weights: the encoder's state dict (file or hub id, e.g. `smp-hub/resnet34.imagenet`).
      aux_params: smp's auxiliary classification head (`classes`, `pooling`, `dropout`).
      dtype: compute dtype (parameters stay float32).
      conv_general_dilated: the convolution of every layer (`jaxseg.kernels.convolution`).
      rngs: initialisation keys (default `nnx.Rngs(0)`).
      **options: the architecture's options as smp spells them (`decoder_channels`, ...).
    """
    arch = arch.lower()
    build = functools.partial(
        build_model,
        arch,
        encoder=encoder,
        num_classes=num_classes,
        in_channels=in_channels,
        aux_params=aux_params,
        dtype=dtype,
        conv_general_dilated=conv_general_dilated,
        **options,
    )
    # The files first: a bad path or an offline hub id fails before the build.
    encoder_state = None if encoder_weights is None else weight_files.resolve(encoder_weights)
    state = None if weights is None else weight_files.resolve(weights)
    # Built under jit: eager initialisation runs every initializer as its own dispatch (17 s for
    # a ResNet-34 Unet on 2 cores).
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0))))
    if state is not None:  # every variable comes from the file: nothing to initialise
        (values,) = weight_files.load_into_trees([abstract], state, target=f"{arch} on {encoder}")
        return nnx.merge(graphdef, values)
    key = (rngs if rngs is not None else nnx.Rngs(0)).params()
    model = nnx.merge(graphdef, jax.jit(lambda k: nnx.split(build(rngs=nnx.Rngs(k)))[1])(key))
    if encoder_state is not None:
        load_encoder_weights(model.encoder, encoder_state, in_channels)
    return model


def build_model(
    arch: str,
    *,
    encoder: str,
    num_classes: int,
    in_channels: int,
    aux_params: dict | None,
    dtype,
    conv_general_dilated,
    rngs: nnx.Rngs,
    **options,
) -> SegmentationModel:
    """The randomly initialised model of `create` (callable inside `jax.jit`)."""
    build = architecture(arch)
    conv = dict(dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs)
    encoder_factory = functools.partial(make_encoder, encoder, in_channels=in_channels, **conv)
    try:
        encoder_module, decoder, head, divisible_by = build(
            encoder_factory, num_classes, conv=conv, encoder_name=encoder, **options
        )
    except TypeError as error:
        raise TypeError(f"{arch}: {error}") from None
    aux = None
    if aux_params:  # smp's PSPNet: an empty dict is no head (the others fail on it)
        aux_options = dict(aux_params)
        aux_options.pop("activation", None)  # logits: activations belong to the loss
        aux = ClassificationHead(encoder_module.out_channels[-1], dtype=dtype, rngs=rngs, **aux_options)
    return SegmentationModel(encoder_module, decoder, head, aux, divisible_by=divisible_by)


def encoder_state(encoder: str, state: dict, in_channels: int, depth: int = 5) -> tuple[dict, tuple]:
    """(state dict, ignored key prefixes) of pretrained weights for the encoder named `encoder`
    at `depth`: its first convolution adapted to `in_channels`, its ImageNet classifier (and for
    timm's encoders, the stages the depth does not build) to be ignored."""
    family = encoder_family(encoder)
    if family is ConvNeXtEncoder:
        state, ignore = convnext.timm_to_smp(state, depth)
    elif family is ViTEncoder:
        state, ignore = {key if key.startswith("model.") else f"model.{key}": v for key, v in state.items()}, ()
    else:
        ignore = CLASSIFIER_KEYS[family]
    first = FIRST_CONV[family]
    if first not in state:
        raise ValueError(f"encoder weights have no {first!r}; are they for a {family.__name__}?")
    return dict(state, **{first: weight_files.adapt_first_conv(state[first], in_channels)}), ignore


def load_encoder_weights(encoder, state: dict, in_channels: int) -> None:
    """An encoder's pretrained state dict into the encoder module, in place."""
    state, ignore = encoder_state(encoder.name, state, in_channels, encoder.depth)
    weight_files.load_state_dict(encoder, state, ignore=ignore)


def pretrained_state(
    params,
    model_state,
    *,
    encoder: str,
    in_channels: int,
    depth: int = 5,
    weights=None,
    encoder_weights=None,
    members: bool = False,
):
    """The train state's `(params, model_state)` (`nnx.State`s of arrays, possibly sharded) with
    `encoder_weights` written into the encoder (of `depth`) and then `weights` into the whole
    model, as `create` loads them (`members`: states stacked over ablation members)."""
    trees = [params, model_state]
    if encoder_weights is not None:
        state, ignore = encoder_state(encoder, weight_files.resolve(encoder_weights), in_channels, depth)
        trees = weight_files.load_into_trees(
            trees, state, under=("encoder",), ignore=ignore, target=f"encoder {encoder}", members=members
        )
    if weights is not None:
        trees = weight_files.load_into_trees(trees, weight_files.resolve(weights), target="the model", members=members)
    return tuple(trees)
