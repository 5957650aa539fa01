"""FPN, Linknet and PAN refuse the options smp refuses, with smp's messages, and take smp's
deprecated option names with its warnings; without torch (the options smp accepts are compared
with smp itself in tests/conformance/test_zoo_fpn_linknet_pan.py)."""

from __future__ import annotations

import pytest

from jaxseg.models import zoo

ERRORS = [
    ("fpn", {"encoder_depth": 2}, "Encoder depth for FPN decoder cannot be less than 3, got 2."),
    ("fpn", {"decoder_merge_policy": "max"}, "`merge_policy` must be one of: ['add', 'cat'], got max"),
    ("fpn", {"decoder_segmentation_channels": 48}, "num_channels (48) must be divisible by num_groups (32)"),
    ("fpn", {"decoder_dropout": -0.1}, "dropout probability has to be between 0 and 1, but got -0.1"),
    ("fpn", {"decoder_interpolation": "linear"}, "decoder_interpolation must be one of"),
    ("linknet", {"decoder_use_norm": "groupnorm"}, "Unrecognized normalization type string provided: groupnorm"),
    ("linknet", {"decoder_use_norm": "layernorm"}, "use_norm='layernorm': jaxseg builds 'batchnorm' and 'identity'"),
    ("linknet", {"encoder_depth": 6}, "depth should be in range [1, 5], got 6"),
    ("pan", {"encoder_output_stride": 8}, "PAN support output stride 16 or 32, got 8"),
    ("pan", {"encoder_depth": 2}, "Encoder depth for PAN decoder cannot be less than 3, got 2."),
    ("pan", {"decoder_interpolation": "trilinear"}, "decoder_interpolation must be one of"),
]


@pytest.mark.parametrize("arch, options, message", ERRORS, ids=[f"{a}-{next(iter(o.items()))}" for a, o, _ in ERRORS])
def test_bad_options_raise_smps_errors(arch, options, message):
    with pytest.raises(ValueError) as error:
        zoo.create(arch, encoder="resnet18", num_classes=3, **options)
    assert message in str(error.value)


def test_linknet_decoder_use_batchnorm_is_deprecated_and_overrides_decoder_use_norm():
    # The deprecated value wins, as in smp: its refusal shows that it was the one used.
    with pytest.warns(DeprecationWarning, match="decoder_use_batchnorm is deprecated"):
        with pytest.raises(ValueError, match="Unrecognized normalization type string provided: groupnorm"):
            zoo.create(
                "linknet", encoder="resnet18", num_classes=3, decoder_use_norm=True, decoder_use_batchnorm="groupnorm"
            )


def test_pan_upscale_mode_is_deprecated_and_overrides_decoder_interpolation():
    with pytest.warns(DeprecationWarning, match="upscale_mode is deprecated"):
        with pytest.raises(ValueError, match="decoder_interpolation must be one of"):
            zoo.create("pan", encoder="resnet18", num_classes=3, decoder_interpolation="nearest", upscale_mode="linear")
