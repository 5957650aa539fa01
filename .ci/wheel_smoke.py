"""Run in a fresh venv holding only the built wheel (no extras): the losses work there."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxseg
from jaxseg import losses

for package in ("flax", "optax", "orbax", "grain", "matplotlib", "tokenizers"):  # scipy comes with jax
    assert importlib.util.find_spec(package) is None, f"{package} came with `pip install jaxseg`"

logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)), jnp.float32)
labels = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, 4, 4)), jnp.int32)
value, grad = jax.value_and_grad(lambda x: losses.cross_entropy(x, labels) + losses.dice_loss(x, labels))(logits)
log_p = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
ce = -float(jnp.mean(jnp.take_along_axis(log_p, labels[..., None], -1)))
assert math.isfinite(float(value)) and float(value) > ce > 0, (float(value), ce)  # dice adds a positive term
assert grad.shape == logits.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
print(f"jaxseg {jaxseg.__version__} from the wheel: loss {float(value):.4f} (cross-entropy {ce:.4f}), gradient ok")
