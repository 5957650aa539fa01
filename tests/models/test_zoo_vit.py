"""ViT encoders (`tu-vit_*_patch16_*`) and DPT: timm's parameter counts, smp's block sampling,
the fixed input grid, stochastic depth, and DPT under jit, grad and bfloat16 (the smp and timm
comparisons are in tests/conformance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import zoo
from jaxseg.models.encoders import vit
from jaxseg.models.encoders.vit import ViTEncoder

# `sum(p.numel() for p in timm.create_model(name).parameters())`, its ImageNet head included.
TIMM_PARAMETERS = {
    "tu-vit_tiny_patch16_224": 5_717_416,
    "tu-vit_small_patch16_224": 22_050_664,
    "tu-vit_base_patch16_384": 86_859_496,
    "tu-vit_large_patch16_224": 304_326_632,
}
SMALL = dict(img_size=(64, 96), decoder_intermediate_channels=(8, 8, 16, 16), decoder_fusion_channels=8)


def abstract_encoder(name, **options):
    return nnx.eval_shape(lambda: ViTEncoder(name, rngs=nnx.Rngs(0), **options))


@pytest.mark.parametrize("name", sorted(TIMM_PARAMETERS))
def test_every_variant_has_timms_parameters(name):
    encoder = abstract_encoder(name)
    assert sum(v.size for v in jax.tree.leaves(nnx.state(encoder, nnx.Param))) == TIMM_PARAMETERS[name]
    assert encoder.out_channels == (vit.VITS[name].embed_dim,) * 4 and encoder.output_stride == 16


def test_blocks_are_sampled_as_smp_samples_them():
    assert vit.block_indices(None, 12, 4) == (2, 5, 8, 11)
    assert vit.block_indices(None, 24, 4) == (5, 11, 17, 23)
    assert vit.block_indices(None, 12, 3) == (3, 7, 11)
    assert vit.block_indices([-1, 3], 12, 2) == (3, 11)  # timm returns them in block order
    with pytest.raises(ValueError, match="name a block twice"):
        vit.block_indices([3, -9], 12, 2)


def test_pretrained_tag_is_dropped_and_other_architectures_refuse_a_vit():
    assert abstract_encoder("tu-vit_tiny_patch16_224.augreg_in21k").depth == 4
    with pytest.raises(ValueError, match="DPT only"):
        zoo.create("unet", encoder="tu-vit_tiny_patch16_224", num_classes=2)


def test_input_must_match_the_position_grid():
    model = zoo.create("dpt", encoder="tu-vit_tiny_patch16_224", num_classes=2, **SMALL)
    with pytest.raises(ValueError, match=r"Input width \(64\) doesn't match model \(96\)"):
        jax.eval_shape(lambda x: model(x), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="divisible by 16"):
        jax.eval_shape(lambda x: model(x), jnp.zeros((1, 64, 40, 3)))


def test_stochastic_depth_needs_a_key_in_training():
    model = zoo.create("dpt", encoder="tu-vit_tiny_patch16_224", num_classes=2, drop_path_rate=0.2, **SMALL)
    images = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    with pytest.raises(ValueError, match="stochastic depth"):
        model(images, train=True)
    one, two = (model(images, train=True, key=jax.random.key(k)) for k in (1, 2))
    assert not np.allclose(one, two)  # the blocks and the head's dropout draw from the key
    np.testing.assert_array_equal(model(images), model(images))


def test_dpt_trains_under_jit_and_grad_in_bfloat16():
    model = zoo.create("dpt", encoder="tu-vit_tiny_patch16_224", num_classes=3, dtype=jnp.bfloat16, **SMALL)
    images = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=True, key=jax.random.key(1))
        assert logits.shape == (2, 64, 96, 3) and logits.dtype == jnp.bfloat16
        return jnp.mean(jnp.square(logits.astype(jnp.float32)))

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    flat = dict(nnx.to_flat_state(grads))
    assert float(jnp.abs(flat[("encoder", "model", "blocks", 0, "attn", "qkv", "kernel")][...]).max()) > 0
    # timm's final norm and classifier feed nothing in DPT: held for the checkpoint only.
    assert float(jnp.abs(flat[("encoder", "model", "head", "kernel")][...]).max()) == 0
