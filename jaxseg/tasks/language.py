"""Language modelling: binds an LSTM or Transformer LM, the token loss, metrics and text data.

Batches hold windows `tokens` `[B, T + 1]`; the model reads `tokens[:, :-1]` and predicts
`tokens[:, 1:]`. The head's loss is `linear_cross_entropy` (streaming: the `[B * T, V]`
logits never exist) or `token_cross_entropy` of materialised logits (`config.loss.head`).
Metrics: loss, perplexity `exp(nll)`, bits per token `nll / ln 2` and top-1 token accuracy.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseg import losses
from jaxseg.data import text
from jaxseg.data.pipeline import process_share
from jaxseg.models import LSTMLanguageModel, TransformerLanguageModel
from jaxseg.models.dense import output_logits
from jaxseg.tasks import base, model_options

MODELS = {"lstm": LSTMLanguageModel, "transformer": TransformerLanguageModel}
HEADS = ("streaming", "logits")


class Data(NamedTuple):
    """The training iterator (checkpointable), the padded validation batches, the tokeniser
    and the validation token stream (for baselines)."""

    train: Any
    val: Any
    tokenizer: Any
    val_tokens: Any


def token_streams(config, workdir, *, is_main: bool = True, barrier=None):
    """(tokeniser, training tokens, validation tokens) of `config.data`; a BPE tokeniser is
    trained on the training documents once and saved as `workdir/tokenizer.json`."""
    data = config.data
    documents = text.corpus_documents(data.corpus)
    train_docs, val_docs = text.split_documents(documents, val_fraction=data.val_fraction, seed=data.split_seed)
    tokenizer = text.make_tokenizer(
        data.tokenizer, data.vocab_size, train_docs, workdir, is_main=is_main, barrier=barrier
    )
    return tokenizer, text.encode_documents(tokenizer, train_docs), text.encode_documents(tokenizer, val_docs)


def eval_seq_len(data_config) -> int:
    """Length of the held-out windows: `data.eval_seq_len`, or the training `seq_len` when 0
    (or absent, as in configs saved before the key existed). A recurrent model carries its
    state through any length, so it can be scored on longer contexts than it was trained on."""
    length = data_config.get("eval_seq_len", 0) or data_config.seq_len
    if length < 1:
        raise ValueError(f"config.data.eval_seq_len must be >= 1 or 0 (the training seq_len); got {length}")
    return length


def make_data(config, workdir) -> Data:
    """Token streams and grain pipelines of fixed-length windows for this process."""
    from jax.experimental import multihost_utils

    barrier = (lambda: multihost_utils.sync_global_devices("tokenizer")) if jax.process_count() > 1 else None
    tokenizer, train_tokens, val_tokens = token_streams(
        config, workdir, is_main=jax.process_index() == 0, barrier=barrier
    )
    shared = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train = iter(
        text.train_dataset(
            train_tokens,
            seq_len=config.data.seq_len,
            batch_size=process_share(config.train, "batch_size"),
            seed=config.seed,
            num_threads=config.data.num_threads,
            **shared,
        )
    )
    val = text.eval_batches(
        val_tokens,
        seq_len=eval_seq_len(config.data),
        batch_size=process_share(config.train, "eval_batch_size"),
        **shared,
    )
    return Data(train, val, tokenizer, val_tokens)


def vocab_size(config) -> int:
    """Token ids the model embeds and predicts: 256 for bytes, else the BPE vocabulary size."""
    return 256 if config.data.tokenizer == "bytes" else config.data.vocab_size


def model_factory(config):
    """`make_model(rngs=...)` for `config.model` (name and keyword options)."""
    model, options = model_options(config, MODELS, convolutional=False)
    if model is TransformerLanguageModel:
        options.setdefault("max_len", max(config.data.seq_len, eval_seq_len(config.data)))
    return functools.partial(model, vocab_size(config), **options)


def hyperparameters(config, data: Data | None = None) -> dict:
    """The train step's `hp`: the loss options as arrays, and the L1 coefficient."""
    return {
        "label_smoothing": jnp.float32(config.loss.label_smoothing),
        "z_loss": jnp.float32(config.loss.z_loss),
        "l1": jnp.float32(config.optim.l1),
    }


