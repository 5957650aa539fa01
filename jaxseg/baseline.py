"""The n-gram baseline of a language-model config: `python -m jaxseg.baseline --config=configs/lm_lstm.py --workdir=DIR`.

Fits n-gram models (`jaxseg.models.ngram`: add-k and interpolated Kneser-Ney, several orders)
on the config's training tokens and scores exactly the held-out tokens the neural LM is
evaluated on (every token of the validation windows after the first). Uses the tokeniser
saved in `WORKDIR` (training one there if the LM has not run yet). Prints a table and writes
`WORKDIR/ngram.json`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def scored_tokens(config, val_tokens):
    """The validation tokens the LM predicts: windows of `eval_seq_len` from the stream's
    start, all tokens after the first up to the last whole window."""
    from jaxseg.tasks.language import eval_seq_len

    seq_len = eval_seq_len(config.data)
    windows = (len(val_tokens) - 1) // seq_len
    return slice(1, windows * seq_len + 1)


def ngram_table(config, workdir, *, orders=(2, 3, 4, 5), add_k: float = 0.01) -> list[dict]:
    """Held-out perplexity and bits per token of add-k and Kneser-Ney n-grams of `orders`."""
    from jaxseg.models.ngram import NGramModel
    from jaxseg.tasks.language import token_streams

    Path(workdir).mkdir(parents=True, exist_ok=True)
    tokenizer, train_tokens, val_tokens = token_streams(config, workdir)
    scored = scored_tokens(config, val_tokens)
    rows = []
    for order in orders:
        for smoothing, options in (("add_k", dict(k=add_k)), ("kneser_ney", {})):
            try:
                start = time.perf_counter()
                model = NGramModel.fit(
                    train_tokens, vocab_size=tokenizer.vocab_size, order=order, smoothing=smoothing, **options
                )
                log_probs = model.log_probs(val_tokens)[scored]
            except ValueError as error:  # e.g. V**order beyond int64 keys
                print(f"order {order} {smoothing}: skipped ({error})")
                continue
            nll = float(-log_probs.mean())
            rows.append(
                dict(
                    model=f"{order}-gram {smoothing}" + (f" (k={add_k})" if smoothing == "add_k" else ""),
                    order=order,
                    smoothing=smoothing,
                    perplexity=math.exp(nll),
                    bits_per_token=nll / math.log(2),
                    tokens=int(log_probs.size),
                    seconds=time.perf_counter() - start,
                )
            )
    (Path(workdir) / "ngram.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "A language-model config (configs/lm_*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "The LM's workdir (its tokenizer.json is reused).", required=True)
    flags.DEFINE_list("orders", ["2", "3", "4", "5"], "n-gram orders.")
    flags.DEFINE_float("add_k", 0.01, "k of add-k smoothing.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = ngram_table(FLAGS.config, FLAGS.workdir, orders=[int(o) for o in FLAGS.orders], add_k=FLAGS.add_k)
    print(f"{'model':32s} {'perplexity':>11s} {'bits/token':>11s} {'tokens':>8s}")
    for row in rows:
        print(f"{row['model']:32s} {row['perplexity']:11.2f} {row['bits_per_token']:11.3f} {row['tokens']:8d}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
