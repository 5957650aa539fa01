"""Generate text with a trained language model.

    python -m jaxseg.generate --workdir=DIR --prompt="And God said" --tokens=200 --temperature=0.8 [--top_k=50] [--top_p=0.95]

Decodes one token at a time: the LSTM carries its state, the Transformer a KV cache. When a
Transformer's context (its `max_len`) is full, the cache is rebuilt from the last half of the
text, so any number of tokens can be generated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from flax import nnx

FLAGS = flags.FLAGS


class Decoder:
    """Jitted one-token steps of a restored LM: `start()` -> state, `step(state, token,
    position)` -> (state, logits `[V]`). `context` is the longest position it can decode
    at (None: unbounded)."""

    def __init__(self, graphdef, variables):
        self.graphdef, self.variables = graphdef, tuple(variables)  # e.g. (params, other state)
        model = nnx.merge(graphdef, *self.variables)
        self.recurrent = hasattr(model, "initial_carry")
        self.context = None if self.recurrent else model.max_len
        self._start = jax.jit(self._start_fn)
        self._step = jax.jit(self._step_fn)

    def _start_fn(self, variables):
        model = nnx.merge(self.graphdef, *variables)
        return model.initial_carry(1) if self.recurrent else model.init_cache(1)

    def _step_fn(self, variables, state, token, position):
        model = nnx.merge(self.graphdef, *variables)
        tokens = jnp.reshape(token, (1,)).astype(jnp.int32)
        if self.recurrent:
            state, features = model.decode_step(state, tokens)
        else:
            state, features = model.decode_step(state, tokens, position)
        return state, model.logits(features)[0]

    def start(self):
        return self._start(self.variables)

    def step(self, state, token: int, position: int):
        return self._step(self.variables, state, np.int32(token), np.int32(position))


def generate_ids(
    decoder: Decoder,
    prompt_ids,
    *,
    tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[int]:
    """`tokens` new token ids continuing `prompt_ids` (at least one id)."""
    from jaxseg.ops.sampling import sample_token

    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    sample = jax.jit(functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p))
    history = list(prompt_ids)

    def prefill(ids):
        state, logits = decoder.start(), None
        for position, token in enumerate(ids):
            state, logits = decoder.step(state, token, position)
        return state, logits, len(ids)

    keep = len(prompt_ids) if decoder.context is None else min(len(prompt_ids), decoder.context)
    state, logits, position = prefill(prompt_ids[-keep:])
    new = []
    key = jax.random.key(seed)
    for index in range(tokens):
        token = int(sample(jax.random.fold_in(key, index), logits))
        new.append(token)
        history.append(token)
        if index == tokens - 1:
            break
        if decoder.context is not None and position == decoder.context:  # full: restart from the last half
            state, logits, position = prefill(history[-(decoder.context // 2) :])
            continue
        state, logits = decoder.step(state, token, position)
        position += 1
    return new


def generate_text(
    workdir,
    prompt: str,
    *,
    tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    step="best",
) -> str:
    """The prompt followed by `tokens` sampled tokens, decoded to text."""
    from jaxseg.data.text import load_tokenizer
    from jaxseg.train.inference import restore

    restored = restore(workdir, step)
    if restored.config.get("task") != "language":
        raise ValueError(f"{workdir} holds a {restored.config.get('task', 'segmentation')} model, not a language model")
    tokenizer = load_tokenizer(workdir, restored.config.data.tokenizer)
    decoder = Decoder(restored.graphdef, (restored.state.params, restored.state.model_state))
    prompt_ids = list(tokenizer.encode(prompt or "\n"))
    new = generate_ids(decoder, prompt_ids, tokens=tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return (prompt or "") + tokenizer.decode(new)


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A language model's training directory.", required=True)
    flags.DEFINE_string("prompt", "", "Text to continue (empty: start from a new line).")
    flags.DEFINE_integer("tokens", 200, "Number of tokens to generate.")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature (0: greedy).")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
    flags.DEFINE_float("top_p", 1.0, "Sample within the smallest set of this probability (1: all).")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("step", "best", '"best" (lowest validation perplexity), "latest" or a step number.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    print(
        generate_text(
            FLAGS.workdir,
            FLAGS.prompt,
            tokens=FLAGS.tokens,
            temperature=FLAGS.temperature,
            top_k=FLAGS.top_k,
            top_p=FLAGS.top_p,
            seed=FLAGS.seed,
            step=FLAGS.step,
        )
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
