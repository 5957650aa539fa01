"""LSTM and Transformer language models: shapes, causality, decoding, tying, dropout, dtypes, training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxseg.models.lstm_lm import LSTMLanguageModel
from jaxseg.models.transformer_lm import TransformerLanguageModel

VOCAB = 50


def lstm(**options):
    options = dict(embed_dim=32, hidden_dim=32, num_layers=2) | options
    return LSTMLanguageModel(VOCAB, rngs=nnx.Rngs(0), **options)


def transformer(**options):
    options = dict(d_model=32, num_layers=2, num_heads=4, max_len=16) | options
    return TransformerLanguageModel(VOCAB, rngs=nnx.Rngs(0), **options)


MODELS = {
    "lstm": lstm,
    "lstm-tied": functools.partial(lstm, tie_weights=True),
    "transformer-rope": transformer,
    "transformer-learned-untied": functools.partial(transformer, positions="learned", tie_weights=False),
}
# The default run covers one LSTM and one Transformer; the other variants run with -m slow.
SLOW_VARIANTS = ("lstm-tied", "transformer-learned-untied")
models = pytest.mark.parametrize(
    "make",
    [
        pytest.param(make, id=name, marks=[pytest.mark.slow] if name in SLOW_VARIANTS else [])
        for name, make in MODELS.items()
    ],
)


def random_tokens(seed=0, shape=(2, 12)):
    return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB)


def cross_entropy(model, tokens):
    logits = model.logits(model(tokens[:, :-1]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@models
def test_features_and_logits_have_the_documented_shapes(make):
    model = make()
    features = model(random_tokens())
    weight, bias = model.head()
    assert features.shape == (2, 12, 32) and features.dtype == jnp.float32
    assert weight.shape == (32, VOCAB) and bias.shape == (VOCAB,)
    logits = model.logits(features)
    assert logits.shape == (2, 12, VOCAB) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, features @ weight + bias, rtol=1e-5, atol=1e-5)


@models
def test_features_do_not_depend_on_later_tokens(make):
    model = make()
    tokens = random_tokens()
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % VOCAB)
    before, after = model(tokens), model(changed)
    np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not np.allclose(before[:, 5], after[:, 5], atol=1e-4)


def decode_sequence(model, tokens):
    """Features of `decode_step` run position by position under jit on split/merged state."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, tokens):
        model = nnx.merge(graphdef, state)
        steps = (tokens.T, jnp.arange(tokens.shape[1], dtype=jnp.int32))
        if isinstance(model, LSTMLanguageModel):
            start, step = model.initial_carry(tokens.shape[0]), lambda carry, s: model.decode_step(carry, s[0])
        else:
            start, step = model.init_cache(tokens.shape[0]), lambda cache, s: model.decode_step(cache, *s)
        _, features = jax.lax.scan(step, start, steps)
        return jnp.swapaxes(features, 0, 1)

    return run(state, tokens)


@models
def test_decode_step_reproduces_the_full_forward_pass(make):
    model = make()
    tokens = random_tokens(shape=(3, 10))
    np.testing.assert_allclose(decode_sequence(model, tokens), model(tokens), atol=1e-5)


@pytest.mark.parametrize("make", [lstm, transformer], ids=["lstm", "transformer"])
def test_tied_output_weight_is_the_embedding_itself(make):
    model = make(tie_weights=True)
    np.testing.assert_array_equal(model.head()[0], model.embedding.embedding[...].T)
    model.embedding.embedding[...] = jnp.zeros_like(model.embedding.embedding[...])
    assert not np.any(model.head()[0])
    assert not hasattr(model, "output")


