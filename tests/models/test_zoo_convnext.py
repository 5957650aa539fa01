"""ConvNeXt encoders (`tu-convnext_*`): smp's widths and block counts, timm's dilation plan and
stochastic depth, timm's checkpoint keys, and a zoo model on ConvNeXt under jit, grad and
bfloat16 (the smp and timm comparisons are in tests/conformance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import zoo
from jaxseg.models.encoders import convnext
from jaxseg.models.encoders.convnext import CONVNEXTS, ConvNeXtEncoder

# smp 0.6's `out_channels` for `tu-convnext_*`, and the blocks and parameters timm builds
# (`sum(p.numel() for p in get_encoder(name).parameters())`).
SMP = {
    "tu-convnext_tiny": ((3, 0, 96, 192, 384, 768), 18, 27_818_592),
    "tu-convnext_small": ((3, 0, 96, 192, 384, 768), 36, 49_453_152),
    "tu-convnext_base": ((3, 0, 128, 256, 512, 1024), 36, 87_564_416),
}


def abstract_encoder(name, **options):
    return nnx.eval_shape(lambda: ConvNeXtEncoder(name, rngs=nnx.Rngs(0), **options))


@pytest.mark.parametrize("name", sorted(CONVNEXTS))
def test_every_variant_has_smps_widths_blocks_and_parameters(name):
    out_channels, blocks, parameters = SMP[name]
    encoder = abstract_encoder(name)
    assert encoder.out_channels == out_channels
    assert sum(len(getattr(encoder.model, f"stages_{i}").blocks) for i in range(4)) == blocks
    assert sum(v.size for v in jax.tree.leaves(nnx.state(encoder, nnx.Param))) == parameters


def test_depth_builds_only_the_stages_it_uses():
    paths = [path for path, _ in nnx.to_flat_state(nnx.state(abstract_encoder("tu-convnext_tiny", depth=3)))]
    assert {path[1] for path in paths} == {"stem_0", "stem_1", "stages_0", "stages_1"}
    assert abstract_encoder("tu-convnext_tiny", depth=3).out_channels == (3, 0, 96, 192)


def test_dilation_plan_is_timms():
    # (stride, (first dilation, dilation)) of each stage: timm's ConvNeXt for its output_stride.
    assert convnext.stage_plan(32) == [(1, (1, 1)), (2, (1, 1)), (2, (1, 1)), (2, (1, 1))]
    assert convnext.stage_plan(16) == [(1, (1, 1)), (2, (1, 1)), (2, (1, 1)), (1, (1, 2))]
    assert convnext.stage_plan(8) == [(1, (1, 1)), (2, (1, 1)), (1, (1, 2)), (1, (2, 4))]
    images = jnp.zeros((1, 64, 64, 3))
    for output_stride in (32, 16, 8):
        encoder = ConvNeXtEncoder("tu-convnext_tiny", output_stride=output_stride, rngs=nnx.Rngs(0))
        shapes = [f.shape[1:3] for f in jax.eval_shape(lambda x, e=encoder: e(x), images)]
        assert shapes[-1] == (64 // output_stride, 64 // output_stride)
        assert shapes[2] == (16, 16)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(name="tu-convnext_huge"), "unknown ConvNeXt encoder 'tu-convnext_huge'"),
        (dict(depth=6), r"TimmUniversalEncoder depth should be in range \[1, 5\], got 6"),  # smp's words
        (dict(output_stride=4), r"Output stride should be 16 or 8, got 4\."),
    ],
)
def test_encoder_refuses_bad_options(options, message):
    options = dict(dict(name="tu-convnext_tiny"), **options)
    with pytest.raises(ValueError, match=message):
        ConvNeXtEncoder(options.pop("name"), rngs=nnx.Rngs(0), **options)


def test_timm_keys_map_to_smps_and_the_classifier_and_unbuilt_stages_are_ignored():
    state = {"stem.0.weight": 1, "stages.2.blocks.0.gamma": 2, "stages.3.downsample.1.bias": 3, "head.fc.weight": 4}
    renamed, ignore = convnext.timm_to_smp(state, depth=4)
    assert set(renamed) == {
        "model.stem_0.weight",
        "model.stages_2.blocks.0.gamma",
        "model.stages_3.downsample.1.bias",
        "head.fc.weight",
    }
    assert "head." in ignore and "model.stages_3." in ignore and "model.stages_2." not in ignore
    assert convnext.timm_to_smp({"model.stem_0.weight": 1})[0] == {"model.stem_0.weight": 1}  # smp's keys as they are


def test_stochastic_depth_is_timms_stagewise_rule_and_needs_a_key():
    rates = convnext.stage_drop_rates(CONVNEXTS["tu-convnext_tiny"], 0.1)
    assert [len(r) for r in rates] == [3, 3, 9, 3]
    assert rates[0][0] == 0.0 and rates[-1][-1] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(sum(rates, [])), 0.1 / 17)
    encoder = ConvNeXtEncoder("tu-convnext_tiny", depth=3, drop_path_rate=0.5, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    with pytest.raises(ValueError, match="stochastic depth.*key"):
        encoder(images, train=True)
    forward = nnx.jit(lambda encoder, x, key: encoder(x, train=True, key=key)[-1])
    a = forward(encoder, images, jax.random.key(1))
    np.testing.assert_array_equal(a, forward(encoder, images, jax.random.key(1)))
    assert not np.allclose(a, forward(encoder, images, jax.random.key(2)))
    np.testing.assert_array_equal(encoder(images)[-1], encoder(images, train=False)[-1])  # no drop in evaluation


def test_upernet_on_convnext_trains_under_jit_and_grad_in_bfloat16():
    model = zoo.create("upernet", encoder="tu-convnext_tiny", num_classes=5, decoder_channels=32, dtype=jnp.bfloat16)
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=True, key=jax.random.key(1))
        assert logits.dtype == jnp.bfloat16 and logits.shape == (2, 64, 64, 5)
        return jnp.mean(jnp.square(logits.astype(jnp.float32)))

    grads = jax.jit(jax.grad(loss))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # parameters stay float32
    norms = {path[-2]: float(jnp.linalg.norm(g)) for path, g in nnx.to_flat_state(grads) if path[-1] == "kernel"}
    assert all(np.isfinite(list(norms.values())))
    gamma = grads["encoder"]["model"]["stages_0"]["blocks"][0]["gamma"][...]
    assert float(jnp.abs(gamma).max()) > 0  # the layer scale learns