class Task(base.Task):
    """Language modelling for the generic train and eval steps and the loop."""

    key_metric = "perplexity"
    higher_is_better = False
    throughput_unit = "tokens"
    statistics = ("correct", "tokens")
    draws_predictions = False

    def __init__(self, config):
        self.config = config
        if config.loss.head not in HEADS:
            raise ValueError(f"config.loss.head must be one of {HEADS}; got {config.loss.head!r}")
        self.head = config.loss.head
        self.chunk_size = tuple(config.loss.chunk_size)
        self.seq_len = config.data.seq_len
        self.vocab_size = vocab_size(config)

    # Setup: the data, model and hyperparameters of `self.config` (`jaxseg.tasks.base.Task`).
    def make_data(self, workdir) -> Data:
        return make_data(self.config, workdir)

    def model_factory(self):
        return model_factory(self.config)

    def hyperparameters(self, data: Data | None = None) -> dict:
        return hyperparameters(self.config, data)

    def units_per_batch(self, batch_size: int) -> int:
        return batch_size * self.seq_len

    def apply(self, model, batch, *, train: bool, key=None):
        """The final features `[B, T, D]` and the output projection (weight `[D, V]`, bias)."""
        tokens = batch["tokens"]
        if tokens.ndim != 2:
            raise ValueError(f"batch['tokens'] must be [batch, seq_len + 1]; got shape {tuple(tokens.shape)}")
        features = model(tokens[:, :-1], train=train, key=key)
        weight, bias = model.head()
        return {"features": features, "weight": weight, "bias": bias}

    def _token_loss(self, outputs, batch, hp, mask):
        targets = batch["tokens"][:, 1:]
        options = dict(mask=mask, label_smoothing=hp["label_smoothing"], z_loss=hp["z_loss"])
        if self.head == "streaming":
            return losses.linear_cross_entropy(
                outputs["features"],
                outputs["weight"],
                targets,
                bias=outputs["bias"],
                chunk_size=self.chunk_size,
                **options,
            )
        logits = output_logits(outputs["features"], outputs["weight"], outputs["bias"])
        return losses.token_cross_entropy(logits, targets, **options)

    def loss(self, outputs, batch, hp, *, mask=None):
        """(total, terms): the token loss (smoothing and z-loss included), its parts, and the
        counts of top-1 hits and of tokens (by-products of the loss: no extra pass)."""
        result = self._token_loss(outputs, batch, hp, mask)
        return result.loss, {"nll": result.nll, "z": result.z_loss, "correct": result.correct, "tokens": result.tokens}

    def metrics(self, outputs, batch, *, mask=None):
        """Nothing beyond the loss's statistics."""
        return {}

    def predict(self, outputs):
        """The most likely next token at every position `[B, T]`."""
        logits = output_logits(outputs["features"], outputs["weight"], outputs["bias"])
        return jnp.argmax(logits, axis=-1)

    def check_batch(self, batch, step) -> None:
        """`checkify` checks of the batch inside the compiled step (`config.train.checkify`)."""
        from jax.experimental import checkify

        tokens = batch["tokens"]
        checkify.check(
            jnp.all((tokens >= 0) & (tokens < self.vocab_size)),
            f"step {{step}}: token ids outside [0, {self.vocab_size}): min {{low}}, max {{high}}",
            step=step,
            low=jnp.min(tokens),
            high=jnp.max(tokens),
        )

    def eval_weights(self, batch):
        """(mask over the targets, number of valid tokens): padding rows count for nothing."""
        targets = batch["tokens"][:, 1:]
        mask = jnp.broadcast_to(batch["valid"][:, None], targets.shape)
        return mask, jnp.sum(mask.astype(jnp.float32))

    def scores(self, summary: dict, statistics: dict) -> dict:
        """Host side: perplexity and bits per token of the mean nll, top-1 accuracy."""
        nll = summary["loss_nll"]
        tokens = float(statistics["tokens"])
        return {
            "perplexity": math.exp(min(nll, 700.0)),
            "bits_per_token": nll / math.log(2),
            "accuracy": float(statistics["correct"]) / tokens if tokens else 0.0,
        }

    def describe(self, metrics: dict) -> str:
        return (
            f"perplexity {metrics['perplexity']:.2f}, {metrics['bits_per_token']:.3f} bits/token, "
            f"accuracy {metrics['accuracy']:.4f}"
        )

    def progress(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.3f}", "ppl": f"{metrics['perplexity']:.1f}"}