def test_invalid_configurations_raise_errors_naming_the_argument():
    with pytest.raises(ValueError, match="embed_dim=16, hidden_dim=32"):
        LSTMLanguageModel(VOCAB, embed_dim=16, hidden_dim=32, tie_weights=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positions"):
        transformer(positions="sinusoidal")
    with pytest.raises(ValueError, match="num_heads must divide d_model"):
        transformer(num_heads=5)
    with pytest.raises(ValueError, match="even head dim"):
        transformer(d_model=36, num_heads=4)
    transformer(d_model=36, num_heads=4, positions="learned")
    with pytest.raises(ValueError, match="max_len=16; got 17"):
        transformer()(random_tokens(shape=(1, 17)))
    with pytest.raises(ValueError, match="max_len=16; got 32"):
        transformer().init_cache(1, max_len=32)


@models
def test_dropout_depends_on_the_key_only_in_training(make):
    model = make(dropout=0.3)
    tokens = random_tokens()
    evaluation = model(tokens)
    np.testing.assert_array_equal(model(tokens, key=jax.random.key(1)), evaluation)
    first = model(tokens, train=True, key=jax.random.key(1))
    np.testing.assert_array_equal(model(tokens, train=True, key=jax.random.key(1)), first)
    assert not np.allclose(first, evaluation, atol=1e-3)
    assert not np.allclose(model(tokens, train=True, key=jax.random.key(2)), first, atol=1e-3)


@models
def test_bfloat16_compute_gives_finite_float32_logits_and_keeps_float32_parameters(make):
    model = make(dtype=jnp.bfloat16)
    features = model(random_tokens())
    assert features.dtype == jnp.bfloat16
    logits = model.logits(features)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    reference = make()
    np.testing.assert_allclose(logits, reference.logits(reference(random_tokens())), atol=0.1)


@models
def test_gradients_reach_every_parameter(make):
    model = make()
    grads = nnx.jit(nnx.grad(cross_entropy))(model, random_tokens())
    for path, grad in jax.tree_util.tree_leaves_with_path(nnx.state(grads)):
        assert np.all(np.isfinite(grad)) and np.any(grad), jax.tree_util.keystr(path)


@pytest.mark.slow  # tests/train/test_language.py trains both models in the default run
@pytest.mark.parametrize("make", [lstm, transformer], ids=["lstm", "transformer"])
def test_adam_learns_a_repeated_pattern(make):
    model = make(dropout=0.1)
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    pattern = jnp.array([3, 14, 15, 9, 26])
    tokens = jnp.stack([jnp.roll(jnp.tile(pattern, 4)[:16], -shift) for shift in range(4)])

    @jax.jit
    def train_step(params, opt_state, key):
        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            logits = model.logits(model(tokens[:, :-1], train=True, key=key))
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for key in jax.random.split(jax.random.key(0), 30):
        params, opt_state, loss = train_step(params, opt_state, key)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses
    assert cross_entropy(nnx.merge(graphdef, params), tokens) < 0.3 * losses[0]


def reference_lstm(x, w_ih, w_hh, b):
    """Textbook LSTM, one time step at a time, in float64 numpy; gates (i, f, g, o)."""
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    hidden = w_hh.shape[0]
    h, c = np.zeros((x.shape[0], hidden)), np.zeros((x.shape[0], hidden))
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_ih + h @ w_hh + b
        i, f, g, o = (z[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def test_lstm_layer_follows_the_gate_equations():
    layer = lstm(embed_dim=24).layers[0]
    w_ih, w_hh, b = (np.asarray(p[...], np.float64) for p in (layer.w_ih, layer.w_hh, layer.b))
    np.testing.assert_array_equal(b[32:64], 1.0)
    x = np.asarray(jax.random.normal(jax.random.key(3), (2, 9, 24)))
    np.testing.assert_allclose(layer(jnp.asarray(x)), reference_lstm(x, w_ih, w_hh, b), atol=1e-5)


def plain_scan_lstm(layer, x):
    """The layer's forward as a plain `lax.scan` of its `step`, for JAX's own autodiff to differentiate."""
    z = jnp.swapaxes(layer.project(x), 0, 1)

    def scan_step(carry, z_t):
        carry = layer.step(carry, z_t)
        return carry, carry[0]

    _, h = jax.lax.scan(scan_step, layer.initial_carry(x.shape[0]), z)
    return jnp.swapaxes(h, 0, 1).astype(layer.dtype)


@pytest.mark.parametrize(
    "dtype, rtol",
    [(jnp.float32, 1e-5), pytest.param(jnp.bfloat16, 1e-2, marks=pytest.mark.slow)],
    ids=["float32", "bfloat16"],
)
def test_lstm_layer_gradients_match_autodiff_of_a_plain_scan(dtype, rtol):
    layer = lstm(embed_dim=24, dtype=dtype).layers[0]
    x = jax.random.normal(jax.random.key(3), (3, 11, 24)).astype(dtype)
    weights = jax.random.normal(jax.random.key(4), (3, 11, 32))

    def loss(forward):
        return lambda layer, x: jnp.sum(forward(layer, x).astype(jnp.float32) * weights)

    got = nnx.grad(loss(lambda layer, x: layer(x)), argnums=(0, 1))(layer, x)
    want = nnx.grad(loss(plain_scan_lstm), argnums=(0, 1))(layer, x)
    got_leaves, want_leaves = jax.tree_util.tree_leaves_with_path(nnx.state(got)), jax.tree.leaves(nnx.state(want))
    assert len(got_leaves) == len(want_leaves) == 4  # w_ih, w_hh, b and the input
    for (path, g), w in zip(got_leaves, want_leaves):
        assert g.dtype == w.dtype, jax.tree_util.keystr(path)
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max(), err_msg=jax.tree_util.keystr(path))
