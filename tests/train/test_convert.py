"""`jaxseg.models.convert`: smp's `config.json` both ways and the errors (a trained model's
export and read-back: tests/train/test_pretrained.py; smp itself reading it:
tests/conformance/test_zoo_smp.py)."""

from __future__ import annotations

import pytest

from jaxseg.models import convert
from jaxseg.train.loop import train_and_evaluate


@pytest.mark.slow  # a second training run; the error is a config check
def test_jaxsegs_own_models_have_no_smp_form(tiny_config, tmp_path):
    tiny_config.optim.warmup_steps = 1
    tiny_config.train.update(steps=2, eval_every=2, checkpoint_every=2)
    train_and_evaluate(tiny_config, tmp_path / "run")
    with pytest.raises(ValueError, match="config.model.name='unet'.*only smp architectures"):
        convert.export_workdir(tmp_path / "run", tmp_path / "smp")


def test_config_json_maps_both_ways_and_names_what_it_cannot_build():
    config = convert.smp_config("FPN", encoder="resnet50", num_classes=5, decoder_dropout=0.0)
    assert config == dict(
        _model_class="FPN",
        encoder_name="resnet50",
        encoder_weights=None,
        in_channels=3,
        classes=5,
        aux_params=None,
        decoder_dropout=0.0,
    )
    assert convert.create_arguments(dict(config, _jaxseg_input_normalization={})) == dict(
        arch="fpn", encoder="resnet50", num_classes=5, in_channels=3, aux_params=None, decoder_dropout=0.0
    )
    with pytest.raises(ValueError, match="model class 'Transunet'"):
        convert.create_arguments({"_model_class": "Transunet"})
    with pytest.warns(UserWarning, match="activation 'sigmoid'"):
        convert.create_arguments({"_model_class": "Unet", "activation": "sigmoid"})
    with pytest.raises(FileNotFoundError, match="not a saved-model directory"):
        convert.from_pretrained("no/such/dir/here")
