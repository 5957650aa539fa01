"""The optimiser from config and the pure train step's handling of non-finite updates."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.tasks import segmentation
from jaxseg.train.optim import current_learning_rate, l1_penalty, learning_rate_schedule, make_optimizer, muon_labels
from jaxseg.train.state import init_state, model_graphdef
from jaxseg.train.step import train_step


def optim_config(**changes):
    from configs import seg_shapes_unet

    optim = seg_shapes_unet.get_config().optim
    optim.update(changes)
    return optim


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(schedule="constant"), {0: 4e-3, 500: 4e-3}),
        (dict(schedule="exponential", decay_steps=100, decay_rate=0.5), {0: 4e-3, 100: 2e-3, 200: 1e-3}),
        (dict(schedule="cosine", end_fraction=0.0), {0: 4e-3, 500: 2e-3, 1000: 0.0}),
        (dict(schedule="warmup_cosine", warmup_steps=100, end_fraction=0.0), {0: 0.0, 50: 2e-3, 100: 4e-3, 1000: 0.0}),
        (dict(schedule="piecewise", boundaries=(100, 300), scales=(0.1, 0.5)), {0: 4e-3, 150: 4e-4, 400: 2e-4}),
    ],
)
def test_schedules(changes, expected):
    schedule = learning_rate_schedule(optim_config(**changes), total_steps=1000)
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-9)


def test_unknown_schedule_and_optimizer_are_errors():
    with pytest.raises(ValueError, match="config.optim.schedule must be one of"):
        learning_rate_schedule(optim_config(schedule="linear"), 10)
    with pytest.raises(ValueError, match="config.optim.name must be one of"):
        make_optimizer(optim_config(name="adagrad"), 1000)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "muon"])
def test_decoupled_weight_decay_touches_kernels_only(name):
    params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}
    tx = make_optimizer(
        optim_config(name=name, schedule="constant", learning_rate=0.1, weight_decay=0.5, clip_norm=0.0), 10
    )
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zero, state, params)
    np.testing.assert_allclose(updates["bias"], 0.0)
    expected = 0.0 if name == "adam" else -0.1 * 0.5  # adam has no decoupled decay
    np.testing.assert_allclose(updates["kernel"], expected, atol=1e-7)
    assert float(current_learning_rate(state)) == pytest.approx(0.1)


def test_muon_takes_the_hidden_matrices_and_leaves_embeddings_heads_and_vectors_to_adam():
    from flax import nnx

    from jaxseg.models.lstm_lm import LSTMLanguageModel
    from jaxseg.models.transformer_lm import TransformerLanguageModel
    from jaxseg.models.unet import UNet

    def on_muon(model):
        labels = muon_labels(nnx.state(model, nnx.Param))
        return {
            jax.tree_util.keystr(path) for path, label in jax.tree_util.tree_leaves_with_path(labels) if label == "muon"
        }

    transformer = TransformerLanguageModel(
        50, d_model=16, num_layers=2, num_heads=2, max_len=8, positions="learned", rngs=nnx.Rngs(0)
    )
    expected = {
        f"['blocks'][{i}]{name}['kernel'].value"
        for i in range(2)
        for name in ("['attention']['qkv']", "['attention']['out']", "['mlp_in']", "['mlp_out']")
    }
    assert on_muon(transformer) == expected  # not the token or position embeddings, biases or norms
    lstm = LSTMLanguageModel(50, embed_dim=8, hidden_dim=8, num_layers=1, rngs=nnx.Rngs(0))
    assert on_muon(lstm) == {"['layers'][0]['w_ih'].value", "['layers'][0]['w_hh'].value"}  # not the untied output
    unet = on_muon(UNet(num_classes=3, depth=2, base_width=4, rngs=nnx.Rngs(0)))
    assert unet and all(name.endswith("['kernel'].value") for name in unet)  # 4-D convolution kernels included


def test_muon_orthogonalises_matrix_updates_at_adam_rms_and_runs_adam_elsewhere():
    """First step from a gradient G: the matrix moves along G's polar factor U V^T with the RMS
    0.2 * lr of an Adam step (Newton-Schulz leaves singular values in about [0.7, 1.2]); the
    embedding and the bias take Adam's first step, -lr * sign(g)."""
    lr = 0.01
    rng = np.random.default_rng(0)
    params = {
        "embedding": {"embedding": jnp.zeros((12, 6))},
        "dense": {"kernel": jnp.zeros((6, 10)), "bias": jnp.zeros(10)},
        "conv": {"kernel": jnp.zeros((3, 3, 2, 4))},
    }
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    tx = make_optimizer(
        optim_config(
            name="muon", schedule="constant", learning_rate=lr, weight_decay=0.0, clip_norm=0.0, momentum=0.95
        ),
        10,
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    for kernel, fan_in, fan_out in ((updates["dense"]["kernel"], 6, 10), (updates["conv"]["kernel"], 18, 4)):
        matrix = -np.asarray(kernel).reshape(fan_in, fan_out) / (lr * 0.2 * max(fan_in, fan_out) ** 0.5)
        singular = np.linalg.svd(matrix, compute_uv=False)
        assert singular.min() > 0.6 and singular.max() < 1.3, singular
        g = np.asarray(grads["dense"]["kernel"] if fan_in == 6 else grads["conv"]["kernel"]).reshape(fan_in, fan_out)
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        polar = u @ vt
        assert np.sum(matrix * polar) / (np.linalg.norm(matrix) * np.linalg.norm(polar)) > 0.97
        assert float(np.sqrt(np.mean(np.asarray(kernel) ** 2))) == pytest.approx(0.2 * lr, rel=0.3)
    for name, leaf in (("embedding", ("embedding", "embedding")), ("bias", ("dense", "bias"))):
        np.testing.assert_allclose(
            updates[leaf[0]][leaf[1]], -lr * np.sign(grads[leaf[0]][leaf[1]]), rtol=1e-4, err_msg=name
        )


@pytest.mark.parametrize("split", [False, True])
def test_muon_split_fused_orthogonalises_each_gate_or_projection_block(split):
    """With `muon_split_fused`, each of the LSTM's 4 gate blocks and attention's 3 q/k/v blocks
    moves along its own polar factor, at the Adam RMS of a `[in, out / k]` matrix; without it,
    the fused matrix is one map."""
    lr, hidden = 0.01, 5
    rng = np.random.default_rng(1)
    params = {
        "cell": {"w_hh": jnp.zeros((hidden, 4 * hidden))},
        "attention": {"qkv": {"kernel": jnp.zeros((6, 3 * 4))}},
    }
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    tx = make_optimizer(
        optim_config(
            name="muon",
            schedule="constant",
            learning_rate=lr,
            weight_decay=0.0,
            clip_norm=0.0,
            momentum=0.95,
            muon_split_fused=split,
        ),
        10,
    )
    updates, state = tx.update(grads, tx.init(params), params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    for update, grad, blocks in (
        (updates["cell"]["w_hh"], grads["cell"]["w_hh"], 4),
        (updates["attention"]["qkv"]["kernel"], grads["attention"]["qkv"]["kernel"], 3),
    ):
        fan_in, width = update.shape[0], update.shape[1] // blocks
        for b in range(blocks):
            block = -np.asarray(update[:, b * width : (b + 1) * width])
            g = np.asarray(grad[:, b * width : (b + 1) * width])
            u, _, vt = np.linalg.svd(g, full_matrices=False)
            cosine = np.sum(block * (u @ vt)) / (np.linalg.norm(block) * np.linalg.norm(u @ vt))
            if split:
                singular = np.linalg.svd(block / (lr * 0.2 * max(fan_in, width) ** 0.5), compute_uv=False)
                assert singular.min() > 0.6 and singular.max() < 1.3, singular
                assert cosine > 0.97
            else:
                assert cosine < 0.97  # the block is a slice of the whole matrix's polar factor
    # the second step runs on the blocked momentum
    tx.update(grads, state, params)


def test_l1_penalty_sums_kernels():
    assert float(l1_penalty({"kernel": -jnp.ones((2, 2)), "bias": jnp.ones(2)})) == 4.0


def test_a_non_finite_step_changes_nothing_but_the_counters():
    from configs import seg_shapes_unet

    config = seg_shapes_unet.get_config()
    config.model.update(depth=2, base_width=4)
    make_model = segmentation.model_factory(config, 5)
    tx = make_optimizer(config.optim, 1000)
    state = init_state(make_model, tx, 0)
    hp = segmentation.loss_hyperparameters(config)
    step = jax.jit(
        functools.partial(
            train_step, graphdef=model_graphdef(make_model), tx=tx, task=segmentation.Task(config), seed=0
        )
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8),
        "label": rng.integers(0, 5, (2, 16, 16)).astype(np.int32),
    }
    good, metrics = step(state, batch, hp)
    assert int(metrics["skipped"]) == 0
    bad, metrics = step(good, batch, dict(hp, l1=jnp.float32(jnp.nan)))
    assert int(metrics["skipped"]) == 1 and int(bad.step) == int(good.step) + 1
    for before, after in zip(
        jax.tree.leaves((good.params, good.model_state)), jax.tree.leaves((bad.params, bad.model_state))
    ):
        np.testing.assert_array_equal(before, after)
    assert int(bad.opt_state.notfinite_count) == 1
    recovered, metrics = step(bad, batch, hp)
    assert int(metrics["skipped"]) == 0 and int(recovered.opt_state.notfinite_count) == 0
