"""`deeplabv3`, `deeplabv3plus` and `pspnet` against segmentation_models_pytorch 0.6: smp's
random-weight models loaded through `zoo.create(weights=...)` give smp's float64 logits in
evaluation mode and smp's input gradients in training mode (`check_against_smp`; its
strict loading proves the state dicts have smp's keys), and the options smp refuses are refused alike."""

from __future__ import annotations

import warnings

import pytest

from jaxseg.models import zoo
from tests.conformance import references
from tests.conformance.test_zoo_smp import check_against_smp, smp_model

NO_DROPOUT = {"decoder_aspp_dropout": 0.0}
# (arch, encoder, in_channels, options, input size, train): `train` compares training-mode
# gradients too, so its dropouts are 0 (the defaults, with dropout, compare logits only).
CASES = [
    ("deeplabv3", "resnet18", 3, {}, (64, 64), False),
    (
        "deeplabv3",
        "resnet34",
        1,
        {
            **NO_DROPOUT,
            "decoder_channels": 32,
            "decoder_aspp_separable": True,
            "decoder_atrous_rates": (2, 4, 6),
            "upsampling": 8,
            "aux_params": {"classes": 4, "dropout": 0.0},
        },
        (64, 96),
        True,
    ),
    ("deeplabv3", "resnet18", 4, {**NO_DROPOUT, "encoder_depth": 3, "decoder_channels": 16}, (64, 96), False),
    (
        "deeplabv3",
        "resnet18",
        3,
        {**NO_DROPOUT, "encoder_depth": 4, "encoder_output_stride": 16, "decoder_channels": 16},
        (64, 96),
        True,
    ),
    ("deeplabv3plus", "resnet18", 3, {}, (64, 64), False),
    (
        "deeplabv3plus",
        "resnet34",
        1,
        {
            **NO_DROPOUT,
            "encoder_output_stride": 8,
            "decoder_channels": 32,
            "decoder_aspp_separable": False,
            "aux_params": {"classes": 4, "pooling": "max", "dropout": 0.0},
        },
        (64, 96),
        True,
    ),
    (
        "deeplabv3plus",
        "resnext50_32x4d",
        3,
        {**NO_DROPOUT, "encoder_depth": 4, "decoder_channels": 32, "decoder_atrous_rates": (1, 2, 3)},
        (64, 96),
        False,
    ),
    ("deeplabv3plus", "resnet18", 4, {**NO_DROPOUT, "encoder_depth": 3, "decoder_channels": 16}, (64, 96), False),
    ("pspnet", "resnet34", 3, {}, (64, 96), False),
    (
        "pspnet",
        "resnet18",
        1,
        {"psp_dropout": 0.0, "psp_out_channels": 32, "decoder_use_norm": False, "aux_params": {"classes": 4}},
        (64, 96),
        True,
    ),
    (
        "pspnet",
        "resnext50_32x4d",
        4,
        {"psp_dropout": 0.0, "psp_out_channels": 16, "encoder_depth": 4, "upsampling": 16},
        (64, 96),
        False,
    ),
    ("pspnet", "resnet18", 3, {"psp_out_channels": 16, "psp_dropout": 0.5}, (64, 96), False),
]


def case_id(arch, encoder, in_channels, options, size, train):
    return f"{arch}-{encoder}-" + ("-".join(f"{k}={v}" for k, v in options.items()) or "defaults")


@pytest.mark.parametrize("arch, encoder, in_channels, options, size, train", CASES, ids=[case_id(*c) for c in CASES])
def test_smp_weights_give_smp_logits_and_gradients(arch, encoder, in_channels, options, size, train, tmp_path):
    check_against_smp(arch, encoder, in_channels, options, tmp_path, size=size, train=train)


def test_pspnet_deprecated_psp_use_batchnorm_warns_and_sets_the_norm(tmp_path):
    references.smp()  # skip before pytest.warns, which turns a skip inside it into a failure
    with pytest.warns(DeprecationWarning, match="psp_use_batchnorm is deprecated"):
        check_against_smp(
            "pspnet",
            "resnet18",
            3,
            {"psp_use_batchnorm": False, "psp_dropout": 0.0, "psp_out_channels": 16},
            tmp_path,
            train=False,
        )


@pytest.mark.parametrize(
    "arch, options",
    [
        ("deeplabv3", {"encoder_output_stride": 32}),
        ("deeplabv3plus", {"encoder_output_stride": 4}),
        ("deeplabv3plus", {"encoder_depth": 2}),
        ("pspnet", {"decoder_use_norm": "groupnorm"}),
    ],
)
def test_smp_refuses_what_jaxseg_refuses(arch, options):
    with pytest.raises(ValueError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smp_model(arch, "resnet18", 3, options)
    with pytest.raises(ValueError):
        zoo.create(arch, encoder="resnet18", num_classes=3, **options)
