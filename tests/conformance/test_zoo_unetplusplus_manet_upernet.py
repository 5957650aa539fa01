"""`zoo.create("unetplusplus" | "manet" | "upernet")` against smp 0.6: smp's random-weight model
loaded through `weights=` gives smp's logits in evaluation mode and smp's input gradients in
training mode (`check_against_smp`, float64; loading is strict, so the state dicts have smp's keys); smp's refusals
are ours."""

from __future__ import annotations

import pytest

from jaxseg.models import zoo
from tests.conformance import references
from tests.conformance.test_zoo_smp import check_against_smp

# (arch, encoder, in_channels, options, input size, train: compare gradients too)
CASES = [
    ("unetplusplus", "resnet18", 3, {}, (64, 96), True),
    (
        "unetplusplus",
        "resnet34",
        1,
        {"decoder_attention_type": "scse", "decoder_channels": (64, 32, 32, 16, 16), "aux_params": {"classes": 4}},
        (64, 64),
        False,  # the auxiliary head's dropout (0.2) draws different masks in training mode
    ),
    (
        "unetplusplus",
        "resnext50_32x4d",
        4,
        {"encoder_depth": 4, "decoder_channels": (32, 16, 16, 8), "decoder_interpolation": "bicubic"},
        (64, 96),
        False,
    ),
    (
        "unetplusplus",
        "resnet18",
        3,
        {
            "encoder_depth": 3,
            "decoder_channels": (32, 16, 8),
            "decoder_interpolation": "area",
            "aux_params": {"classes": 2, "pooling": "max", "dropout": 0.0},
        },
        (64, 96),
        False,
    ),
    ("manet", "resnet18", 3, {}, (64, 96), True),
    (
        "manet",
        "resnet34",
        1,
        {"decoder_pab_channels": 16, "decoder_channels": (64, 32, 16, 16, 8), "aux_params": {"classes": 4}},
        (64, 64),
        False,  # the auxiliary head's dropout
    ),
    (
        "manet",
        "resnext50_32x4d",
        4,
        {"encoder_depth": 4, "decoder_channels": (32, 16, 16, 8), "decoder_interpolation": "bicubic"},
        (64, 96),
        False,
    ),
    (
        "manet",
        "resnet18",
        3,
        {"encoder_depth": 3, "decoder_channels": (32, 16, 8), "decoder_interpolation": "area"},
        (128, 64),  # PAB over 16 x 8 positions: a 128 x 128 map per image
        False,
    ),
    ("upernet", "resnet18", 3, {}, (64, 96), True),
    (
        "upernet",
        "resnet34",
        1,
        {"decoder_channels": 32, "aux_params": {"classes": 4, "pooling": "max", "dropout": 0.0}},
        (128, 96),  # deepest map 4 x 3: the pyramid's 6 x 6 pool resizes down, its 1 x 1 up
        False,
    ),
    ("upernet", "resnet18", 3, {"decoder_channels": 32, "decoder_use_norm": False}, (64, 64), False),
    ("upernet", "resnext50_32x4d", 4, {"encoder_depth": 3, "decoder_channels": 16}, (64, 96), False),
    ("upernet", "resnet18", 3, {"encoder_depth": 4, "decoder_channels": 16, "upsampling": 2}, (64, 96), False),
]


def case_id(case):
    arch, encoder, in_channels, options, size, _ = case
    named = "-".join(f"{k}={v}" for k, v in options.items() if k != "aux_params")
    return f"{arch}-{encoder}-in{in_channels}-{size[0]}x{size[1]}" + (f"-{named}" if named else "")


@pytest.mark.parametrize("arch, encoder, in_channels, options, size, train", CASES, ids=[case_id(c) for c in CASES])
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, size, train, tmp_path):
    # upsampling=2 gives half-size logits, which the gradient check's full-size weights do not fit: eval only.
    check_against_smp(arch, encoder, in_channels, options, tmp_path, size=size, train=train)


def test_deprecated_decoder_use_batchnorm_gives_smp_model(tmp_path):
    references.smp()  # skip before pytest.warns, which turns a skip inside it into a failure
    with pytest.warns(DeprecationWarning, match="decoder_use_batchnorm is deprecated"):
        check_against_smp(
            "unetplusplus",
            "resnet18",
            3,
            {"encoder_depth": 3, "decoder_channels": (16, 16, 8), "decoder_use_batchnorm": False},
            tmp_path,
            size=(64, 64),
            train=False,
        )


@pytest.mark.parametrize(
    "arch, options, error",
    [
        ("unetplusplus", {"encoder_depth": 4}, "Model depth is 4, but you provide `decoder_channels` for 5 blocks."),
        ("manet", {"decoder_channels": (16, 8)}, "Model depth is 5, but you provide `decoder_channels` for 2 blocks."),
        ("upernet", {"encoder_depth": 2}, "Encoder depth for UPerNet decoder cannot be less than 3, got 2."),
        ("manet", {"decoder_use_norm": "groupnorm"}, "Unrecognized normalization type string provided: groupnorm"),
    ],
)
def test_smp_and_jaxseg_refuse_the_same_options(arch, options, error):
    smp = references.smp()
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        getattr(smp, {"unetplusplus": "UnetPlusPlus", "manet": "MAnet", "upernet": "UPerNet"}[arch])(
            "resnet18", encoder_weights=None, **options
        )
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        zoo.create(arch, encoder="resnet18", num_classes=1, **options)


def test_smp_refuses_mit_encoders_for_unetplusplus():
    smp = references.smp()
    with pytest.raises(ValueError, match="UnetPlusPlus is not support encoder_name=mit_b0"):
        smp.UnetPlusPlus("mit_b0", encoder_weights=None)
    with pytest.raises(ValueError, match="UnetPlusPlus is not support encoder_name=mit_b0"):
        zoo.create("unetplusplus", encoder="mit_b0", num_classes=1)
