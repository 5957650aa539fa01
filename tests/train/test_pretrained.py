"""Training an smp architecture from pretrained encoder weights: the weights land in the initial
state, a frozen encoder stays at them while the decoder learns, the encoder's learning rate is
scaled as a torch parameter group's, and the trained model exports to smp's saved-model
directory (`python -m jaxseg.models.convert`; smp itself reading it: tests/conformance)."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxseg import tasks
from jaxseg.models import convert, weights
from jaxseg.models.encoders.resnet import ResNetEncoder
from jaxseg.tasks import segmentation
from jaxseg.tasks.segmentation import class_presence, normalize
from jaxseg.train.inference import logits_fn, restore
from jaxseg.train.loop import train_and_evaluate
from jaxseg.train.optim import make_optimizer
from jaxseg.train.state import init_state
from tests.train.test_optim_and_step import optim_config
from tests.train.tiny import flat, saved_state, tiny_config


def plain(key: str) -> str:
    """A flattened state key without its quoting: `['decoder']['blocks']['0']...` -> `decoder/blocks/0/...`."""
    parts = re.findall(r"\['?([^\]']+)'?\]|\.(\w+)", key)
    return "/".join(a or b for a, b in parts if (a or b) != "value")


@pytest.fixture(scope="module")
def pretrained_run(compilation_cache, tmp_path_factory):
    """A 4-step run of smp's Unet from a saved ResNet-18's weights, the encoder frozen:
    `(config, workdir, encoder state dict)`."""
    tmp_path = tmp_path_factory.mktemp("pretrained")
    encoder = ResNetEncoder("resnet18", depth=2, rngs=nnx.Rngs(5))
    file = tmp_path / "resnet18.safetensors"
    weights.write_state_dict(weights.state_dict(encoder), file)
    config = tiny_config(compilation_cache)
    config.model = dict(
        arch="unet", encoder="resnet18", encoder_depth=2, decoder_channels=(8, 8), encoder_weights=str(file)
    )
    config.optim.freeze_encoder_steps = 100
    config.train.update(steps=4, eval_every=4, checkpoint_every=4)
    metrics = train_and_evaluate(config, tmp_path / "run")
    assert np.isfinite(metrics["loss"])
    return config, tmp_path / "run", weights.state_dict(encoder)


def test_a_frozen_pretrained_encoder_keeps_its_weights_while_the_decoder_learns(pretrained_run):
    config, workdir, expected = pretrained_run
    params = flat(saved_state(workdir, 4)["params"])
    assert params["['encoder']['conv1']['kernel']['value']"].shape == (7, 7, 3, 64)
    np.testing.assert_array_equal(
        params["['encoder']['layer3']['1']['conv2']['kernel']['value']"],
        expected["layer3.1.conv2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(params["['encoder']['bn1']['scale']['value']"], expected["bn1.weight"])
    # The decoder moved away from its initialisation (the same seed's initial state).
    make_model = tasks.get(config).model_factory()
    start = {plain(k): v for k, v in flat(init_state(make_model, optax.identity(), config.seed).params).items()}
    key = "decoder/blocks/0/conv1/0/kernel"
    assert not np.allclose({plain(k): v for k, v in params.items()}[key], start[key])


def test_the_trained_model_exports_to_smps_directory_and_reads_back(pretrained_run, tmp_path):
    config, workdir, _ = pretrained_run
    convert.main(["--workdir", str(workdir), "--out", str(tmp_path / "smp")])
    saved = json.loads((tmp_path / "smp" / "config.json").read_text())
    assert saved["_model_class"] == "Unet" and saved["encoder_name"] == "resnet18"
    assert (saved["classes"], saved["in_channels"], saved["encoder_depth"]) == (config.num_classes, 3, 2)
    assert saved["decoder_channels"] == [8, 8] and saved["encoder_weights"] is None
    assert saved[convert.NORMALIZATION_KEY] == {"mean": list(config.data.mean), "std": list(config.data.std)}
    images = np.asarray(jax.random.randint(jax.random.key(0), (2, 32, 32, 3), 0, 256), np.uint8)
    expected = logits_fn(restore(workdir, "best"))(images)
    model = convert.from_pretrained(tmp_path / "smp")
    ours = model(normalize(images, config.data.mean, config.data.std), train=False)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_the_encoder_learning_rate_scales_and_freezes_its_updates():
    params = {"encoder": {"w": jnp.ones((3, 3))}, "decoder": {"w": jnp.ones((3, 3))}}
    grads = {"encoder": {"w": jnp.full((3, 3), 0.5)}, "decoder": {"w": jnp.full((3, 3), 0.5)}}
    for name in ("adamw", "sgd"):
        plain = make_optimizer(optim_config(name=name, schedule="constant", clip_norm=0.0), 100)
        scaled = make_optimizer(
            optim_config(name=name, schedule="constant", clip_norm=0.0, encoder_lr_scale=0.1, freeze_encoder_steps=2),
            100,
        )
        plain_state, scaled_state = plain.init(params), scaled.init(params)
        for step in range(4):
            expected, plain_state = plain.update(grads, plain_state, params)
            got, scaled_state = scaled.update(grads, scaled_state, params)
            factor = 0.0 if step < 2 else 0.1
            np.testing.assert_allclose(got["encoder"]["w"], factor * expected["encoder"]["w"], rtol=1e-6)
            np.testing.assert_allclose(got["decoder"]["w"], expected["decoder"]["w"], rtol=1e-6)
            assert np.any(np.asarray(expected["encoder"]["w"]) != 0)
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        make_optimizer(optim_config(schedule="constant", encoder_lr_scale=-1.0), 100)


def test_pretrained_weights_reach_every_ablation_member(tmp_path):
    encoder = ResNetEncoder("resnet18", depth=2, rngs=nnx.Rngs(3))
    file = tmp_path / "resnet18.safetensors"
    weights.write_state_dict(weights.state_dict(encoder), file)
    from jaxseg.models import zoo

    make = zoo.build_model
    model = nnx.eval_shape(
        lambda: make(
            "unet",
            encoder="resnet18",
            num_classes=2,
            in_channels=3,
            aux_params=None,
            dtype=jnp.float32,
            conv_general_dilated=jax.lax.conv_general_dilated,
            encoder_depth=2,
            decoder_channels=(8, 8),
            rngs=nnx.Rngs(0),
        )
    )
    _, params, rest = nnx.split(model, nnx.Param, ...)
    stacked = jax.tree.map(lambda a: jnp.zeros((3, *a.shape), a.dtype), (params, rest))
    params, rest = zoo.pretrained_state(*stacked, encoder="resnet18", in_channels=3, encoder_weights=file, members=True)
    kernel = np.asarray(params["encoder"]["layer1"][0]["conv1"]["kernel"][...])
    assert kernel.shape[0] == 3
    for member in kernel:
        np.testing.assert_array_equal(
            member, weights.state_dict(encoder)["layer1.0.conv1.weight"].transpose(2, 3, 1, 0)
        )
    assert not np.any(np.asarray(params["decoder"]["blocks"][0]["conv1"][0]["kernel"][...]))  # untouched zeros


def test_the_resnet34_unet_config_builds_smps_model():
    from configs import seg_shapes_unet_resnet34

    config = seg_shapes_unet_resnet34.get_config()
    model = nnx.eval_shape(lambda: tasks.get(config).model_factory()(rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(params))
    assert config.num_classes == 5
    assert count == 24_436_949  # sum(p.numel() for p in smp.Unet("resnet34", classes=5).parameters())


def test_class_presence_counts_only_labelled_unmasked_pixels():

    labels = jnp.array([[[0, 2], [255, 2]], [[1, 1], [3, 0]]])
    mask = jnp.array([[[1, 1], [1, 1]], [[1, 1], [0, 0]]])
    np.testing.assert_array_equal(class_presence(labels, 4, ignore_index=255), [[1, 0, 1, 0], [1, 1, 0, 1]])
    np.testing.assert_array_equal(class_presence(labels, 4, ignore_index=255, mask=mask), [[1, 0, 1, 0], [0, 1, 0, 0]])


def test_the_auxiliary_head_trains_on_the_classes_each_image_shows(compilation_cache, tmp_path):
    """smp's `aux_params` in the trainer: the head's binary cross-entropy against class presence
    is the `loss_aux` term, weighted by `config.loss.aux_weight` into the loss, and the head learns."""
    config = tiny_config(compilation_cache)
    config.model = dict(
        arch="unet", encoder="resnet18", encoder_depth=2, decoder_channels=(8, 8), aux_params=dict(dropout=0.2)
    )
    config.loss.aux_weight = 0.5
    config.train.update(steps=4, eval_every=4, checkpoint_every=4, log_every=1)
    metrics = train_and_evaluate(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert all(np.isfinite(row["loss_aux"]) and row["loss_aux"] > 0 for row in train)
    for row in train:  # loss = CE + Dice + 0.5 * aux
        np.testing.assert_allclose(row["loss"], row["loss_ce"] + row["loss_dice"] + 0.5 * row["loss_aux"], rtol=1e-5)
    assert np.isfinite(metrics["loss_aux"]) and "miou" in metrics
    head = flat(saved_state(tmp_path / "run", 4)["params"])
    fc = [key for key in head if "classification_head" in key and "kernel" in key]
    assert fc and head[fc[0]].shape[-1] == config.num_classes


def test_auxiliary_classes_other_than_the_tasks_are_a_config_error():
    config = tiny_config()
    config.model = dict(
        arch="unet", encoder="resnet18", encoder_depth=2, decoder_channels=(8, 8), aux_params=dict(classes=1)
    )
    with pytest.raises(ValueError, match="config.model.aux_params.classes=1"):
        segmentation.model_factory(config)
