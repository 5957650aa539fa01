"""UNet and FCN: shapes, options, modes and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.models import FCN, UNet


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(norm="group", upsampling="transpose"),
        dict(norm="none", depth=2, dropout=0.2),
    ],
)
def test_unet_predicts_per_pixel(options):
    model = UNet(5, base_width=4, rngs=nnx.Rngs(0), **options)
    logits = model(jnp.ones((2, 32, 48, 3)), train=True, key=jax.random.key(0))
    assert logits.shape == (2, 32, 48, 5)
    assert np.all(np.isfinite(logits))


def test_fcn_predicts_per_pixel_from_extra_channels():
    model = FCN(3, in_channels=4, stages=3, base_width=4, rngs=nnx.Rngs(0))
    assert model(jnp.ones((1, 16, 24, 4))).shape == (1, 16, 24, 3)


def test_bfloat16_compute_keeps_float32_parameters():
    model = UNet(3, base_width=4, depth=2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert model(jnp.ones((1, 16, 16, 3))).dtype == jnp.bfloat16
    params = nnx.state(model, nnx.Param)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    model = UNet(3, base_width=4, depth=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3)) * 3 + 1
    before = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    eval_out = model(x, train=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(nnx.state(model, nnx.BatchStat))))
    train_out = model(x, train=True)
    after = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))
    assert not np.allclose(eval_out, train_out)


def test_dropout_depends_on_the_key_only_in_training():
    model = UNet(3, base_width=4, depth=2, norm="none", dropout=0.5, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 16, 16, 3))
    a = model(x, train=True, key=jax.random.key(1))
    b = model(x, train=True, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x, train=False), model(x, train=False, key=jax.random.key(3)))


def test_sizes_not_divisible_by_the_stride_are_an_error():
    model = UNet(3, base_width=4, depth=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 8; got \\(20, 16\\)"):
        model(jnp.ones((1, 20, 16, 3)))
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(3, norm="layer", rngs=nnx.Rngs(0))
